"""Plain log-log slopes over epoch windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm

from loss_slope.analysis import detect_knee
from loss_slope.analysis.exceptions import NotEnoughPoints
from loss_slope.analysis.slopes import alpha_early, alpha_full, alpha_window, window_scan

from .conftest import curve

SPE = 100


def test_alpha_window_equals_statsmodels():
    c = curve(seed=31, n_steps=3000, alpha=0.7, noise_sigma=0.05)
    r = alpha_window(c.steps, c.loss, 5, 15, SPE)
    sel = (c.steps >= 500) & (c.steps < 1500)
    res = sm.OLS(np.log(c.loss[sel]), sm.add_constant(np.log(c.steps[sel] + 1))).fit()
    assert r.alpha == pytest.approx(-res.params[1], rel=1e-10)
    assert abs(r.aic - res.aic) < 1e-6 and abs(r.bic - res.bic) < 1e-6
    assert r.n_points == 1000 and r.start_step == 500 and r.end_step == 1499
    assert r.ci[0] < 0.7 < r.ci[1]


@pytest.mark.parametrize("se_method,floor", [("ar", 0.8), ("hac", 0.6)])
def test_alpha_window_ci_honest_under_ar(se_method, floor):
    hits = []
    for seed in range(30):
        c = curve(seed=200 + seed, n_steps=2000, alpha=0.7, noise_sigma=0.03, ar_phi=0.95, ar_sigma=0.05)
        r = alpha_window(c.steps, c.loss, 5, 15, SPE, se_method=se_method)
        hits.append(r.ci[0] <= 0.7 <= r.ci[1])
    # nominal 0.95; Newey-West is known to undercover at phi = 0.95, hence "ar" default
    assert np.mean(hits) >= floor


def test_alpha_early_defaults_to_5_15():
    c = curve(seed=32, n_steps=3000)
    assert alpha_early(c.steps, c.loss, steps_per_epoch=SPE).alpha == alpha_window(c.steps, c.loss, 5, 15, SPE).alpha


def test_alpha_full_from_knee_and_fallback():
    c = curve(seed=33, n_steps=6000, alpha=0.3, knee_step=600.0, alpha_after=1.0, noise_sigma=0.03)
    k = detect_knee(c.steps, c.loss)
    r = alpha_full(c.steps, c.loss, knee_step=k.step, steps_per_epoch=SPE)
    assert r.start_reason == "knee" and r.start_step >= k.step
    assert r.alpha == pytest.approx(1.0, abs=0.05)
    fb = alpha_full(c.steps, c.loss, knee_step=None, steps_per_epoch=SPE)
    assert fb.start_reason == "fallback" and fb.start_step == SPE
    assert alpha_full(c.steps, c.loss, knee_step=math.nan, steps_per_epoch=SPE).start_reason == "fallback"


def test_window_scan():
    s = np.arange(4000.0)
    loss = 3.0 * (s + 1.0) ** -0.6
    ws = window_scan(s, loss, steps_per_epoch=SPE)
    assert ws.alpha.shape == (11, 11)
    assert ws.nominal == pytest.approx(0.6, abs=1e-9)
    assert ws.spread < 1e-9
    assert np.array_equal(ws.valid, ws.starts[:, None] < ws.ends[None, :])
    assert np.all(np.isnan(ws.alpha[~ws.valid]))
    c = curve(seed=34, n_steps=4000, alpha=0.5, shift=300.0, noise_sigma=0.05)
    ws2 = window_scan(c.steps, c.loss, steps_per_epoch=SPE)
    assert ws2.spread > 0.05  # the plateau makes early windows flatter
    assert ws2.nominal == pytest.approx(alpha_window(c.steps, c.loss, 5, 15, SPE).alpha, rel=1e-9)


def test_slopes_identical_in_bits():
    c = curve(seed=35, n_steps=3000, ar_phi=0.9, ar_sigma=0.03)
    a = alpha_window(c.steps, c.loss, 5, 15, SPE)
    b = alpha_window(c.steps, c.loss / math.log(2), 5, 15, SPE)
    assert b.alpha == pytest.approx(a.alpha, rel=1e-9) and b.stderr == pytest.approx(a.stderr, rel=1e-6)


def test_bad_windows():
    c = curve(seed=36, n_steps=3000)
    with pytest.raises(NotEnoughPoints, match="ends early"):
        alpha_window(c.steps, c.loss, 25, 35, SPE)
    assert alpha_window(c.steps, c.loss, 25, 35, SPE, allow_partial=True).end_step == 2999
    with pytest.raises(ValueError):
        alpha_window(c.steps, c.loss, 15, 5, SPE)
    with pytest.raises(ValueError):
        alpha_window(c.steps, c.loss, 5, 15, 0)
