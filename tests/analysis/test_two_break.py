"""The whole-curve two-break test behind the per-run H1 decision."""

import math

import numpy as np
import pytest

from loss_slope.analysis import analyze_curve, models as M
from loss_slope.analysis.synthetic import CurveSpec, make_curve, true_loss
from loss_slope.analysis.two_break import MIN_BREAK_CHANGE, TWO_BREAK_THRESHOLD, two_break_test


def test_three_power_jacobian_matches_finite_differences():
    theta = np.array([0.3, 0.2, 0.7, 1.1, 0.4, 0.5, 0.2, 30.0])
    s = np.geomspace(1, 2e4, 300)
    _, J = M.three_power(theta, s, s_lo=10.0, s_hi=1e4)
    for i in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[i]))
        e = np.zeros_like(theta)
        e[i] = h
        up, _ = M.three_power(theta + e, s, False, s_lo=10.0, s_hi=1e4)
        dn, _ = M.three_power(theta - e, s, False, s_lo=10.0, s_hi=1e4)
        assert np.allclose(J[:, i], (up - dn) / (2 * h), atol=1e-7), i


def test_three_power_places_both_breaks_where_asked():
    consts = {"s_lo": 10.0, "s_hi": 5000.0}
    t0 = 4.0
    f, g = M.three_power_positions(math.log(100 + t0), math.log(900 + t0), t0, consts)
    theta = np.array([0.0, 0.1, 0.6, 1.0, f, g, 0.0, t0])
    k1, k2 = M.three_power_steps(theta, consts)
    assert k1 == pytest.approx(100, rel=1e-9) and k2 == pytest.approx(900, rel=1e-9)


TWO = CurveSpec(
    n_steps=19_550,
    alpha=0.1,
    knee_step=150,
    alpha_after=0.8,
    knee2_step=1200,
    alpha_after2=0.4,
    noise_sigma=0.1,
    ar_phi=0.95,
    ar_sigma=0.03,
    floor=0.05,
)
ONE = CurveSpec(
    n_steps=19_550, alpha=0.1, knee_step=150, alpha_after=0.8, noise_sigma=0.1, ar_phi=0.95, ar_sigma=0.03, floor=0.05
)


def test_two_breaks_are_found_where_they_are():
    c = make_curve(TWO, seed=5)
    res = two_break_test(c.steps, c.loss)
    assert res.found, res.reason
    assert res.statistic > TWO_BREAK_THRESHOLD
    assert res.break_steps[0] == pytest.approx(150, rel=0.35)
    assert res.break_steps[1] == pytest.approx(1200, rel=0.35)
    assert res.exponents[1] == pytest.approx(0.8, abs=0.15)
    assert res.exponents[2] == pytest.approx(0.4, abs=0.15)


def test_a_knee_and_one_power_law_has_no_second_break():
    c = make_curve(ONE, seed=5)
    res = two_break_test(c.steps, c.loss)
    assert not res.found, res.reason
    assert "no second break" in res.reason


def test_small_exponent_changes_are_not_a_second_break():
    c = make_curve(TWO, seed=5)
    res = two_break_test(c.steps, c.loss, min_change=5.0)
    assert not res.found
    assert res.statistic > TWO_BREAK_THRESHOLD and "is not a knee and a second break" in res.reason
    assert MIN_BREAK_CHANGE < 0.3  # the smallest change the study asks to detect


def test_a_curve_too_short_for_two_breaks_is_not_tested():
    c = make_curve(CurveSpec(n_steps=50, alpha=0.5, noise_sigma=0.02), seed=1)
    res = two_break_test(c.steps, c.loss)
    assert not res.found and math.isnan(res.statistic)
    assert "too short" in res.reason


def test_the_h1_decision_reports_the_two_break_test():
    c = make_curve(TWO, seed=5)
    d = analyze_curve(c.steps, c.loss, steps_per_epoch=391).to_dict()
    assert d["h1_single_power_law"] is False
    assert d["h1_two_break_found"] is True and "two breaks" in d["h1_reason"]
    c = make_curve(ONE, seed=5)
    d = analyze_curve(c.steps, c.loss, steps_per_epoch=391).to_dict()
    assert d["h1_single_power_law"] is True, d["h1_reason"]
    assert d["h1_two_break_found"] is False and "no second break" in d["h1_reason"]


def test_the_two_break_fit_follows_the_data_it_was_fitted_to():
    from loss_slope.analysis.fit_check import check_fit

    c = make_curve(TWO, seed=5)
    res = two_break_test(c.steps, c.loss)
    assert check_fit(res, c.steps, c.loss).ok
    rel = res.predict(c.steps[1000:]) / true_loss(c.steps[1000:].astype(float), TWO) - 1
    assert np.max(np.abs(rel)) < 0.15


def test_a_second_break_decides_even_when_the_segment_fit_fails():
    from loss_slope.analysis import fit_power_law
    from loss_slope.analysis.shape import single_power_law

    c = make_curve(TWO, seed=5)
    tb = two_break_test(c.steps, c.loss)
    other = make_curve(CurveSpec(n_steps=19_550, alpha=1.5, noise_sigma=0.03), seed=2)
    wrong = fit_power_law(other.steps, other.loss)  # misses this curve by far
    res = single_power_law(c.steps, c.loss, segment_fit=wrong, two_break=tb)
    assert res.decision is False and "failed fit" in res.reason and not res.fit_ok
    assert single_power_law(c.steps, c.loss, segment_fit=wrong).decision is None
