"""analyze_curve: the pipeline's per-run helper."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np

from loss_slope.analysis import analyze_curve, cumulative_lr

from .conftest import curve

SPE = 120


def test_analyze_curve_flat_json_row():
    c = curve(
        seed=41, n_steps=50 * SPE, alpha=0.3, knee_step=700.0, alpha_after=0.9, shift=30.0, floor=0.02, noise_sigma=0.08
    )
    vs = np.arange(0, 50 * SPE, SPE // 4)
    a = analyze_curve(
        c.steps,
        c.loss,
        steps_per_epoch=SPE,
        knee_methods=("broken_power_lrt", "burn_in_aic", "ce_threshold", "hinge"),
        val_steps=vs,
        val_loss=c.clean[vs] * 1.2,
    )
    d = a.to_dict()
    json.dumps(d, allow_nan=False)  # strictly JSON
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in d.values())
    assert d["knee_broken_power_lrt_found"] is True
    assert abs(math.log10(d["knee_broken_power_lrt_step"] / 700.0)) < 0.05
    for model in ("exponential", "power", "two_power"):
        for key in ("aic", "bic", "delta_aic"):
            assert math.isfinite(d[f"{model}_{key}"])
    assert d["best_aic"] == "two_power"
    assert d["alpha_full_start_reason"] == "knee"
    assert d["alpha_early_ci_low"] < d["alpha_early"] < d["alpha_early_ci_high"]
    assert d["post_knee_r2"] > 0.5 and d["post_knee_r2_binned"] > 0.99
    assert d["h1_single_power_law"] is True and d["post_knee_fit_ok"] is True
    assert d["best_val_ce"] == float(np.min(c.clean[vs] * 1.2))
    assert not a.errors


def test_missing_components_are_recorded_not_silent():
    c = curve(seed=42, n_steps=8 * SPE)  # too short for the 5-15 epoch window
    a = analyze_curve(c.steps, c.loss, steps_per_epoch=SPE)
    assert "alpha_early" in a.errors and a.alpha_early is None
    d = a.to_dict()
    assert d["alpha_early"] is None and "window" in d["error_alpha_early"]
    assert d["knee_broken_power_lrt_step"] is None or d["knee_broken_power_lrt_found"]


def test_importable_without_snakemake():
    code = "import sys, loss_slope.analysis as a; assert 'snakemake' not in sys.modules; print(len(a.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == 15  # the small top level (docs/analysis.md, "Public API")


def test_alpha_early_on_the_lr_axis_needs_the_whole_window_in_steps():
    """A curve that ends before the α_early window's end gives no α_early on either axis."""
    steps = np.arange(1000)
    loss = 2 * (steps + 10.0) ** -0.5 * np.exp(0.01 * np.random.default_rng(0).standard_normal(steps.size))
    for time in (None, cumulative_lr(np.full(steps.size, 0.1))):
        d = analyze_curve(steps, loss, steps_per_epoch=100, knee_methods=("broken_power_lrt",), time=time).to_dict()
        assert d["alpha_early"] is None or math.isnan(d["alpha_early"])
        assert "need at least 1500 steps to cover the window (curve ends early), got 1000" in d["error_alpha_early"]
