"""Study statistics: H1, H2, run screening and the window heat-map."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from loss_slope.analysis import (
    NotEnoughPoints,
    correlation,
    h1_statistics,
    h2_statistics,
    h2_window_heatmap,
    screen_curve,
    wilson_interval,
)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (170, 216)])
def test_wilson_matches_statsmodels(k, n):
    assert wilson_interval(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)
    with pytest.raises(NotEnoughPoints):
        wilson_interval(0, 0)


def _runs():
    return pd.DataFrame(
        {
            "run": [f"r{i}" for i in range(8)],
            "variant": ["A", "A", "A", "A", "B", "B", "B", "B"],
            "power_r2": [0.99, 0.985, 0.97, 0.995, 0.99, np.nan, 0.981, 0.999],
            "excluded_reason": [None, None, None, None, None, None, "diverged: NaN", None],
        }
    )


def test_h1_counts_and_exclusions():
    r = h1_statistics(_runs())
    assert (r.overall.k, r.overall.n) == (5, 6)
    assert r.by_variant["A"].k == 3 and r.by_variant["A"].n == 4
    assert r.by_variant["B"].n == 2
    reasons = dict(r.excluded)
    assert reasons["r6"] == "diverged: NaN"
    assert "power_r2" in reasons["r5"]
    assert r.overall.ci == pytest.approx(wilson_interval(5, 6))
    assert list(r.to_frame()["variant"]) == ["all", "A", "B"]


def _h2_table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.3, 1.0, n)
    ce = 1.5 - a + 0.1 * rng.standard_normal(n)
    return pd.DataFrame(
        {
            "run": [f"r{i}" for i in range(n)],
            "alpha_early": a,
            "best_val_ce": ce,
            "variant": np.where(np.arange(n) % 2, "S-core", "S-narrow"),
            "optimizer": np.where(np.arange(n) < 37, "sgd", "adamw"),
        }
    )


def test_h2_matches_scipy_with_bootstrap_ci():
    t = _h2_table()
    r = h2_statistics(t, n_boot=500)
    pr = sps.pearsonr(t.alpha_early, t.best_val_ce)
    sr = sps.spearmanr(t.alpha_early, t.best_val_ce)
    assert r.overall.pearson_r == pytest.approx(pr.statistic) and r.overall.pearson_p == pytest.approx(pr.pvalue)
    assert r.overall.spearman_rho == pytest.approx(sr.statistic) and r.overall.spearman_p == pytest.approx(sr.pvalue)
    lo, hi = r.overall.spearman_ci
    assert lo < r.overall.spearman_rho < hi < 0
    assert {"variant=S-core", "variant=S-narrow", "optimizer=sgd"} <= set(r.by_group)
    assert ("optimizer=adamw", "need at least 4 runs for a correlation, got 3") in r.skipped_groups
    assert len(r.to_frame()) == 1 + len(r.by_group)


def test_h2_records_excluded_runs():
    t = _h2_table()
    t.loc[3, "alpha_early"] = np.inf
    t["excluded_reason"] = None
    t.loc[5, "excluded_reason"] = "loss exploded"
    r = h2_statistics(t, n_boot=100)
    assert r.overall.n == 38
    assert dict(r.excluded) == {"r5": "loss exploded", "r3": "alpha_early missing or not finite"}


def test_correlation_needs_variation():
    with pytest.raises(NotEnoughPoints):
        correlation([1, 2, 3], [1, 2, 3])
    with pytest.raises(NotEnoughPoints):
        correlation([1, 1, 1, 1], [1, 2, 3, 4])


def test_window_heatmap():
    rng = np.random.default_rng(2)
    y = rng.standard_normal(12)
    A = rng.standard_normal((12, 3, 4))
    A[:, 0, 0] = -y  # perfectly anti-monotone cell
    A[:9, 2, 3] = np.nan  # too few runs
    h = h2_window_heatmap(A, y, starts=[0, 5, 10], ends=[10, 15, 20, 25])
    assert h.rho.shape == (3, 4)
    assert h.rho[0, 0] == pytest.approx(-1.0)
    assert h.rho[1, 2] == pytest.approx(sps.spearmanr(A[:, 1, 2], y).statistic)
    assert math.isnan(h.rho[2, 3]) and h.n_valid[2, 3] == 3


def test_screen_curve():
    s = np.arange(1000.0)
    good = 2.3 * (s + 1) ** -0.5
    assert screen_curve(s, good).ok
    nan = good.copy()
    nan[600:] = np.nan
    r = screen_curve(s, nan)
    assert not r.ok and "non-finite" in r.reason and "600" in r.reason
    up = good.copy()
    up[900:] = 50.0
    r = screen_curve(s, up)
    assert not r.ok and "diverged" in r.reason
    spike = good.copy()
    spike[500] = 1e4
    assert "spike" in screen_curve(s, spike).reason
