"""Study statistics: H1, H2 and the window heat-map."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from loss_slope.analysis import h1_statistics
from loss_slope.analysis.exceptions import NotEnoughPoints
from loss_slope.analysis.stats import correlation, h2_window_heatmap, rho_beyond, verdict_rho, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (170, 216)])
def test_wilson_matches_statsmodels(k, n):
    assert wilson_interval(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)
    with pytest.raises(NotEnoughPoints):
        wilson_interval(0, 0)


def test_old_r2_column_call_still_counts_r2_at_098():
    t = pd.DataFrame(
        {
            "run": [f"r{i}" for i in range(8)],
            "variant": ["A", "A", "A", "A", "B", "B", "B", "B"],
            "lr": [0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1, 0.2],
            "weight_decay": [0, 0, 1, 1, 0, 0, 1, 1],
            "power_r2": [0.99, 0.985, 0.97, 0.995, 0.99, np.nan, 0.981, 0.999],
            "excluded_reason": [None, None, None, None, None, None, "diverged: NaN", None],
        }
    )
    r = h1_statistics(t, r2_column="power_r2")
    assert (r.overall.k, r.overall.n, r.overall.n_cells) == (5, 6, 6)
    reasons = dict(r.excluded)
    assert reasons["r6"] == "diverged: NaN"
    assert "power_r2" in reasons["r5"]


def test_correlation_refuses_a_nan_instead_of_returning_an_interval_beside_a_nan_estimate():
    from loss_slope.analysis.exceptions import NonFiniteValues

    with pytest.raises(NonFiniteValues, match="1 pair"):
        correlation([1, 2, np.nan, 4, 5], [1, 2, 3, 4, 6])
    with pytest.raises(NonFiniteValues):
        correlation([1, 2, 3, 4, 5], [1, 2, 3, 4, np.inf])


def test_correlation_needs_points_and_variation():
    with pytest.raises(NotEnoughPoints):
        correlation([1, 2, 3], [1, 2, 3])  # fewer than 4 points
    with pytest.raises(NotEnoughPoints):
        correlation([1, 1, 1, 1, 1], [1, 2, 3, 4, 5])  # enough points, one constant
    with pytest.raises(NotEnoughPoints):
        correlation([1, 2, 3, 4, 5], [7, 7, 7, 7, 7])


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


@pytest.mark.parametrize(
    "sign, points, expected",
    [
        ("negative", [-0.9, -0.7, -0.69, 0.8, np.nan], [True, True, False, False, False]),
        ("positive", [0.9, 0.7, 0.69, -0.8, np.nan], [True, True, False, False, False]),
        ("either", [-0.9, 0.7, 0.69, -0.69, np.nan], [True, True, False, False, False]),
    ],
)
def test_rho_beyond_is_the_verdicts_direction_rule_at_a_point_and_on_arrays(sign, points, expected):
    r = np.array(points)
    assert rho_beyond(r, r, 0.7, sign).tolist() == expected
    for x, want in zip(points, expected):
        assert rho_beyond(x, x, 0.7, sign) is want
        # a degenerate interval with a small p is supported exactly when its point is beyond
        if np.isfinite(x):
            assert (verdict_rho((x, x), 0.001, 0.7, 0.05, sign) == "supported") is want


def test_rho_beyond_needs_the_whole_interval_beyond():
    assert rho_beyond(-0.95, -0.75, 0.7, "negative") is True
    assert rho_beyond(-0.95, -0.65, 0.7, "negative") is False
    assert rho_beyond(0.75, 0.95, 0.7, "either") is True
    assert rho_beyond(-0.9, 0.9, 0.7, "either") is False
