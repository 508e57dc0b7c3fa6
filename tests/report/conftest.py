"""Synthetic per-run tables and fit files with known answers, for the report tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from loss_slope.analysis.search import LRT_THRESHOLD
from loss_slope.analysis.synthetic import CurveSpec, make_curve

LN2 = math.log(2.0)

FIT = {
    "knee_methods": ["broken_power_lrt", "burn_in_aic", "ce_threshold", "hinge"],
    "lrt_threshold": LRT_THRESHOLD,
    "burn_in_min_delta_aic": 2.0,
    "hinge_min_delta_aic": 2.0,
    "ce_threshold_nats": 1.0,
    "early_window": [5, 15],
    "window_shift": 5,
    "window_stride": 1,
    "confidence": 0.95,
    "bin_decades": 0.01,
}
DIVERGENCE = {"explode_factor": 10.0, "final_factor": 1.0, "edge_fraction": 0.02}
STUDY = {
    "r2_threshold": 0.98,
    "h1_target_shares": [0.8, 0.9],
    "h2_min_abs_rho": 0.7,
    "h2_sign": "negative",
    "h2_max_p": 0.01,
    "n_boot": 200,
    "bootstrap_seed": 0,
    "confidence": 0.95,
}


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def identity(variant="S-core", run="lr0.1-wd0.0005-s0", optimizer="sgd", lr=0.1, wd=0.0005, seed=0):
    return {
        "variant": variant,
        "run": run,
        "experiment": "s_core",
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": wd,
        "seed": seed,
    }


def run_tables(*, spe=48, epochs=20, alpha=0.8, noise=0.02, seed=0, best_val=(0.3, 12.5), loss=None):
    """(steps, val, run_info) of a run whose training loss is 2.3 (step + 1)^-alpha x noise.

    The validation CE is a parabola in epoch with its minimum ``best_val[0]`` nats at
    epoch ``best_val[1]`` (a quarter-epoch boundary), 4 rows per epoch.
    """
    n = spe * epochs
    if loss is None:
        # shift 1, no floor: log loss is exactly linear in ln(step + 1) before noise
        c = make_curve(CurveSpec(n_steps=n, alpha=alpha, shift=1.0, noise_sigma=noise), seed=seed)
        loss = c.loss
    steps = np.arange(n)
    s = pd.DataFrame(
        {
            "step": steps,
            "epoch": steps / spe,
            "time": 1e9 + steps * 0.01,
            "lr": 0.1,
            "wd": 0.0005,
            "loss_train_nats": loss,
            "loss_train_bits": np.asarray(loss) / LN2,
            "acc_train": 0.5,
        }
    )
    vsteps = (np.arange(epochs)[:, None] * spe + np.arange(1, 5)[None, :] * (spe // 4)).ravel()
    vep = vsteps / spe
    vl = best_val[0] + 0.01 * (vep - best_val[1]) ** 2
    v = pd.DataFrame(
        {
            "step": vsteps,
            "epoch": vep,
            "time": 1e9 + vsteps * 0.01,
            "loss_val_nats": vl,
            "loss_val_bits": vl / LN2,
            "acc_val": 0.9,
            "grad_norm": 1.0,
            "weight_norm": 10.0,
        }
    )
    info = {
        "steps_per_epoch": spe,
        "epochs": epochs,
        "val_per_epoch": 4,
        "optimizer": "sgd",
        "lr": 0.1,
        "weight_decay": 0.0005,
        "seed": seed,
    }
    return s, v, info


VALID = {"passed": True, "status": "valid", "reasons": []}


def fit_row(
    variant,
    run,
    *,
    status="ok",
    reason=None,
    r2=0.99,
    r2_binned=0.995,
    alpha_early=1.0,
    alpha_full=1.1,
    best_val=0.1,
    optimizer="sgd",
    lr=0.1,
    wd=0.0005,
    seed=0,
    knee_epoch=None,
    single="auto",
    **extra,
):
    """A fit file's ``row`` as fit_run writes it (only the fields the report reads)."""
    row = {
        **identity(variant, run, optimizer, lr, wd, seed),
        "status": status,
        "reason": reason,
        "loss_unit": "nats",
        "steps_per_epoch": 50,
        "epochs": 20,
        "validation_status": "valid" if status != "invalid" else "invalid",
    }
    if status == "ok":
        row.update(
            {
                "h1_single_power_law": bool(r2 >= 0.98) if single == "auto" else single,
                "h1_reason": "synthetic",
                "h1_literal_r2": r2,
                "post_knee_r2": r2_binned,
                "post_knee_exponent": alpha_full,
                "post_knee_fit_ok": True,
                "post_knee_hit_bound": None,
                "early_end_loss": 0.5 + 0.1 * alpha_full,
                "power_r2": r2,
                "power_exponent": alpha_full,
                "alpha_early": alpha_early,
                "alpha_early_ci_low": alpha_early - 0.1,
                "alpha_early_ci_high": alpha_early + 0.1,
                "alpha_full": alpha_full,
                "best_val_ce": best_val,
                "best_val_epoch": 12.0,
                "final_train_loss": 0.05,
                "knee_found": knee_epoch is not None,
                "knee_epoch": knee_epoch,
                "knee_method": "broken_power_lrt",
                "knee_broken_power_lrt_found": knee_epoch is not None,
                "knee_broken_power_lrt_epoch": knee_epoch,
                "knee_burn_in_aic_found": True,
                "knee_burn_in_aic_epoch": 2.0,
                "exponential_delta_aic": 40.0,
                "power_delta_aic": 0.0,
                "two_power_delta_aic": 3.0,
                "best_aic": "power",
                "alpha_early_start_step": 250.0,
                "alpha_early_end_step": 749.0,
            }
        )
    row.update(extra)
    return row


def fit_file(row, *, curve=True, scan_alpha=None):
    """A whole fit JSON: row, a small log-binned curve and model predictions, a window scan."""
    out = {"row": row, "curve": {}, "models": {}, "window_scan": None}
    if curve and row["status"] in ("ok", "too_short", "diverged"):
        st = np.unique(np.round(np.geomspace(1, 1000, 60)) - 1)
        a = row.get("alpha_full") or 1.0
        loss = 2.3 * (st + 1) ** -a
        out["curve"] = {
            "step": st.tolist(),
            "loss": (loss * 1.1).tolist(),
            "binned": {"step": st.tolist(), "loss": loss.tolist(), "n": [1] * st.size},
        }
        out["models"] = {
            "step": st.tolist(),
            "exponential": (2.3 * np.exp(-st / 300)).tolist(),
            "power": loss.tolist(),
            "two_power": loss.tolist(),
        }
    if scan_alpha is not None:
        starts, ends = np.arange(0, 11.0), np.arange(10, 21.0)
        grid = np.full((11, 11), float(scan_alpha))
        grid[0, 0] = np.nan
        out["window_scan"] = {
            "starts": starts.tolist(),
            "ends": ends.tolist(),
            "alpha": [[None if not np.isfinite(v) else v for v in r] for r in grid],
        }
    return out


def partial_sweep():
    """Config runs and fit files of a partial sweep: 2 variants x 6 runs; one invalid,
    one diverged, one too short, one missing (no fit file)."""
    runs, fits = [], []
    rng = np.random.default_rng(3)
    for variant, opt in (("S-core", "sgd"), ("S-adamw", "adamw")):
        for i, (lr, seed) in enumerate([(0.05, 0), (0.05, 1), (0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]):
            run = f"lr{lr:g}-wd0.0005-s{seed}"
            runs.append(identity(variant, run, opt, lr, 0.0005, seed))
            ae = 0.6 + 0.1 * i + (0.2 if variant == "S-adamw" else 0.0)
            kw = dict(
                optimizer=opt,
                lr=lr,
                seed=seed,
                alpha_early=ae,
                alpha_full=ae + 0.2,
                best_val=float(np.exp(-2 * ae) + 0.001 * rng.random()),
                r2=0.97 + 0.005 * i,
            )
            if variant == "S-core" and i == 1:
                row = fit_row(
                    variant,
                    run,
                    status="invalid",
                    reason="validation failed: steps_exactly_once: 990 rows",
                    **{k: v for k, v in kw.items() if k in ("optimizer", "lr", "seed")},
                )
            elif variant == "S-core" and i == 2:
                row = fit_row(
                    variant,
                    run,
                    status="diverged",
                    reason="non-finite training loss (3 steps) from step 312",
                    diverged_step=312.0,
                    **{k: v for k, v in kw.items() if k in ("optimizer", "lr", "seed")},
                )
            elif variant == "S-adamw" and i == 3:
                row = fit_row(
                    variant,
                    run,
                    status="too_short",
                    reason="the run covers 10 epochs; alpha_early needs epochs 5-15",
                    **{k: v for k, v in kw.items() if k in ("optimizer", "lr", "seed")},
                )
            elif variant == "S-adamw" and i == 5:
                continue  # training never finished: no fit file
            else:
                row = fit_row(variant, run, knee_epoch=3.0 if i % 2 else None, **kw)
            fits.append(fit_file(row, scan_alpha=ae if row["status"] == "ok" else None))
    return runs, fits
