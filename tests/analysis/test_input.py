"""Bad input: clear domain errors or a documented masking rule, never silent NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loss_slope.analysis import (
    AnalysisError,
    InvalidCurve,
    analyze_curve,
    detect_knee,
    fit_exponential,
    fit_power_law,
    fit_two_power_law,
)
from loss_slope.analysis.exceptions import (
    ConstantLoss,
    InvalidSteps,
    NonFiniteValues,
    NonPositiveLoss,
    NotEnoughPoints,
    UnknownMethod,
)
from loss_slope.analysis.scan import hinge_scan
from loss_slope.analysis.slopes import alpha_window

from .conftest import curve

FITTERS = {
    "power": lambda s, y, **k: fit_power_law(s, y, **k),
    "exponential": lambda s, y, **k: fit_exponential(s, y, **k),
    "two_power": lambda s, y, **k: fit_two_power_law(s, y, **k),
    "knee": lambda s, y, **k: detect_knee(s, y, **k),
    "hinge_knee": lambda s, y, **k: detect_knee(s, y, method="hinge", **k),
}


@pytest.fixture(scope="module")
def base():
    c = curve(seed=3, n_steps=1500)
    return c.steps.copy(), c.loss.copy()


@pytest.mark.parametrize("name", sorted(FITTERS))
def test_nan_raises(base, name):
    s, l_ = base
    l_ = l_.copy()
    l_[700] = np.nan
    with pytest.raises(NonFiniteValues, match="non-finite"):
        FITTERS[name](s, l_)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_raises(base, bad):
    s, l_ = base
    l_ = l_.copy()
    l_[5] = bad
    with pytest.raises(NonFiniteValues):
        fit_power_law(s, l_)


def test_drop_masks_and_reports(base):
    s, l_ = base
    l_ = l_.copy()
    l_[[100, 900]] = np.nan
    f = fit_power_law(s, l_, nonfinite="drop")
    assert f.n_masked == 2
    assert f.n_obs == s.size - 2
    assert math.isfinite(f.exponent) and all(math.isfinite(v) for v in f.exponent_ci)


@pytest.mark.parametrize("name", sorted(FITTERS))
def test_non_increasing_steps(base, name):
    s, l_ = base
    s = s.copy()
    s[10], s[11] = s[11], s[10]
    with pytest.raises(InvalidSteps, match="strictly increasing"):
        FITTERS[name](s, l_)


def test_duplicate_and_negative_steps(base):
    s, l_ = base
    s2 = s.copy()
    s2[20] = s2[19]
    with pytest.raises(InvalidSteps):
        fit_power_law(s2, l_)
    with pytest.raises(InvalidSteps, match=">= 0"):
        fit_power_law(s - 5.0, l_)
    s3 = s.copy()
    s3[3] = np.nan
    with pytest.raises(InvalidSteps):
        fit_power_law(s3, l_)


@pytest.mark.parametrize("name", sorted(FITTERS))
def test_too_few_points(name):
    s = np.arange(5.0)
    with pytest.raises(NotEnoughPoints) as info:
        FITTERS[name](s, 2.0 / (s + 1.0))
    assert info.value.got == 5
    assert info.value.needed > 5


def test_too_few_points_other_entry_points():
    with pytest.raises(NotEnoughPoints):
        hinge_scan(np.arange(4.0), np.arange(4.0))
    c = curve(n_steps=300)
    with pytest.raises(NotEnoughPoints, match="window"):
        alpha_window(c.steps, c.loss, 5, 15, 391)


@pytest.mark.parametrize("name", sorted(FITTERS))
def test_constant_loss(name):
    s = np.arange(2000.0)
    with pytest.raises(ConstantLoss):
        FITTERS[name](s, np.full(s.size, 0.7))


@pytest.mark.parametrize("value", [0.0, -0.1])
def test_non_positive_loss(base, value):
    s, l_ = base
    l_ = l_.copy()
    l_[50] = value
    with pytest.raises(NonPositiveLoss):
        fit_power_law(s, l_)
    with pytest.raises(NonPositiveLoss):
        detect_knee(s, l_)


def test_length_mismatch(base):
    s, l_ = base
    with pytest.raises(InvalidCurve, match="length"):
        fit_power_law(s, l_[:-1])


def test_unknown_method(base):
    s, l_ = base
    with pytest.raises(UnknownMethod, match="broken_power_lrt"):
        detect_knee(s, l_, method="nope")
    with pytest.raises(UnknownMethod):
        analyze_curve(s, l_, steps_per_epoch=100, knee_methods=("nope",))


def test_errors_are_value_errors_and_domain_errors():
    for exc in (
        NotEnoughPoints(3, 1),
        InvalidSteps("x"),
        NonFiniteValues("x"),
        NonPositiveLoss("x"),
        ConstantLoss("x"),
    ):
        assert isinstance(exc, ValueError) and isinstance(exc, AnalysisError)


def test_valid_results_have_no_nan(base):
    s, l_ = base
    f = fit_power_law(s, l_)
    for est in f.params.values():
        assert math.isfinite(est.value) and math.isfinite(est.stderr)
        assert all(math.isfinite(v) for v in est.ci)
    for v in (f.aic, f.bic, f.aic_ac, f.bic_ac, f.r2, f.r2_binned):
        assert math.isfinite(v)


def test_a_knee_search_too_short_names_the_steps_it_needs():
    from types import SimpleNamespace

    from loss_slope.analysis import models as M

    lo = 400.0  # the search starts here: it needs (n - 1) / 10**KNEE_TAIL_DECADES > 1.5 lo
    need = math.floor(1.5 * lo * 10**M.KNEE_TAIL_DECADES + 1.0) + 1
    M.knee_consts(SimpleNamespace(s=np.array([lo, need - 1.0])))
    with pytest.raises(NotEnoughPoints, match=f"need at least {need} steps for a knee search, got {need - 1}"):
        M.knee_consts(SimpleNamespace(s=np.array([lo, need - 2.0])))
    with pytest.raises(NotEnoughPoints, match="knee range's upper end"):
        M.knee_consts(SimpleNamespace(s=np.array([0.0, 1e4])), knee_range=(100.0, 140.0))
