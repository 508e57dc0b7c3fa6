"""O(n) hinge scan: identical to statsmodels OLS/WLS at every break."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from loss_slope.analysis.scan import hinge_scan

from .conftest import curve


def _design(x, k):
    return np.column_stack((np.ones_like(x), x, np.maximum(x - x[k], 0.0)))


@pytest.mark.parametrize("n", [50, 2000, 20000])
def test_aic_equals_statsmodels_ols(n):
    c = curve(seed=n, n_steps=n, ar_phi=0.9, ar_sigma=0.05)
    x, y = np.log(c.steps + 1.0), np.log(c.loss)
    sc = hinge_scan(x, y)
    rng = np.random.default_rng(0)
    picks = {0, 1, sc.best, sc.candidates.size - 2, sc.candidates.size - 1}
    picks |= set(rng.choice(sc.candidates.size, size=min(8, sc.candidates.size), replace=False).tolist())
    for j in sorted(picks):
        res = sm.OLS(y, _design(x, sc.candidates[j])).fit()
        assert abs(res.aic - sc.aic[j]) < 1e-6
        assert abs(res.bic - sc.bic[j]) < 1e-6
        assert res.ssr == pytest.approx(sc.rss[j], rel=1e-9)
    line = sm.OLS(y, sm.add_constant(x)).fit()
    assert abs(line.aic - sc.aic_line) < 1e-6


def test_aic_equals_statsmodels_wls():
    c = curve(seed=5, n_steps=3000)
    x, y = np.log(c.steps + 1.0), np.log(c.loss)
    w = np.random.default_rng(1).uniform(0.5, 4.0, x.size)
    sc = hinge_scan(x, y, weights=w)
    for j in (0, 7, sc.best, sc.candidates.size - 1):
        res = sm.WLS(y, _design(x, sc.candidates[j]), weights=w).fit()
        assert abs(res.aic - sc.aic[j]) < 1e-6


def test_best_hinge_slopes_match_statsmodels():
    c = curve(seed=2, n_steps=5000, alpha=0.3, knee_step=400.0, alpha_after=1.0, noise_sigma=0.02)
    x, y = np.log(c.steps + 1.0), np.log(c.loss)
    sc = hinge_scan(x, y)
    res = sm.OLS(y, _design(x, sc.candidates[sc.best])).fit()
    assert sc.slope_before == pytest.approx(res.params[1], abs=1e-9)
    assert sc.slope_after == pytest.approx(res.params[1] + res.params[2], abs=1e-9)
    assert abs(np.log10(np.exp(sc.best_x) - 1) - np.log10(400 + 1)) < 0.05


def test_scan_validates_input():
    with pytest.raises(ValueError):
        hinge_scan([0, 2, 1, 3, 4, 5, 6, 7], np.zeros(8))
    with pytest.raises(ValueError):
        hinge_scan(np.arange(10.0), np.zeros(10), weights=-np.ones(10))
