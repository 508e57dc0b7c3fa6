"""Summary stage: every run's fit file in, the per-run table and the H1/H2 answers out.

The per-run table has one row per run *of the config*: a run whose fit file is
not among the inputs (training never finished, in a partial report) gets status
``missing``.  Only ``ok`` runs enter the statistics; every other run is listed
with its status and reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from loss_slope.analysis import AnalysisError, h1_statistics, h2_statistics, h2_window_heatmap

from ._io import EXCLUDED_STATUSES, STATUSES, one_thread, read_json, write_json

__all__ = [
    "ID_COLUMNS",
    "run_table",
    "study_statistics",
    "variant_table",
    "summarize",
]

ID_COLUMNS = ("variant", "run", "experiment", "optimizer", "lr", "weight_decay", "seed")
#: the columns a reader wants first; every other fit number follows, sorted
LEAD_COLUMNS = (
    *ID_COLUMNS,
    "status",
    "reason",
    "excluded_reason",
    "power_r2",
    "power_r2_binned",
    "power_exponent",
    "alpha_early",
    "alpha_early_ci_low",
    "alpha_early_ci_high",
    "alpha_full",
    "alpha_full_ci_low",
    "alpha_full_ci_high",
    "best_val_ce",
    "best_val_epoch",
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
    for key, row in by_key.items():  # a fit of a run no longer in the config
        rows.append({**row, "status": row.get("status", "ok"), "reason": row.get("reason")})
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
    lead = [c for c in LEAD_COLUMNS if c in df.columns]
    rest = sorted(c for c in df.columns if c not in lead and c != "run_key")
    return df[lead + ["run_key"] + rest].reset_index(drop=True)


def _share(s) -> dict:
    return {"k": s.k, "n": s.n, "share": s.share, "ci_low": s.ci[0], "ci_high": s.ci[1]}


def _h1(table: pd.DataFrame, column: str, study: Mapping[str, Any]) -> dict:
    out: dict[str, Any] = {
        "statistic": column,
        "threshold": float(study["r2_threshold"]),
        "target_share": float(study["h1_target_share"]),
        "confidence": float(study["confidence"]),
    }
    if not (table["status"] == "ok").any():
        out.update(answer="not computable", error=f"no usable run (0 of {len(table)} runs are ok)", overall=None,
                   by_variant={}, excluded=[])
        return out
    try:
        res = h1_statistics(
            table,
            r2_column=column,
            run_column="run_key",
            threshold=float(study["r2_threshold"]),
            confidence=float(study["confidence"]),
        )
    except (AnalysisError, KeyError) as exc:
        out.update(answer="not computable", error=str(exc), overall=None, by_variant={}, excluded=[])
        return out
    share = res.overall.share
    out.update(
        overall=_share(res.overall),
        by_variant={v: _share(s) for v, s in res.by_variant.items()},
        excluded=[{"run": r, "reason": why} for r, why in res.excluded],
        answer="supported" if share >= out["target_share"] else "not supported",
    )
    return out


def _h2(table: pd.DataFrame, x: str, study: Mapping[str, Any]) -> dict:
    out: dict[str, Any] = {
        "x": x,
        "y": "best_val_ce",
        "min_abs_rho": float(study["h2_min_abs_rho"]),
        "max_p": float(study["h2_max_p"]),
        "confidence": float(study["confidence"]),
        "n_boot": int(study["n_boot"]),
    }
    if not (table["status"] == "ok").any():
        out.update(answer="not computable", error=f"no usable run (0 of {len(table)} runs are ok)", overall=None,
                   by_group={}, skipped_groups=[], excluded=[])
        return out
    try:
        res = h2_statistics(
            table,
            x_column=x,
            y_column="best_val_ce",
            group_columns=("variant", "optimizer"),
            run_column="run_key",
            n_boot=int(study["n_boot"]),
            confidence=float(study["confidence"]),
            seed=int(study["bootstrap_seed"]),
        )
    except (AnalysisError, KeyError) as exc:
        out.update(answer="not computable", error=str(exc), overall=None, by_group={}, skipped_groups=[], excluded=[])
        return out
    o = res.overall
    ok = abs(o.spearman_rho) >= out["min_abs_rho"] and o.spearman_p < out["max_p"]
    out.update(
        overall=o.to_dict(),
        by_group={g: c.to_dict() for g, c in res.by_group.items()},
        skipped_groups=[{"group": g, "reason": why} for g, why in res.skipped_groups],
        excluded=[{"run": r, "reason": why} for r, why in res.excluded],
        answer="supported" if ok else "not supported",
    )
    return out


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
        if a.shape != (starts.size, ends.size) or not np.allclose(sc["starts"], starts) or not np.allclose(
            sc["ends"], ends
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
) -> dict:
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

    Returns
    -------
    dict
        ``counts`` (per status, overall and per variant), ``h1`` (configured R²
        column), ``h1_sensitivity`` (the other R² column), ``h2`` (α_early),
        ``h2_alpha_full``, ``window_heatmap``, ``excluded_runs`` and ``settings``.
    """
    col = str(study["r2_column"])
    other = "power_r2_binned" if col == "power_r2" else "power_r2"
    counts = {s: int((table["status"] == s).sum()) for s in STATUSES}
    by_variant = {
        str(v): {s: int((g["status"] == s).sum()) for s in STATUSES} for v, g in table.groupby("variant", sort=False)
    }
    excluded = [
        {"variant": r.variant, "run": r.run, "status": r.status, "reason": r.reason}
        for r in table.itertuples()
        if r.status in EXCLUDED_STATUSES
    ]
    scans = {k: _scan_grid(v) for k, v in (window_scans or {}).items()}
    heat = None
    if scans and "best_val_ce" in table.columns:
        try:
            heat = _heatmap(table, scans)
        except AnalysisError:
            heat = None
    if heat is not None:
        heat["nominal"] = [float(early_window[0]), float(early_window[1])]
    return {
        "study": study_name,
        "n_runs": int(len(table)),
        "counts": counts,
        "counts_by_variant": by_variant,
        "h1": _h1(table, col, study),
        "h1_sensitivity": _h1(table, other, study),
        "h2": _h2(table, "alpha_early", study),
        "h2_alpha_full": _h2(table, "alpha_full", study),
        "window_heatmap": heat,
        "excluded_runs": excluded,
        "settings": {"study": dict(study), "early_window": list(early_window)},
    }


def _median(g: pd.DataFrame, col: str) -> float:
    if col not in g.columns:
        return math.nan
    v = pd.to_numeric(g[col], errors="coerce")
    return float(v.median()) if v.notna().any() else math.nan


def variant_table(table: pd.DataFrame, stats: Mapping[str, Any]) -> pd.DataFrame:
    """One row per variant: run health, H1 share, H2 correlation, medians."""
    rows = []
    h1 = stats["h1"].get("by_variant") or {}
    h2 = stats["h2"].get("by_group") or {}
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
                "h1_k": s["k"] if s else None,
                "h1_n": s["n"] if s else 0,
                "h1_share": s["share"] if s else math.nan,
                "h1_ci_low": s["ci_low"] if s else math.nan,
                "h1_ci_high": s["ci_high"] if s else math.nan,
            }
        )
        c = h2.get(f"variant={v}")
        for k in ("n", "spearman_rho", "spearman_p", "spearman_ci_low", "spearman_ci_high", "pearson_r", "pearson_p"):
            row[f"h2_{k}"] = c[k] if c else math.nan
        for col in ("power_r2", "power_r2_binned", "power_exponent", "alpha_early", "alpha_full", "best_val_ce", "knee_epoch", "final_train_loss"):
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
) -> dict:
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
    variant_csvs : sequence of path
        One CSV per variant, named ``<variant>.csv``: that variant's rows.

    Returns
    -------
    dict
        The statistics written to ``stats_json``.
    """
    fits = [read_json(p) for p in fit_files]
    table = run_table([f["row"] for f in fits], runs, missing_reasons)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f.get("window_scan") for f in fits}
    with one_thread():
        stats = study_statistics(
            table, study=study, early_window=early_window, window_scans=scans, study_name=study_name
        )
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
    write_json(stats, stats_json)
    return stats
