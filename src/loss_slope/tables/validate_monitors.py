"""Validation checks of the monitor tables: curvature, noise, checkpoints.

The expected cadence comes from the ``monitors`` settings the training wrote
to ``run_info.json`` (``loss_slope.train.monitor_callback.monitor_settings``),
never from the study config, so a run is checked against what it was asked to
log. A run without those settings (trained before the monitors existed) is
expected to have no monitor rows.
"""

from __future__ import annotations

import numpy as np

from loss_slope.tables.arrays import read_columns
from loss_slope.tables.schema import CHECKPOINT_KINDS, MONITOR_TABLES
from loss_slope.train.latest_cadence import LatestSettings, epoch_end_due, every_epochs_at
from loss_slope.train.val_schedule import val_interval


def expected_monitor_steps(every: int, total: int) -> np.ndarray:
    """Steps (optimizer steps done) of an event due at every positive multiple of ``every`` up to ``total``."""
    every = int(every or 0)
    return np.arange(every, total + 1, every, dtype=np.int64) if every > 0 else np.zeros(0, dtype=np.int64)


def _cadence_detail(name: str, got: np.ndarray, want: np.ndarray, every_text: str) -> tuple[bool, str]:
    ok = len(got) == len(want) and np.array_equal(got, want)
    if not len(want):
        return not len(got), f"{name} off or not due within the run: {len(got)} rows, none expected"
    detail = f"{len(got)} rows for {len(want)} expected ({every_text})"
    if not ok:
        have, need = set(got.tolist()), set(want.tolist())
        missing, extra = sorted(need - have), sorted(have - need)
        dup = len(got) - len(have)
        detail += f"; missing {len(missing)} (first {missing[:3]}), unexpected {len(extra)} (first {extra[:3]})"
        detail += f", duplicated {dup}" if dup else ""
    return ok, detail


def _first_bad(mask: np.ndarray, steps: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    return f"{len(idx)} row(s), first at step {int(steps[idx[0]])}" if len(idx) else ""


def _expected_latest(info: dict, val_steps: np.ndarray) -> tuple[list[int], str]:
    """Validation steps that must have a ``latest`` checkpoint row.

    With ``trainer.checkpoint`` in the run's config: the last validation of every
    ``latest_every_epochs``-th epoch (rows from the time criterion or a stop come on
    top and are not required), at the cadence of the attempt that ran the validation
    when the run's outcome records each attempt's (run control may change it between
    attempts), else the last attempt's config. Without it (older runs): every validation.
    """
    trainer = (info.get("config") or {}).get("trainer") or {}
    ck = trainer.get("checkpoint")
    if ck is None:
        return [int(s) for s in val_steps], "validations"
    every = LatestSettings.from_trainer(trainer).every_epochs
    cadence = (info.get("outcome") or {}).get("latest_every_epochs") or []
    spe = int(info["steps_per_epoch"])
    vi = int(info.get("val_interval") or val_interval(spe, int(info.get("val_per_epoch") or 1)))
    want = [
        int(s)
        for s in val_steps
        if epoch_end_due(
            int(s), steps_per_epoch=spe, val_interval=vi, every_epochs=every_epochs_at(int(s), cadence, every)
        )
    ]
    used = sorted({every_epochs_at(int(s), cadence, every) for s in val_steps})
    return want, f"epoch-end validations (every {' or '.join(map(str, used)) or every} epoch(s))"


def check_monitors(
    rep, *, info: dict, total: int, val_steps: np.ndarray, tables: dict, diverged_at: int | None = None
) -> None:
    """Add the monitor checks to the ValidationReport ``rep``.

    ``total`` is the number of steps the run should have logged (its last step
    for a diverged run); ``val_steps`` the validation steps up to it;
    ``tables`` maps ``curvature``/``noise``/``checkpoints`` to Parquet files.
    Values from ``diverged_at`` on are not range-checked (they are the finding).
    """
    m = info.get("monitors") or {}
    spe = int(info["steps_per_epoch"])
    frames = {t: read_columns(tables[t]) for t in MONITOR_TABLES}  # numpy arrays, no pandas
    in_range = (
        (lambda steps: steps < diverged_at) if diverged_at is not None else (lambda steps: np.ones(len(steps), bool))
    )

    # ---- curvature ------------------------------------------------------
    c = frames["curvature"]
    every = int(m.get("curvature_every_steps") or 0)
    csteps = c["step"]
    ok, detail = _cadence_detail("curvature", csteps, expected_monitor_steps(every, total), f"every {every} steps")
    rep.add("curvature_cadence", ok, detail)
    if len(c):
        keep = in_range(csteps)
        # an event that ran out of memory wrote NaN and its reason; the run went on (not range-checked)
        oom = (
            np.array([str(x).startswith("out of memory") for x in c["status"]], dtype=bool)
            if "status" in c
            else np.zeros(len(c), bool)
        )
        n_oom = int((oom & keep).sum())
        keep &= ~oom
        cc, ss = c.rows(keep), csteps[keep]
        cols = ["epoch", "lambda_max", "hutch_trace", "hutch_trace_se", "seconds"]
        cols += [k for k in ("lambda_residual", "lambda_min_ritz") if k in cc]
        vals = cc.matrix(cols)
        bad = ~np.isfinite(vals).all(axis=1)
        lo, hi = int(m.get("lambda_min_iters", 1)), int(m.get("lambda_iters", 10**9))
        enough = cc["lambda_iters"] >= lo
        if "lambda_residual" in cc:
            # an invariant Krylov space ends Lanczos early with exact eigenvalues (residual ~ 0)
            enough |= cc["lambda_residual"] <= 1e-9
        bad |= ~(enough & (cc["lambda_iters"] <= hi))
        bad |= cc["hutch_matvecs"] != int(m.get("hutch_matvecs", 0))
        bad |= cc["hutch_trace_se"] < 0
        if "lambda_residual" in cc:
            bad |= cc["lambda_residual"] < 0
        bad |= ~(np.abs(cc["epoch"] - ss / spe) <= 1e-12 * np.maximum(ss / spe, 1))  # NaN is bad
        rep.add(
            "curvature_values",
            not bad.any(),
            _first_bad(bad, ss)
            or (
                f"finite; {lo} <= lambda_iters <= {hi}; hutch_matvecs = {m.get('hutch_matvecs')}; epoch = step / {spe}"
                + (f"; {n_oom} event(s) out of memory (NaN row with the reason)" if n_oom else "")
            ),
        )

    # ---- noise ----------------------------------------------------------
    n = frames["noise"]
    every = int(m.get("noise_every_steps") or int(m.get("noise_every_epochs") or 0) * spe)
    nsteps = n["step"]
    ok, detail = _cadence_detail(
        "noise",
        nsteps,
        expected_monitor_steps(every, total),
        f"every {m.get('noise_every_epochs')} epochs = {every} steps",
    )
    rep.add("noise_cadence", ok, detail)
    if len(n):
        keep = in_range(nsteps)
        nn, ss = n.rows(keep), nsteps[keep]
        min_points, window = int(m.get("psd_min_points", 0)), int(m.get("psd_window", 10**9))
        spectral = nn["psd_points"] >= min_points
        psd = nn.matrix(["psd_tail", "resid_power"])
        # spectral values: finite and >= 0 once the window holds psd_min_points residuals, NaN before
        bad = np.where(spectral, ~(np.isfinite(psd) & (psd >= 0)).all(axis=1), ~np.isnan(psd).all(axis=1))
        bad |= (nn["psd_points"] < 0) | (nn["psd_points"] > window)
        gv = nn["grad_var"]
        bad |= nn["grad_var_steps"] != every  # the moments are reset at every report
        bad |= ~(np.isfinite(gv) & (gv >= 0))
        bad |= ~(np.abs(nn["epoch"] - ss / spe) <= 1e-12 * np.maximum(ss / spe, 1))  # NaN is bad
        rep.add(
            "noise_values",
            not bad.any(),
            _first_bad(bad, ss)
            or (
                f"psd_tail, resid_power finite >= 0 (NaN below {min_points} residuals); grad_var finite >= 0 "
                f"over {every} steps"
            ),
        )

    # ---- checkpoints ----------------------------------------------------
    k = frames["checkpoints"]
    ksteps = k["step"]
    if not m.get("checkpoint_size"):
        rep.add("checkpoints_recorded", not len(k), f"checkpoint sizes off: {len(k)} rows, none expected")
        return
    kind = k["kind"]
    latest = set(ksteps[kind == "latest"].tolist())
    want_latest, latest_text = _expected_latest(info, val_steps)
    missing = [int(s) for s in want_latest if int(s) not in latest]
    best = ksteps[kind == "best"]
    off_val = sorted(set(best.tolist()) - set(int(s) for s in val_steps))
    beyond = ksteps[ksteps > total]
    ok = not missing and not off_val and not len(beyond)
    detail = f"{len(k)} rows: latest at each of the {len(want_latest)} {latest_text}, {len(best)} best"
    if not ok:
        detail += (
            f"; latest missing at {len(missing)} validation step(s) (first {missing[:3]}), best off the "
            f"validation steps {off_val[:3]}, rows beyond step {total}: {len(beyond)}"
        )
    rep.add("checkpoints_recorded", ok, detail)
    size = k["checkpoint_size_mb"]
    bad = ~(np.isfinite(size) & (size > 0)) | ~np.array([x in CHECKPOINT_KINDS for x in kind], dtype=bool)
    bad |= ~np.isfinite(k["time"])
    bad |= ~(np.abs(k["epoch"] - ksteps / spe) <= 1e-12 * np.maximum(ksteps / spe, 1))  # epoch = step / spe
    rep.add(
        "checkpoint_sizes",
        not bad.any(),
        _first_bad(bad, ksteps)
        or (
            f"checkpoint_size_mb in [{size.min():.3g}, {size.max():.3g}], epoch = step / steps_per_epoch"
            if len(size)
            else "no checkpoints"
        ),
    )
