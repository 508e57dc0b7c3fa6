"""Per-run fit stage: one run's validated tables in, one small JSON out.

Every run of the study gets a fit file, whatever happened to it, so the summary
can say why a run is not in the statistics:

========== ================================================================
status     meaning
========== ================================================================
ok         validated, trained for the whole analysis window, fitted
too_short  validated, but it stops before the end of the α_early window
           (or has too few points for the fits); numbers that could be
           computed are kept, the run enters no statistic
invalid    validation failed (its reasons are copied) or the analysis
           rejected the curve itself; a diverged run is invalid too when a
           check its divergence does not explain failed
           (:data:`DIVERGENCE_EXPLAINED_CHECKS`: only value ranges are)
diverged   training stopped the run as diverged (``run_info.json`` outcome),
           or its whole curve breaks the divergence rule
           (:func:`loss_slope.train.divergence.check_divergence`: non-finite,
           exploded, or ended above where it started);
           ``diverged_step`` says where.  A run whose divergence step is at or
           after the end of the α_early window has ``alpha_early*`` (and
           ``early_end_loss``) from the steps before it; any other diverged
           run has neither
========== ================================================================

The JSON holds a flat ``row`` (identifiers, status, reason and every fit number:
knees by each method, exponential / power / two-power AIC, BIC and ΔAIC, the
post-knee power law and its R², α_early and α_full with intervals, best
validation CE and its epoch, final training loss) plus the arrays the figures
need (a log-binned curve, a thinned raw curve, model predictions, the α window
scan), so the report never reopens the Parquet tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loss_slope.analysis import AnalysisError, analyze_curve, cumulative_lr
from loss_slope.analysis.exceptions import NotEnoughPoints
from loss_slope.analysis.knee import DEFAULT_KNEE_METHOD, KNEE_METHODS
from loss_slope.analysis.slopes import window_scan
from loss_slope.jsonio import read_json, write_json
from loss_slope.report._io import one_thread
from loss_slope.tables.schema import RUN_IDENTITY
from loss_slope.train.divergence import Divergence, check_divergence

__all__ = ["fit_run", "fit_run_tables", "fit_options", "TIME_AXES", "AXIS_COLUMNS"]

#: The time axes a curve can be analysed on (``analysis.time_axis``).
TIME_AXES = ("step", "cumulative_lr")
#: Columns repeated, prefixed ``<axis>__``, for the time axis that is not the configured one.
AXIS_COLUMNS = (
    "h1_single_power_law",
    "h1_reason",
    "h1_literal_r2",
    "post_knee_exponent",
    "post_knee_exponent_ci_low",
    "post_knee_exponent_ci_high",
    "post_knee_fit_ok",
    "post_knee_hit_bound",
    "knee_broken_power_lrt_found",
    "knee_broken_power_lrt_step",
    "alpha_early",
    "alpha_early_ci_low",
    "alpha_early_ci_high",
    "alpha_full",
)

#: log10(step + 1) bin width of the curve stored for the figures
CURVE_BIN_DECADES = 0.02
#: at most this many raw (per-step) points are stored for the figures
RAW_POINTS = 500
#: model predictions are stored at this many log-spaced steps
MODEL_POINTS = 120


def fit_options(fit: Mapping[str, Any], loss_unit: str) -> dict:
    """``analyze_curve`` keyword options from the config's ``analysis.fit`` block.

    The knee methods, their options and the knees H1 is also decided under come
    from the methods' entries in :data:`loss_slope.analysis.knee.KNEE_METHODS`; a
    name that is not registered is left to ``analyze_curve`` to reject.
    """
    methods = list(dict.fromkeys([DEFAULT_KNEE_METHOD, *fit["knee_methods"]]))
    known = [KNEE_METHODS[m] for m in methods if m in KNEE_METHODS]
    return dict(
        knee_methods=tuple(methods),
        knee_options={m.name: m.options(fit, loss_unit) for m in known},
        early_window=(float(fit["early_window"][0]), float(fit["early_window"][1])),
        h1_knee_methods=tuple(m.name for m in known if m.h1_criterion is not None),
        confidence=float(fit["confidence"]),
        bin_decades=float(fit["bin_decades"]),
    )


def _time(axis: str, lr, keep: np.ndarray) -> np.ndarray | None:
    """The analysis axis at the steps ``keep`` selects (None: the step axis). It is built from every
    logged step's LR (Σ lr over the steps before each one), then read at the kept steps: a dropped
    step's update still moved the weights."""
    if axis == "step":
        return None
    if lr is None:
        raise AnalysisError("time_axis cumulative_lr needs the lr column of the steps table")
    return cumulative_lr(lr)[keep]


def _binned(steps: np.ndarray, loss: np.ndarray) -> dict:
    """Geometric-mean loss in log-spaced bins of (step + 1), for plots."""
    ids = np.floor(np.log10(steps + 1.0) / CURVE_BIN_DECADES).astype(np.int64)
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    mean_step = np.bincount(inv, weights=steps) / counts
    mean_log = np.bincount(inv, weights=np.log(loss)) / counts
    return {"step": mean_step, "loss": np.exp(mean_log), "n": counts}


def _thinned(steps: np.ndarray, loss: np.ndarray) -> dict:
    """About RAW_POINTS raw points, evenly spaced in log(step + 1)."""
    n = steps.size
    if n <= RAW_POINTS:
        idx = np.arange(n)
    else:
        idx = np.unique(np.round(np.geomspace(1, n, RAW_POINTS)).astype(np.int64) - 1)
    return {"step": steps[idx], "loss": loss[idx]}


def _models(analysis, steps: np.ndarray, time: np.ndarray | None = None) -> dict:
    """The fitted models at about MODEL_POINTS steps, for the figures (``time``: the
    analysis axis's value at each of ``steps`` when it is not the step)."""
    out: dict = {}
    if steps.size < 2:
        return out
    grid = np.unique(np.round(np.geomspace(1, steps[-1] + 1, MODEL_POINTS)) - 1)
    at = grid if time is None else np.interp(grid, steps, time)  # the fits are functions of the axis
    out["step"] = grid
    if analysis.comparison is not None:
        for name, fit in analysis.comparison.fits.items():
            try:
                out[name] = fit.predict(at)
            except (AnalysisError, ValueError, FloatingPointError):
                pass
    if analysis.power_post_knee is not None:
        p = analysis.power_post_knee
        sel = at >= p.step_range[0]
        out["power_post_knee_step"] = grid[sel]
        out["power_post_knee"] = p.predict(at[sel])
    return out


def _epochs_covered(steps: np.ndarray, spe: float) -> float:
    return float((steps[-1] + 1) / spe) if steps.size else 0.0


class _Columns:
    """The columns of a steps or validation table as float arrays, rows in step order.

    ``table`` is a pandas DataFrame or a pyarrow Table. A fit job reads its
    Parquet files with pyarrow and never imports pandas (about 0.3 s of CPU per
    job); both give the same arrays (the rows are ordered by the same
    ``argsort`` of the step column that ``DataFrame.sort_values`` uses).
    """

    def __init__(self, table):
        self._table = table
        self._pandas = hasattr(table, "sort_values")
        self.names = tuple(table.columns) if self._pandas else tuple(table.column_names)
        self._n = len(table) if self._pandas else table.num_rows
        self._sorted = None  # sorted on first use, as before (a table without "step" fails only then)

    def __contains__(self, name) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name) -> np.ndarray:
        if self._pandas:
            if self._sorted is None:
                self._sorted = self._table.sort_values("step")
            return self._sorted[name].to_numpy(dtype=float)
        # pyarrow.Table: to_numpy() would import pandas; to_pylist() does not
        if self._sorted is None:
            self._sorted = np.argsort(np.array(self._table.column("step").to_pylist()), kind="quicksort")
        return np.array(self._table.column(name).to_pylist(), dtype=float)[self._sorted]


def micro_batch_fields(run_info: Mapping[str, Any]) -> dict:
    """How the run was batched: ``micro_batch`` (what it ended with; the batch
    size unless an out-of-memory error made training halve it) and
    ``oom_fallbacks`` (how many times), from the ``run_info.json`` outcome."""
    mb = (run_info.get("outcome") or {}).get("micro_batch") or {}
    return {"micro_batch": mb.get("final"), "oom_fallbacks": len(mb.get("changes") or [])}


def checkpoint_fields(run_info: Mapping[str, Any]) -> dict:
    """What the run wrote as checkpoints: ``checkpoint_files`` and ``checkpoint_written_mb``
    (10^6 bytes) over its attempts that recorded an end, from the ``run_info.json`` outcome
    (whose ``checkpoints`` also holds the seconds they took); None for a run trained before
    they were recorded. Both describe how the run was trained, not its curve: stops, kills,
    the time criterion of ``latest`` and the work folder's path (saved inside ``latest``)
    change them between two trainings of the same run, so a comparison of two studies'
    fits leaves them out."""
    c = (run_info.get("outcome") or {}).get("checkpoints")
    if not isinstance(c, Mapping):
        return {"checkpoint_files": None, "checkpoint_written_mb": None}
    return {"checkpoint_files": c.get("files"), "checkpoint_written_mb": c.get("written_mb")}


#: The validation checks a diverged run may fail because it diverged: value ranges, which non-finite
#: or exploded values break from the divergence on.  Any other failure (conversion, completeness,
#: config, schedule, cadence, checkpoints) makes the run ``invalid``, diverged or not; so does any
#: failure of a run that training stopped (its validation checks the ranges before the stop only).
DIVERGENCE_EXPLAINED_CHECKS = frozenset(
    {
        "steps_finite",
        "loss_nonnegative",
        "acc_in_unit_interval",
        "bits_equal_nats_over_ln2",
        "val_finite",
        "val_ranges",
        "val_bits_equal_nats_over_ln2",
        "curvature_values",
        "noise_values",
    }
)


def _failed_checks(validation: Mapping[str, Any]) -> set[str]:
    """The names of the checks ``validation.json`` failed (from ``checks``, else from ``reasons``)."""
    checks = validation.get("checks")
    if checks:
        return {str(c.get("name")) for c in checks if not c.get("passed")}
    return {str(r).split(":", 1)[0].strip() for r in validation.get("reasons") or []}


def _alpha_early_before_divergence(
    st: np.ndarray,
    y: np.ndarray,
    lr: np.ndarray | None,
    diverged_step: float | None,
    *,
    spe: float,
    fit: Mapping[str, Any],
    loss_unit: str,
    time_axis: str,
) -> dict:
    """A diverged run's ``alpha_early*`` columns, from the steps before its divergence.

    Only when the divergence step is known and at or after the end of the α_early
    window (epochs ``[start, end)``, so every step of the window precedes it);
    otherwise ``{}``.  α_early is :func:`analyze_curve`'s, on the configured time
    axis (built from every logged step's learning rate), as for a run that did not
    diverge: it reads the window's steps only, so it is the α_early the run would
    have had with the same losses up to the divergence.  A failure is returned as
    ``error_alpha_early``.
    """
    end = float(fit["early_window"][1])
    if diverged_step is None or not math.isfinite(spe) or spe <= 0 or diverged_step < end * spe:
        return {}
    # zero losses are dropped as for any run; non-finite ones stay, so the analysis rejects any
    # before the divergence step; the time axis spans every logged step, as for any run
    pos = ~(y <= 0)
    opts = fit_options(fit, loss_unit)
    try:
        t = _time(time_axis, lr, pos)
        st, y = st[pos], y[pos]
        before = st < diverged_step
        analysis = analyze_curve(
            st[before],
            y[before],
            steps_per_epoch=spe,
            time=None if t is None else t[before],
            **{**opts, "knee_methods": (DEFAULT_KNEE_METHOD,), "h1_knee_methods": ()},
        )
    except (AnalysisError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
        return {"error_alpha_early": f"{type(exc).__name__}: {exc}"}
    d = analysis.to_dict()
    return {k: v for k, v in d.items() if k.startswith("alpha_early") or k == "error_alpha_early"}


def fit_run_tables(
    steps,
    val,
    *,
    run_info: Mapping[str, Any],
    validation: Mapping[str, Any],
    identity: Mapping[str, Any],
    fit: Mapping[str, Any],
    divergence: Mapping[str, Any],
    loss_unit: str = "nats",
    read_error: str | None = None,
    time_axis: str = "step",
    compare_time_axes: bool = True,
) -> dict:
    """Fit one run from its tables.

    Parameters
    ----------
    steps : DataFrame, pyarrow Table or None
        Per-step table (``step``, ``epoch``, ``loss_train_<unit>``, ...); ``None``
        when it could not be read (``read_error`` says why).
    val : DataFrame, pyarrow Table or None
        Validation table (``step``, ``epoch``, ``loss_val_<unit>``, ...).
    run_info : mapping
        The run's ``run_info.json`` (``steps_per_epoch``, ``epochs``, ...).
    validation : mapping
        The run's ``validation.json`` (``passed``, ``reasons``).
    identity : mapping
        The run's :data:`~loss_slope.tables.schema.RUN_IDENTITY` (from the study config).
    fit, divergence : mapping
        The config's ``analysis.fit`` and ``analysis.divergence`` blocks.
    loss_unit : {"nats", "bits"}
    read_error : str, optional
    time_axis : {"step", "cumulative_lr"}
        The axis of the knees, fits, H1 test and slopes (``analysis.time_axis``).
    compare_time_axes : bool
        Also analyse on the other axis: the :data:`AXIS_COLUMNS`, prefixed
        ``<axis>__`` (``analysis.compare_time_axes``).

    Returns
    -------
    dict
        ``{"row": {...}, "curve": {...}, "models": {...}, "window_scan": {...} or None,
        "settings": {...}}`` -- strict JSON after :func:`loss_slope.jsonio.jsonable`.
    """
    spe = float(run_info.get("steps_per_epoch") or 0) or float("nan")
    row: dict[str, Any] = {
        **{k: identity.get(k) for k in RUN_IDENTITY},
        "status": "ok",
        "reason": None,
        "validation_status": "valid" if validation.get("passed") else "invalid",
        "validation_reasons": "; ".join(validation.get("reasons") or []) or None,
        "loss_unit": loss_unit,
        "epochs": run_info.get("epochs"),
        "steps_per_epoch": spe,
        "diverged_step": None,
        **micro_batch_fields(run_info),
        **checkpoint_fields(run_info),
    }
    out: dict[str, Any] = {
        "row": row,
        "curve": {},
        "models": {},
        "window_scan": None,
        "settings": {
            "fit": dict(fit),
            "divergence": dict(divergence),
            "loss_unit": loss_unit,
            "time_axis": time_axis,
            "compare_time_axes": compare_time_axes,
        },
    }
    col, vcol = f"loss_train_{loss_unit}", f"loss_val_{loss_unit}"
    s = None if steps is None else _Columns(steps)
    if s is None or col not in s:
        row["status"] = "invalid"
        row["reason"] = read_error or f"the steps table has no column {col!r}"
        return out

    st = s["step"]
    y = s[col]
    row["n_steps"] = int(st.size)
    row["epochs_logged"] = _epochs_covered(st, spe)

    # validation curve: best CE and when
    vs = vy = None
    v = None if val is None else _Columns(val)
    if v is not None and vcol in v and len(v):
        vs, vy = v["step"], v[vcol]
        fin = np.isfinite(vy)
        if fin.any():
            i = int(np.nanargmin(np.where(fin, vy, np.nan)))
            row["best_val_ce"] = float(vy[i])
            row["best_val_step"] = float(vs[i])
            row["best_val_epoch"] = float(v["epoch"][i])
            if "acc_val" in v:
                row["best_val_acc"] = float(np.nanmax(v["acc_val"]))
        out["curve"]["val_step"] = vs
        out["curve"]["val_loss"] = vy

    # final training loss: mean over the last epoch (one batch is too noisy)
    if st.size and math.isfinite(spe):
        last = st >= st[-1] + 1 - spe
        yl = y[last]
        row["final_train_loss"] = float(np.mean(yl)) if np.isfinite(yl).all() else None
        # the loss level alpha_early is measured on: mean over the last epoch of its window
        end = float(fit["early_window"][1])
        in_last = (st >= (end - 1.0) * spe) & (st < end * spe)
        ye = y[in_last]
        row["early_end_loss"] = (
            float(np.mean(ye)) if ye.size and np.isfinite(ye).all() and st[-1] >= end * spe - 1 else None
        )
    lr = s["lr"] if "lr" in s else None
    if time_axis not in TIME_AXES:
        raise ValueError(f"analysis.time_axis must be one of {TIME_AXES}, not {time_axis!r}")

    div = check_divergence(
        st, y, **{k: float(divergence[k]) for k in ("explode_factor", "final_factor", "edge_fraction")}
    )
    outcome = run_info.get("outcome") or {}
    if outcome.get("status") == "diverged":  # training stopped itself at the divergence
        step = outcome.get("diverged_at_step")
        div = Divergence(
            True, None if step is None else float(step), f"training stopped: {outcome.get('reason') or 'diverged'}"
        )
    elif validation.get("status") == "diverged" and not div.diverged:
        div = Divergence(True, None, "; ".join(validation.get("reasons") or []) or "diverged (validation)")
    if div.diverged:
        row["status"], row["reason"], row["diverged_step"] = "diverged", div.reason, div.step
        if math.isfinite(spe) and div.step is not None:
            row["diverged_epoch"] = div.step / spe
        if not validation.get("passed"):
            failed = _failed_checks(validation)
            # the validation of a run training stopped checks the value ranges before its stop only:
            # there, a range failure is not the divergence's
            explained = frozenset() if outcome.get("status") == "diverged" else DIVERGENCE_EXPLAINED_CHECKS
            unexplained = sorted(failed - explained) if failed else ["no failed check named"]
            if unexplained:
                # incomplete or mistrained tables: the divergence is a fact about them, not the run's outcome
                row["status"] = "invalid"
                row["reason"] = (
                    f"validation failed ({', '.join(unexplained)}): {row['validation_reasons'] or 'no reason given'}"
                    f"; the run also diverged ({div.reason})"
                )
                return out
            row["reason"] += f" (validation: {row['validation_reasons']})"
        finite = np.isfinite(y) & (y > 0)
        if finite.any():
            out["curve"].update({k: v for k, v in _thinned(st[finite], y[finite]).items()})
            out["curve"]["binned"] = _binned(st[finite], y[finite])
        early = _alpha_early_before_divergence(
            st, y, lr, div.step, spe=spe, fit=fit, loss_unit=loss_unit, time_axis=time_axis
        )
        row.update(early)
        if early.get("alpha_early") is None:
            # the level belongs to α_early's window: a run diverged in or before it has neither
            row["early_end_loss"] = None
        else:
            row["time_axis"] = time_axis
        return out
    if not validation.get("passed"):
        row["status"] = "invalid"
        row["reason"] = f"validation failed: {row['validation_reasons'] or 'no reason given'}"
        return out
    if not math.isfinite(spe) or spe <= 0:
        row["status"], row["reason"] = "invalid", "run_info.json has no steps_per_epoch"
        return out

    # zero loss cannot be logged (a batch fitted to float precision): drop, count
    pos = y > 0
    row["n_nonpositive_dropped"] = int((~pos).sum())
    st, y = st[pos], y[pos]
    if vy is not None:
        vpos = vy > 0
        vs, vy = vs[vpos], vy[vpos]
    out["curve"].update(_thinned(st, y))
    out["curve"]["binned"] = _binned(st, y)

    opts = fit_options(fit, loss_unit)
    start, end = opts["early_window"]
    covered = _epochs_covered(st, spe)
    short = covered < end - 1e-9
    if short:
        row["status"] = "too_short"
        row["reason"] = f"the run covers {covered:g} epochs; alpha_early needs epochs {start:g}-{end:g}"
    axis = time_axis
    try:
        # the analysis axis at each kept step (None: the step); the models and the scan use it too
        t = _time(axis, lr, pos)
        analysis = analyze_curve(st, y, steps_per_epoch=spe, val_steps=vs, val_loss=vy, time=t, **opts)
    except NotEnoughPoints as exc:
        row["status"], row["reason"] = "too_short", f"too few points for the fits: {exc}"
        return out
    except AnalysisError as exc:
        row["status"], row["reason"] = "invalid", f"the analysis rejected the curve: {exc}"
        return out
    except (ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
        # not a domain error: a numerical failure inside the fits; record it, never stop the sweep
        row["error_analysis"] = f"{type(exc).__name__}: {exc}"
        if not short:
            row["status"] = "invalid"
            row["reason"] = f"the fits failed numerically ({type(exc).__name__}: {exc})"
        else:
            row["reason"] += f"; the fits failed numerically ({type(exc).__name__}: {exc})"
        return out

    for key, value in analysis.to_dict().items():
        if key not in ("steps_per_epoch", "best_val_ce"):
            row[key] = value
    row["time_axis"] = axis
    other = next(a for a in TIME_AXES if a != axis)
    if compare_time_axes and (other == "step" or lr is not None):
        try:
            alt = analyze_curve(
                st,
                y,
                steps_per_epoch=spe,
                val_steps=vs,
                val_loss=vy,
                time=_time(other, lr, pos),
                **{**opts, "knee_methods": (DEFAULT_KNEE_METHOD,), "h1_knee_methods": ()},
            ).to_dict()
            row.update({f"{other}__{k}": alt.get(k) for k in AXIS_COLUMNS})
        except (AnalysisError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            row[f"error_{other}_axis"] = f"{type(exc).__name__}: {exc}"
    row["knee_method"] = DEFAULT_KNEE_METHOD
    row["knee_found"] = row.get(f"knee_{DEFAULT_KNEE_METHOD}_found")
    row["knee_epoch"] = row.get(f"knee_{DEFAULT_KNEE_METHOD}_epoch")
    out["models"] = _models(analysis, st, t)

    if not short:
        try:
            ws = window_scan(
                st,
                y,
                steps_per_epoch=spe,
                window=(start, end),
                shift=float(fit["window_shift"]),
                stride=float(fit["window_stride"]),
                time=t,
            )
            out["window_scan"] = {"starts": ws.starts, "ends": ws.ends, "alpha": ws.alpha}
            row["alpha_early_window_spread"] = ws.spread
        except AnalysisError as exc:
            row["error_window_scan"] = str(exc)
    return out


def _read_table(path):
    """``(pyarrow Table, None)``, or ``(None, reason)`` when the file cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).read(), None
    except Exception as exc:  # any unreadable file is a recorded reason
        return None, f"cannot read {Path(path).name}: {type(exc).__name__}: {exc}"


def fit_run(
    *,
    steps_parquet,
    val_parquet,
    run_info,
    validation,
    output,
    identity: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> dict:
    """Pipeline entry point (rule ``fit_run``): read the run's files, fit, write JSON.

    Parameters
    ----------
    steps_parquet, val_parquet, run_info, validation : path
        The run's validated tables, ``run_info.json`` and ``validation.json``.
    output : path
        The fit JSON to write.
    identity : mapping
        The run's :data:`~loss_slope.tables.schema.RUN_IDENTITY`.
    settings : mapping
        ``{"loss_unit": ..., "fit": {...}, "divergence": {...}}`` from the config's
        ``analysis`` block.

    Returns
    -------
    dict
        What was written.
    """
    steps, err = _read_table(steps_parquet)
    val, verr = _read_table(val_parquet)
    info = read_json(run_info)
    valid = read_json(validation)
    with one_thread():
        result = fit_run_tables(
            steps,
            val,
            run_info=info,
            validation=valid,
            identity=identity,
            fit=settings["fit"],
            divergence=settings["divergence"],
            loss_unit=settings["loss_unit"],
            read_error=err,
            time_axis=settings.get("time_axis", "step"),
            compare_time_axes=bool(settings.get("compare_time_axes", True)),
        )
    if verr:
        result["row"]["error_val_table"] = verr
    write_json(result, output)
    return result
