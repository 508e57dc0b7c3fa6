"""Known-answer tests of the model fits."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import statsmodels.api as sm

from loss_slope.analysis import (
    analyze_curve,
    compare_models,
    fit_exponential,
    fit_power_law,
    fit_two_power_law,
    models as M,
    solver as S,
)
from loss_slope.analysis.build import fit_result, result_from_core
from loss_slope.analysis.data import DEFAULT_BIN_DECADES
from loss_slope.analysis.estimation import curve_problem
from loss_slope.analysis.fits import comparison_from_lrt
from loss_slope.analysis.noise import estimate_noise
from loss_slope.analysis.results import ExponentialFit, PowerLawFit, TwoPowerLawFit
from loss_slope.analysis.search import REML_SLACK, fit_lrt

from .conftest import NOISE_LEVELS, curve

LN2 = math.log(2.0)


def test_exponential_aic_equals_statsmodels():
    c = curve(seed=4, n_steps=3000)
    f = fit_exponential(c.steps, c.loss)
    res = sm.OLS(np.log(c.loss), sm.add_constant(c.steps)).fit()
    assert abs(f.aic - res.aic) < 1e-6
    assert abs(f.bic - res.bic) < 1e-6
    assert f.rate == pytest.approx(-res.params[1], rel=1e-9)
    assert f.r2 == pytest.approx(res.rsquared, abs=1e-9)


def test_plain_power_law_aic_equals_statsmodels():
    c = curve(seed=6, n_steps=3000, ar_phi=0.9, ar_sigma=0.05)
    f = fit_power_law(c.steps, c.loss, floor=False, shift=False, estimator="ols")
    res = sm.OLS(np.log(c.loss), sm.add_constant(np.log(c.steps + 1.0))).fit()
    assert abs(f.aic - res.aic) < 1e-6
    assert abs(f.bic - res.bic) < 1e-6
    assert f.exponent == pytest.approx(-res.params[1], rel=1e-9)
    assert f.fixed == ("floor", "shift")


@pytest.mark.parametrize("noise", sorted(NOISE_LEVELS))
@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_power_law_recovers_truth(noise, floor):
    c = curve(seed=11, n_steps=6000, alpha=0.8, shift=40.0, floor=floor, **NOISE_LEVELS[noise])
    f = fit_power_law(c.steps, c.loss)
    lo, hi = f.exponent_ci
    assert lo <= 0.8 <= hi
    tol = {"iid-low": 0.02, "iid-high": 0.08, "ar": 0.1}[noise]
    assert abs(f.exponent - 0.8) < tol
    assert f.shift == pytest.approx(40.0, rel=0.5)
    if floor:
        assert f.floor == pytest.approx(floor, rel=0.5)
    assert f.r2_binned > 0.99


def test_power_law_ci_coverage_under_ar_noise():
    """Honest intervals: coverage of the 95 % CI over replicate AR curves."""
    hits = []
    for seed in range(40):
        c = curve(seed=100 + seed, n_steps=2500, alpha=0.6, noise_sigma=0.05, ar_phi=0.95, ar_sigma=0.05)
        lo, hi = fit_power_law(c.steps, c.loss).exponent_ci
        hits.append(lo <= 0.6 <= hi)
    assert np.mean(hits) >= 0.85  # nominal 0.95; naive iid OLS gives ~0.3 here


def test_naive_ols_se_would_undercover():
    c = curve(seed=7, n_steps=4000, noise_sigma=0.03, ar_phi=0.98, ar_sigma=0.05)
    f = fit_power_law(c.steps, c.loss, floor=False, shift=False, estimator="ols")
    naive = sm.OLS(np.log(c.loss), sm.add_constant(np.log(c.steps + 1.0))).fit().bse[1]
    assert f.exponent_se > 3 * naive
    assert f.diagnostics.noise.ar_phi > 0.9
    assert f.diagnostics.effective_n < 0.2 * f.n_obs


def test_huber_fallback_on_spikes():
    c = curve(seed=8, n_steps=5000, alpha=0.7, noise_sigma=0.03)
    rng = np.random.default_rng(0)
    loss = c.loss.copy()
    idx = rng.choice(np.arange(200, 5000), size=100, replace=False)
    loss[idx] *= np.exp(rng.uniform(1.0, 3.0, idx.size))  # rare upward loss spikes
    robust = fit_power_law(c.steps, loss)
    plain = fit_power_law(c.steps, loss, robust="never")
    assert robust.robust and robust.diagnostics.heavy_tailed
    assert "Huber" in robust.se_method
    assert abs(robust.exponent - 0.7) < abs(plain.exponent - 0.7)
    assert abs(robust.exponent - 0.7) < 0.03


def test_no_huber_on_gaussian_noise(power_curve):
    f = fit_power_law(power_curve.steps, power_curve.loss)
    assert not f.robust and not f.diagnostics.heavy_tailed


def test_two_power_law_recovers_break():
    c = curve(seed=12, n_steps=8000, alpha=0.3, knee_step=600.0, alpha_after=1.0, shift=20.0, noise_sigma=0.05)
    f = fit_two_power_law(c.steps, c.loss)
    assert abs(math.log10(f.break_step / 600.0)) < 0.03
    assert f.break_step_ci[0] <= 600.0 <= f.break_step_ci[1]
    assert f.exponent_before == pytest.approx(0.3, abs=0.05)
    assert f.exponent_after == pytest.approx(1.0, abs=0.05)


def test_compare_models():
    knee = curve(seed=13, n_steps=6000, alpha=0.3, knee_step=500.0, alpha_after=1.0, noise_sigma=0.05)
    m = compare_models(knee.steps, knee.loss)
    assert m.best_aic == "two_power" and m.best_bic == "two_power"
    assert m.delta_aic("power", "two_power") > 20
    rows = {r["model"]: r for r in m.table}
    assert set(rows) == {"exponential", "power", "two_power"}
    assert rows["two_power"]["delta_aic"] == 0.0
    s = np.arange(3000.0)
    expo = np.exp(0.5 - 1e-3 * s + 0.05 * np.random.default_rng(1).standard_normal(s.size))
    assert compare_models(s, expo).best_aic == "exponential"


def test_nats_and_bits_identical():
    c = curve(seed=14, n_steps=5000, alpha=0.9, shift=30.0, floor=0.03, ar_phi=0.9, ar_sigma=0.03)
    nats = fit_power_law(c.steps, c.loss)
    bits = fit_power_law(c.steps, c.loss / LN2)
    assert bits.exponent == pytest.approx(nats.exponent, rel=1e-6)
    assert bits.exponent_ci == pytest.approx(nats.exponent_ci, rel=1e-6)
    assert bits.shift == pytest.approx(nats.shift, rel=1e-6)
    assert bits.floor == pytest.approx(nats.floor / LN2, rel=1e-6)
    assert bits.r2 == pytest.approx(nats.r2, rel=1e-9)
    t_n = fit_two_power_law(c.steps, c.loss)
    t_b = fit_two_power_law(c.steps, c.loss / LN2)
    assert t_b.break_step == pytest.approx(t_n.break_step, rel=1e-6)
    e_n, e_b = fit_exponential(c.steps, c.loss), fit_exponential(c.steps, c.loss / LN2)
    assert e_b.rate == pytest.approx(e_n.rate, rel=1e-9)


def test_results_are_frozen_and_predict(power_curve):
    f = fit_power_law(power_curve.steps, power_curve.loss)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.aic = 0.0
    with pytest.raises(TypeError):
        f.params["exponent"] = None
    pred = f.predict(power_curve.steps)
    assert pred.shape == power_curve.steps.shape
    assert np.median(np.abs(np.log(pred / power_curve.clean))) < 0.02
    d = f.to_dict(prefix="p_")
    assert d["p_exponent"] == f.exponent


def test_keyword_only_options(power_curve):
    with pytest.raises(TypeError):
        fit_power_law(power_curve.steps, power_curve.loss, True)


def test_each_fitted_model_is_defined_by_its_spec():
    assert M.POWER.result_type is PowerLawFit and M.POWER.estimates is M.power_estimates
    assert M.TWO_POWER.result_type is TwoPowerLawFit and M.TWO_POWER.estimates is M.two_power_estimates
    assert M.EXPONENTIAL.result_type is ExponentialFit and M.EXPONENTIAL.estimates is M.exponential_estimates
    assert M.THREE_POWER.result_type is None and M.THREE_POWER.estimates is None
    c = curve(seed=21, n_steps=3000, alpha=0.4, knee_step=200.0, alpha_after=0.9)
    s = np.asarray(c.steps, dtype=float)
    for fit in (fit_power_law(c.steps, c.loss), fit_two_power_law(c.steps, c.loss), fit_exponential(c.steps, c.loss)):
        spec = M.MODELS[fit.model]
        assert type(fit) is spec.result_type
        assert tuple(fit.params) == spec.param_names
        m, _ = spec.fn(dict(fit.model_consts))(np.asarray(fit.theta), s, jac=False)
        np.testing.assert_array_equal(fit.predict(c.steps), np.exp(m + fit.y_ref))


def test_result_from_core_rebuilds_the_comparison_fits_of_the_knee_test():
    c = curve(seed=22, n_steps=4000, alpha=0.3, knee_step=300.0, alpha_after=0.9)
    lrt = fit_lrt(curve_problem(c.steps, c.loss, 6, "raise", DEFAULT_BIN_DECADES))
    cmp = comparison_from_lrt(lrt)
    for core, name in ((lrt.null, "power"), (lrt.alt, "two_power")):
        fit = result_from_core(lrt.problem, core, lrt.noise, robust=lrt.robust)
        assert repr(fit) == repr(cmp.fits[name]) and fit == cmp.fits[name]
    assert repr(compare_models(c.steps, c.loss)) == repr(cmp)


def test_the_comparison_scores_the_observed_log_loss_when_the_knee_test_used_huber():
    """R^2, RSS and the iid criteria of every compared model are of the observed data."""
    rng = np.random.default_rng(5)
    s = np.arange(4000)
    loss = (0.3 + 3 * (s + 20.0) ** -0.7) * np.exp(0.05 * rng.standard_t(2, s.size))  # heavy tails
    cmp = compare_models(s, loss)
    y = np.log(loss)
    for name, fit in cmp.fits.items():
        assert fit.robust, name
        r = y - np.log(fit.predict(s))
        rss = float(r @ r)
        assert fit.rss == pytest.approx(rss, rel=1e-9), name
        assert fit.r2 == pytest.approx(1 - rss / float((y - y.mean()) @ (y - y.mean())), rel=1e-9), name
        loglik = -0.5 * s.size * (math.log(2 * math.pi) + math.log(rss / s.size) + 1)
        assert fit.aic == pytest.approx(-2 * loglik + 2 * fit.n_params, rel=1e-9), name


def test_a_fixed_shift_the_broken_power_law_cannot_hold_is_refused_not_moved():
    c = curve(seed=24, n_steps=2000, alpha=0.6, shift=1500.0)
    assert fit_power_law(c.steps, c.loss, shift=1500.0).params["shift"].value == 1500.0
    with pytest.raises(ValueError, match="fixed shift of 1500 steps"):
        fit_two_power_law(c.steps, c.loss, shift=1500.0)
    assert fit_two_power_law(c.steps, c.loss, shift=400.0).params["shift"].value == 400.0


def test_a_model_without_a_result_type_has_no_result():
    c = curve(seed=23, n_steps=3000)
    lrt = fit_lrt(curve_problem(c.steps, c.loss, 6, "raise", DEFAULT_BIN_DECADES))
    core = dataclasses.replace(lrt.alt, spec=M.THREE_POWER)
    f = S.Fitted(lrt.problem, core, lrt.noise, np.eye(core.k), 1.0, 1.0, False, False, 0.0, np.zeros(3), "gls")
    with pytest.raises(ValueError, match="three_power"):
        fit_result(f, 0.95)


def test_noise_from_fit_is_whittle_then_reml_with_slack():
    c = curve(seed=24, n_steps=4000, alpha=0.5, noise_sigma=0.02, ar_phi=0.95, ar_sigma=0.03)
    lrt = fit_lrt(curve_problem(c.steps, c.loss, 6, "raise", DEFAULT_BIN_DECADES), hetero=False, robust="never")
    std = S.raw_residuals(lrt.problem, lrt.alt)
    whittle = estimate_noise(std)
    tight = S.noise_from_fit(lrt.problem, lrt.alt, std, slack=0.0)
    loose = S.noise_from_fit(lrt.problem, lrt.alt, std, slack=REML_SLACK)
    assert tight.white_var == whittle.white_var == loose.white_var
    assert 0.5 < tight.ar_phi <= loose.ar_phi < 1.0
    # the innovation variance of the AR part is Whittle's
    for nz in (tight, loose):
        assert nz.ar_var * (1 - nz.ar_phi**2) == pytest.approx(whittle.ar_var * (1 - whittle.ar_phi**2), rel=1e-12)


@pytest.mark.parametrize("start", [0, 100])
def test_an_exact_power_law_is_fitted_exactly(start):
    """No noise at all: the residuals are zero, and the noise model keeps its floor (its
    covariance would otherwise be singular and the GLS fit would fail)."""
    s = np.arange(start, start + 5000, dtype=float)
    loss = 2.0 * (s + 1.0) ** -0.5
    assert estimate_noise(np.zeros(1000)).white_var > 0
    assert fit_power_law(s, loss).exponent == pytest.approx(0.5, abs=1e-6)
    assert fit_two_power_law(s, loss).exponent_after == pytest.approx(0.5, abs=1e-6)
    assert analyze_curve(s, loss, steps_per_epoch=100).power_post_knee.exponent == pytest.approx(0.5, abs=1e-6)
