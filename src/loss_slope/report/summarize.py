"""Summary stage: every run's fit file in, the per-run table and the H1/H2 answers out.

The per-run table has one row per run *of the config*: a run whose fit file is
not among the inputs (training never finished, in a partial report) gets status
``missing``.  Only ``ok`` runs enter the statistics; every other run is listed
with its status and reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from loss_slope.analysis import AnalysisError, h1_statistics, h2_statistics
from loss_slope.analysis.knee import KNEE_METHODS
from loss_slope.analysis.stats import h2_statistics_diverged_worst_rank, h2_window_heatmap
from loss_slope.pipeline.fit_run import TIME_AXES
from loss_slope.tables.schema import RUN_IDENTITY

from ._io import EXCLUDED_STATUSES, STATUSES, jsonable, one_thread, read_json, write_json
from .results import H1Criterion, H1Section, H2Literal, H2Result, H2Section, NotComputable
from .study_stats import CellCounts, ExcludedRun, Settings, StatusCounts, StudyStats, WindowHeatmap
from .truth import compare_with_truth, truth_axis, truths_from_run_infos
from .truth_section import TruthComparison

__all__ = [
    "ID_COLUMNS",
    "run_table",
    "study_statistics",
    "variant_table",
    "summarize",
]

ID_COLUMNS = RUN_IDENTITY
#: the columns a reader wants first; every other fit number follows, sorted
LEAD_COLUMNS = (
    *ID_COLUMNS,
    "status",
    "reason",
    "excluded_reason",
    "h1_single_power_law",
    "h1_reason",
    "h1_literal_r2",
    "post_knee_r2",
    "post_knee_exponent",
    "post_knee_exponent_ci_low",
    "post_knee_exponent_ci_high",
    "post_knee_fit_ok",
    "post_knee_hit_bound",
    "alpha_early",
    "alpha_early_ci_low",
    "alpha_early_ci_high",
    "alpha_full",
    "alpha_full_ci_low",
    "alpha_full_ci_high",
    "best_val_ce",
    "best_val_epoch",
    "early_end_loss",
    "final_train_loss",
    "knee_found",
    "knee_epoch",
    "best_aic",
    "exponential_delta_aic",
    "power_delta_aic",
    "two_power_delta_aic",
    "diverged_step",
    "validation_status",
    "validation_reasons",
)


def _key(variant: str, run: str) -> str:
    return f"{variant}/{run}"


def run_table(
    fit_rows: Iterable[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    missing_reasons: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per run of the config.

    Parameters
    ----------
    fit_rows : iterable of mapping
        The ``row`` of each available fit file.
    runs : sequence of mapping
        Every run of the config (variant, run, experiment, optimizer, lr,
        weight_decay, seed), in config order.
    missing_reasons : mapping, optional
        ``"variant/run"`` -> why a run has no fit file (e.g. its training job failed).

    Returns
    -------
    DataFrame
        Config order; ``status`` in :data:`STATUSES`; ``excluded_reason`` holds
        ``"<status>: <reason>"`` for every run that is not ok (the column the
        analysis library's H1/H2 functions exclude on); ``run_key`` is ``variant/run``.
    """
    by_key = {_key(r["variant"], r["run"]): dict(r) for r in fit_rows}
    rows = []
    for spec in runs:
        key = _key(spec["variant"], spec["run"])
        row = by_key.pop(key, None)
        if row is None:
            row = {
                "status": "missing",
                "reason": (missing_reasons or {}).get(key)
                or "no fit file: the run's training has not finished (or failed)",
            }
        row = {**row, **{k: spec[k] for k in ID_COLUMNS if k in spec}}
        rows.append(row)
    if by_key:
        raise ValueError(
            f"{len(by_key)} fit(s) of runs not in the config ({', '.join(sorted(by_key)[:5])}"
            f"{', ...' if len(by_key) > 5 else ''}): pass only the fits of the config's runs"
        )
    df = pd.DataFrame(rows)
    for col in ID_COLUMNS + ("status", "reason"):
        if col not in df.columns:
            df[col] = None
    df["status"] = df["status"].fillna("missing")
    unknown = set(df["status"]) - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown run status {sorted(unknown)}")
    df["run_key"] = [_key(v, r) for v, r in zip(df["variant"], df["run"])]
    df["excluded_reason"] = [
        None if s == "ok" else f"{s}: {r}" if isinstance(r, str) and r else s
        for s, r in zip(df["status"], df["reason"])
    ]
    df["diverged"] = df["status"] == "diverged"
    if "h1_single_power_law" in df.columns:
        # H1 without edge solutions: a post-knee fit with a parameter on a bound is left out
        hit = df["post_knee_hit_bound"] if "post_knee_hit_bound" in df.columns else pd.Series(None, index=df.index)
        df["h1_single_power_law_interior"] = [
            d if not (isinstance(h, str) and h) else None for d, h in zip(df["h1_single_power_law"], hit)
        ]
    lead = [c for c in LEAD_COLUMNS if c in df.columns]
    rest = sorted(c for c in df.columns if c not in lead and c != "run_key")
    return df[lead + ["run_key"] + rest].reset_index(drop=True)


#: The H1 criteria reported, in order: name -> (column, uses the R² threshold, label).
#: The first is the defensible one the verdict rests on; the rest are sensitivity checks.
def h1_criteria(time_axis: str, other_axis: str | None) -> dict[str, tuple[str, bool, str]]:
    """H1 criteria: name -> (per-run column, compared with ``r2_threshold``, label)."""
    out = {
        "single_power_law": (
            "h1_single_power_law",
            False,
            "one power law after the knee (no further or second break, no exponent drift)",
        ),
        "single_power_law_interior": (
            "h1_single_power_law_interior",
            False,
            "the same, fits with a parameter on a bound left out",
        ),
        "literal_r2": ("h1_literal_r2", True, "protocol's literal criterion: straight-line log-log R² after the knee"),
        "four_parameter_r2": ("post_knee_r2", True, "R² of the floor + shift power law after the knee"),
    }
    # one criterion per knee method H1 is also decided under (registry order)
    for m in KNEE_METHODS.values():
        if m.h1_criterion is not None:
            out[f"single_power_law_knee_{m.name}"] = (f"h1_single_power_law_knee_{m.name}", False, m.h1_criterion)
    if other_axis:
        out[f"single_power_law_{other_axis}"] = (
            f"{other_axis}__h1_single_power_law",
            False,
            f"one power law after the knee, on the {other_axis.replace('_', ' ')} axis",
        )
    return out


def _not_computable(error: str, **extra) -> NotComputable:
    return NotComputable.from_dict({"verdict": "not computable", "error": error, **extra})


def _h1(
    table: pd.DataFrame, study: Mapping[str, Any], column: str, threshold: float | None, label: str
) -> H1Criterion | NotComputable:
    info = {"column": column, "threshold": threshold, "label": label}
    if column not in table.columns or not pd.Series(table[column]).notna().any():
        return _not_computable(f"no run has a value of {column}", **info)
    try:
        res = h1_statistics(
            table,
            column=column,
            threshold=threshold,
            run_column="run_key",
            seed_column="seed",
            target_shares=tuple(float(t) for t in study["h1_target_shares"]),
            confidence=float(study["confidence"]),
            n_boot=int(study["n_boot"]),
            seed=int(study["bootstrap_seed"]),
        )
    except (AnalysisError, KeyError, ValueError) as exc:
        return _not_computable(str(exc), **info)
    return H1Criterion.from_dict({**res.to_dict(), **info})


def _h2(table: pd.DataFrame, study: Mapping[str, Any], x: str, *, worst_rank: bool = False) -> H2Result | NotComputable:
    info = {"x": x, "y": "best_val_ce", "level": "early_end_loss"}
    if x not in table.columns or not (table["status"] == "ok").any():
        n_ok = int((table["status"] == "ok").sum())
        if x not in table.columns:
            return _not_computable(f"no run has {x} ({n_ok} of {len(table)} runs are ok)", **info)
        return _not_computable(f"no usable run has {x} (0 of {len(table)} runs are ok)", **info)
    if worst_rank:
        # the diverged runs this analysis adds are those with an α: without one it is the main result
        diverged = table["diverged"].fillna(False).astype(bool) if "diverged" in table.columns else None
        n_div = 0 if diverged is None else int(diverged.sum())
        has_x = np.isfinite(pd.to_numeric(table[x], errors="coerce").to_numpy(dtype=float))
        if diverged is None or not (diverged.to_numpy() & has_x).any():
            name = "α_early" if x == "alpha_early" else x
            count = f"{n_div} diverged run(s)" if n_div else "no run diverged"
            return _not_computable(f"no diverged run has an {name} ({count})", **info)
    kwargs = dict(
        x_column=x,
        y_column="best_val_ce",
        level_column="early_end_loss" if "early_end_loss" in table.columns else None,
        run_column="run_key",
        min_abs_rho=float(study["h2_min_abs_rho"]),
        max_p=float(study["h2_max_p"]),
        sign=str(study["h2_sign"]),
        confidence=float(study["confidence"]),
        n_boot=int(study["n_boot"]),
        seed=int(study["bootstrap_seed"]),
    )
    try:
        if worst_rank:
            res = h2_statistics_diverged_worst_rank(table, diverged_column="diverged", **kwargs)
        else:
            res = h2_statistics(table, **kwargs)
    except (AnalysisError, KeyError, ValueError) as exc:
        return _not_computable(str(exc), **info)
    return H2Result.from_dict({**res.to_dict(), **info})


def _h2_literal(table: pd.DataFrame, study: Mapping[str, Any], x: str) -> H2Literal | NotComputable:
    """The protocol's literal H2 rule: |Spearman ρ| >= threshold, of the configured sign (``h2_sign``: a
    correlation of the other sign never supports H2), and p < max p, over runs treated as independent
    (what the cluster-aware verdict replaces)."""
    ok = table[table["status"] == "ok"]
    if x not in ok.columns or "best_val_ce" not in ok.columns:
        return _not_computable(f"no usable run has {x} and best_val_ce")
    xv = pd.to_numeric(ok[x], errors="coerce")
    yv = pd.to_numeric(ok["best_val_ce"], errors="coerce")
    keep = xv.notna() & yv.notna()
    if keep.sum() < 4:
        return _not_computable(f"fewer than 4 usable runs with {x} and best_val_ce ({int(keep.sum())})")
    tied = [c for c, v in ((x, xv), ("best_val_ce", yv)) if v[keep].nunique() < 2]
    if tied:
        return _not_computable(f"{' and '.join(tied)} take one value over the {int(keep.sum())} usable runs")
    r = sps.spearmanr(xv[keep], yv[keep])
    rho, p = float(r.statistic), float(r.pvalue)
    sign = str(study.get("h2_sign", "either"))
    sign_ok = sign == "either" or (rho < 0 if sign == "negative" else rho > 0)
    ok_rule = sign_ok and abs(rho) >= float(study["h2_min_abs_rho"]) and p < float(study["h2_max_p"])
    return H2Literal(
        verdict="supported" if ok_rule else "not supported",
        spearman_rho=rho,
        spearman_p=p,
        n=int(keep.sum()),
        rule=f"|rho| >= h2_min_abs_rho, sign {sign} (h2_sign), and p < h2_max_p, runs as independent",
    )


def _status_counts(g: pd.DataFrame) -> StatusCounts:
    return StatusCounts(**{s: int((g["status"] == s).sum()) for s in STATUSES})


def _cells(table: pd.DataFrame) -> tuple[CellCounts, ...]:
    """Run counts per cell of the grid (variant x LR x WD): usable and excluded by status."""
    out = []
    for (v, lr, wd), g in table.groupby(["variant", "lr", "weight_decay"], sort=False, dropna=False):
        counts = {st: int((g["status"] == st).sum()) for st in STATUSES}
        row = {
            "variant": v,
            "lr": lr,
            "weight_decay": wd,
            "runs": int(len(g)),
            **counts,
            "excluded": int(len(g) - counts["ok"]),
        }
        out.append(CellCounts.from_dict(jsonable(row)))
    return tuple(out)


def _heatmap(table: pd.DataFrame, scans: Mapping[str, Mapping[str, Any]]) -> dict | None:
    ok = table[(table["status"] == "ok")]
    keys = [k for k in ok["run_key"] if scans.get(k)]
    if not keys:
        return None
    first = scans[keys[0]]
    starts, ends = np.asarray(first["starts"], float), np.asarray(first["ends"], float)
    grids, ys = [], []
    y_by_key = dict(zip(ok["run_key"], pd.to_numeric(ok["best_val_ce"], errors="coerce")))
    for k in keys:
        sc = scans[k]
        a = np.asarray(sc["alpha"], dtype=float)  # None -> nan
        if (
            a.shape != (starts.size, ends.size)
            or not np.allclose(sc["starts"], starts)
            or not np.allclose(sc["ends"], ends)
        ):
            continue
        grids.append(a)
        ys.append(float(y_by_key.get(k, np.nan)))
    if not grids:
        return None
    hm = h2_window_heatmap(np.stack(grids), np.asarray(ys), starts=starts, ends=ends)
    return {"starts": hm.starts, "ends": hm.ends, "rho": hm.rho, "p_value": hm.p_value, "n_valid": hm.n_valid}


def _scan_grid(scan: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not scan:
        return None
    alpha = [[np.nan if v is None else v for v in row] for row in scan["alpha"]]
    return {"starts": scan["starts"], "ends": scan["ends"], "alpha": alpha}


def study_statistics(
    table: pd.DataFrame,
    *,
    study: Mapping[str, Any],
    early_window: Sequence[float] = (5, 15),
    window_scans: Mapping[str, Mapping[str, Any]] | None = None,
    study_name: str = "",
    time_axis: str = "step",
) -> StudyStats:
    """H1 and H2 answers for a per-run table.

    Parameters
    ----------
    table : DataFrame
        From :func:`run_table`.
    study : mapping
        The config's ``analysis.study`` block.
    early_window : (float, float)
        The α_early window (epochs), for the record and the heat-map's nominal cell.
    window_scans : mapping, optional
        ``run_key`` -> ``{"starts", "ends", "alpha"}`` (each fit file's
        ``window_scan``); gives the window-robustness heat-map of ρ.
    study_name : str
    time_axis : str
        The configured time axis; the other one's columns (prefixed) are
        reported beside it when present.

    Returns
    -------
    StudyStats
        Counts (per status, overall, per variant and per cell), ``h1`` (one
        entry per criterion of :func:`h1_criteria`, the first the defensible
        verdict), ``h2`` (cluster-aware α_early, the protocol's literal rule and
        the sensitivity checks), the window heat-map, the excluded runs and the
        settings; no ``truth`` (:func:`summarize` adds it for a simulated study).
    """
    excluded = tuple(
        ExcludedRun.from_dict(jsonable({"variant": r.variant, "run": r.run, "status": r.status, "reason": r.reason}))
        for r in table.itertuples()
        if r.status in EXCLUDED_STATUSES
    )
    scans = {k: _scan_grid(v) for k, v in (window_scans or {}).items()}
    heat = None
    if scans and "best_val_ce" in table.columns:
        try:
            heat = _heatmap(table, scans)
        except AnalysisError:
            heat = None
    if heat is not None:
        heat["nominal"] = [float(early_window[0]), float(early_window[1])]
    other = next(a for a in TIME_AXES if a != time_axis)
    has_other = f"{other}__h1_single_power_law" in table.columns
    thr = float(study["r2_threshold"])
    h1 = H1Section(
        {
            name: _h1(table, study, column, thr if numeric else None, label)
            for name, (column, numeric, label) in h1_criteria(time_axis, other if has_other else None).items()
        }
    )
    h2 = H2Section(
        h2=_h2(table, study, "alpha_early"),
        h2_literal=_h2_literal(table, study, "alpha_early"),
        h2_diverged_worst_rank=_h2(table, study, "alpha_early", worst_rank=True),
        h2_alpha_full=_h2(table, study, "alpha_full"),
        h2_other_axis=_h2(table, study, f"{other}__alpha_early") if has_other else None,
    )
    settings = {"study": dict(study), "early_window": list(early_window), "time_axis": time_axis}
    return StudyStats(
        study=study_name,
        n_runs=int(len(table)),
        counts=_status_counts(table),
        counts_by_variant={str(v): _status_counts(g) for v, g in table.groupby("variant", sort=False)},
        counts_by_cell=_cells(table),
        time_axis=time_axis,
        other_time_axis=other if has_other else None,
        h1=h1,
        h2=h2,
        window_heatmap=None if heat is None else WindowHeatmap.from_dict(jsonable(heat)),
        excluded_runs=excluded,
        settings=Settings.from_dict(jsonable(settings)),
    )


def _median(g: pd.DataFrame, col: str) -> float:
    if col not in g.columns:
        return math.nan
    v = pd.to_numeric(g[col], errors="coerce")
    return float(v.median()) if v.notna().any() else math.nan


def variant_table(table: pd.DataFrame, stats: StudyStats) -> pd.DataFrame:
    """One row per variant: run health, H1 share (single power law), H2 correlations, medians."""
    rows = []
    main = stats.h1.main
    h1 = main.by_variant if main.computable else {}
    h2_res = stats.h2.main
    h2 = h2_res.by_variant if h2_res.computable else {}
    for v, g in table.groupby("variant", sort=False):
        ok = g[g["status"] == "ok"]
        row: dict[str, Any] = {
            "variant": v,
            "optimizer": ",".join(sorted({str(o) for o in g["optimizer"].dropna()})),
            "n_runs": len(g),
            **{f"n_{s}": int((g["status"] == s).sum()) for s in STATUSES},
        }
        s = h1.get(str(v))
        row.update(
            {
                "h1_k": s.k if s else None,
                "h1_n": s.n if s else 0,
                "h1_share": s.share if s else math.nan,
                "h1_ci_low": s.ci_low if s else math.nan,
                "h1_ci_high": s.ci_high if s else math.nan,
            }
        )
        c = h2.get(str(v))
        row["h2_verdict"] = c.verdict if c else None
        for part in ("overall", "within_cell"):
            d = getattr(c, part) if c else None
            for k in ("n", "n_cells", "spearman_rho", "spearman_p", "spearman_ci_low", "spearman_ci_high"):
                row[f"h2_{part}_{k}"] = getattr(d, k) if d else math.nan
        for col in (
            "h1_literal_r2",
            "post_knee_r2",
            "post_knee_exponent",
            "alpha_early",
            "alpha_full",
            "best_val_ce",
            "knee_epoch",
            "final_train_loss",
        ):
            row[f"median_{col}"] = _median(ok, col)
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(df: pd.DataFrame, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.6g")


def summarize(
    *,
    fit_files: Sequence[str | Path],
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    early_window: Sequence[float],
    study_name: str,
    table_parquet,
    table_csv,
    variants_csv,
    variant_csvs: Sequence[str | Path],
    stats_json,
    missing_reasons: Mapping[str, str] | None = None,
    time_axis: str = "step",
    truth_run_infos: Sequence[str | Path] = (),
) -> StudyStats:
    """Pipeline entry point (rule ``summarize``).

    Parameters
    ----------
    fit_files : sequence of path
        The fit JSONs available (all runs, or in a partial report those whose
        training finished).
    runs : sequence of mapping
        Every run of the config (identifiers).
    study : mapping
        ``analysis.study``.
    early_window : (float, float)
        ``analysis.fit.early_window``.
    study_name : str
    table_parquet, table_csv, variants_csv, stats_json : path
    missing_reasons : mapping, optional
        ``"variant/run"`` -> why a run has no fit file (partial reports).
    time_axis : str
        ``analysis.time_axis``.
    truth_run_infos : sequence of path
        A simulated study: the runs' ``run_info.json`` (``results/export/{variant}/{run}/``);
        their known truth is compared with every estimate under ``stats["truth"]``.
    variant_csvs : sequence of path
        One CSV per variant, named ``<variant>.csv``: that variant's rows.

    Returns
    -------
    StudyStats
        What ``stats_json`` holds (its :meth:`~StudyStats.to_dict`).
    """
    fits = [read_json(p) for p in fit_files]
    table = run_table([f["row"] for f in fits], runs, missing_reasons)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f.get("window_scan") for f in fits}
    with one_thread():
        stats = study_statistics(
            table,
            study=study,
            early_window=early_window,
            window_scans=scans,
            study_name=study_name,
            time_axis=time_axis,
        )
    if truth_run_infos:
        truths = truths_from_run_infos(truth_run_infos)
        # judge the H1 decision on the axis where the simulated curves are power laws
        axis = truth_axis(truths)
        key, column = "single_power_law", "h1_single_power_law"
        if axis is not None and axis != time_axis and f"{axis}__h1_single_power_law" in table.columns:
            key, column = f"single_power_law_{axis}", f"{axis}__h1_single_power_law"
        h1_study = stats.h1.criteria[key]  # h1_criteria has this key whenever the table has the column
        comparison = compare_with_truth(
            table,
            truths,
            confidence=float(study["confidence"]),
            h2_min_abs_rho=float(study["h2_min_abs_rho"]),
            h2_max_p=float(study["h2_max_p"]),
            h2_sign=str(study["h2_sign"]),
            h1_study=h1_study.overall if h1_study.computable else None,
            h2_study=stats.h2.main,
            h1_column=column,
        )
        comparison["h1"]["time_axis"] = axis or time_axis
        stats = dataclasses.replace(stats, truth=TruthComparison.from_dict(jsonable(comparison)))
    Path(table_parquet).parent.mkdir(parents=True, exist_ok=True)
    # object columns mixing None and numbers: make them numeric where they are
    for c in table.columns:
        vals = table[c].dropna()
        if table[c].dtype == object and len(vals) and not vals.map(lambda v: isinstance(v, (bool, str))).any():
            table[c] = pd.to_numeric(table[c], errors="coerce")
    table.to_parquet(table_parquet, index=False)
    _write_csv(table, table_csv)
    _write_csv(variant_table(table, stats), variants_csv)
    for path in variant_csvs:
        _write_csv(table[table["variant"] == Path(path).name[: -len(".csv")]], path)
    write_json(stats.to_dict(), stats_json)
    return stats
