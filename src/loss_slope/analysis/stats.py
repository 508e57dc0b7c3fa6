"""Study statistics: H1 (share of single power laws) and H2 (early slope vs best
validation CE) at study level, recording why each excluded run is excluded.

Tables are pandas DataFrames (or anything ``pandas.DataFrame`` accepts) with one
row per run.  A run is excluded -- and listed with its reason in the result --
when its ``exclusion_column`` holds a reason (e.g. the fit stage's divergence rule,
:func:`loss_slope.train.divergence.check_divergence`) or
when a value the statistic needs is missing or not finite.  Nothing is dropped
silently.

The runs form cells (variant x LR x weight decay) x seeds, and a seed is shared
by every cell (same init and data order), so runs are not independent units.
Every study-level interval here resamples or clusters whole cells (and, for H2,
whole seeds); see ``docs/analysis.md``, "Study inference".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy import stats as sps

from .data import z_value
from .exceptions import AnalysisError, NonFiniteValues, NotEnoughPoints

__all__ = [
    "wilson_interval",
    "Share",
    "H1Result",
    "h1_statistics",
    "Correlation",
    "H2Result",
    "h2_statistics",
    "h2_statistics_diverged_worst_rank",
    "LevelComparison",
    "LocoPrediction",
    "VariantH2",
    "WindowHeatmap",
    "h2_window_heatmap",
]


# ====================================================================== shared helpers
def _json(obj):
    """Strictly JSON-serialisable copy: NaN/inf -> None, numpy -> Python, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): _json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _is_reason(value) -> bool:
    return isinstance(value, str) and bool(value)


def _check_cells(df: pd.DataFrame, cell_columns: Sequence[str], what: str) -> None:
    if not cell_columns:
        raise AnalysisError(f"{what} needs at least one cell column")
    for col in cell_columns:
        if col not in df.columns:
            raise AnalysisError(
                f"{what} needs the cell column {col!r} (cells = {' x '.join(cell_columns)}); the table lacks it"
            )


def _seed_present(df: pd.DataFrame, seed_column: str | None) -> np.ndarray:
    """Per run: its seed is there (every run when no seed column is used)."""
    if seed_column is None or seed_column not in df.columns:
        return np.ones(len(df), dtype=bool)
    return ~df[seed_column].isna().to_numpy()


def _codes(col: pd.Series) -> np.ndarray:
    """Integer codes of a column's values, a missing value its own code (never -1)."""
    return pd.factorize(col.fillna("<missing>").astype(str))[0].astype(np.intp)


def _cell_label(row_values) -> str:
    return "/".join(str(v) for v in row_values)


def _factorize(df: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes 0..G-1 of the combinations of ``columns`` and their labels."""
    keys = [tuple(r) for r in df[list(columns)].itertuples(index=False, name=None)]
    codes, uniques = pd.factorize(pd.Series([_cell_label(k) for k in keys]), sort=True)
    return codes.astype(np.intp), [str(u) for u in uniques]


def _verdict_share(ci: tuple[float, float], target: float) -> str:
    lo, hi = ci
    if lo >= target:
        return "supported"
    if hi < target:
        return "not supported"
    return "inconclusive"


# ====================================================================== H1
def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (independent runs).

    Raises
    ------
    NotEnoughPoints
        If ``n == 0``.
    """
    if n <= 0:
        raise NotEnoughPoints(1, 0, "runs")
    if not 0 <= k <= n:
        raise ValueError("need 0 <= k <= n")
    return _wilson(k / n, n, z_value(confidence))


def _wilson(p: float, n: float, q: float) -> tuple[float, float]:
    """Wilson score interval for proportion ``p`` with (possibly fractional) ``n`` and quantile ``q``."""
    den = 1.0 + q * q / n
    centre = (p + q * q / (2 * n)) / den
    half = q * math.sqrt(max(p * (1 - p), 0.0) / n + q * q / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Share:
    """A proportion with its interval.

    Attributes
    ----------
    k, n : int
        Successes and runs.
    share : float
        ``k / n``.
    ci : tuple of float
        (low, high).  From :func:`h1_statistics`: a Wilson interval on the
        design-effect-adjusted number of runs with a t quantile on ``n_cells - 1``
        degrees of freedom, or ``min(n_cells, n_seeds) - 1`` where the two-way cells x
        seeds variance is used (cluster-aware); from :func:`wilson_interval`: plain Wilson.
    n_cells : int or None
        Cells the runs come from (None: runs treated as independent).
    design_effect : float
        Variance of the share under clustering / binomial variance (>= 1).
    n_effective : float
        ``n / design_effect``, the number of runs the interval is based on.
    variance : str or None
        The clustered variance the interval uses: ``"cells"``, or ``"cells and seeds"`` (the
        two-way estimate, when larger); None: binomial (runs independent).
    df : int or None
        Degrees of freedom of the t quantile (None: the normal quantile).
    verdicts : Mapping[float, str]
        Target share -> "supported" (ci low >= target), "not supported" (ci high <
        target) or "inconclusive".
    """

    k: int
    n: int
    share: float
    ci: tuple[float, float]
    n_cells: int | None = None
    design_effect: float = 1.0
    n_effective: float | None = None
    verdicts: Mapping[float, str] = field(default_factory=dict)
    variance: str | None = None
    df: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready: ``ci`` as ``[low, high]``, verdict keys as strings (``"0.8"``)."""
        return _json(
            {
                "k": self.k,
                "n": self.n,
                "share": self.share,
                "ci": list(self.ci),
                "ci_low": self.ci[0],
                "ci_high": self.ci[1],
                "n_cells": self.n_cells,
                "design_effect": self.design_effect,
                "n_effective": self.n_effective,
                "verdicts": {f"{t:g}": v for t, v in self.verdicts.items()},
                "variance": self.variance,
                "df": self.df,
            }
        )


def cluster_share(
    success: np.ndarray,
    cell: np.ndarray,
    seed: np.ndarray | None,
    *,
    confidence: float,
    targets: Sequence[float],
) -> Share:
    """Share with a cluster-aware Wilson interval (see :func:`h1_statistics`)."""
    success = np.asarray(success, dtype=float)
    n = int(success.size)
    k = int(round(success.sum()))
    p = k / n
    g = int(np.unique(cell).size)
    resid = success - p
    vb = p * (1 - p) / n
    deff = 1.0
    df = g - 1
    variance = None  # binomial: every run alike (vb = 0), or one cell
    if vb > 0 and g >= 2:
        variance = "cells"

        def clustered(codes):
            m = int(codes.max()) + 1
            sums = np.bincount(codes, weights=resid, minlength=m)
            gg = int(np.count_nonzero(np.bincount(codes, minlength=m)))
            return gg / (gg - 1) * float(np.sum(sums**2)) / n**2 if gg >= 2 else 0.0

        v_cell = clustered(cell)
        v = v_cell
        if seed is not None and np.unique(seed).size >= 2:
            # two-way (cells x shared seeds) cluster-robust variance: V_cell + V_seed - V_run
            v_two = v_cell + clustered(seed) - float(np.sum(resid**2)) / n**2
            if v_two > v:
                v = v_two
                # the variance now rests on the seeds too: t on min(cells, seeds) - 1 df (Cameron, Gelbach &
                # Miller 2011); on cells - 1 df a bad seed failing runs across cells gave 0.90 coverage
                df = min(g, int(np.unique(seed).size)) - 1
                variance = "cells and seeds"
        deff = max(1.0, v / vb)
    q = float(sps.t.ppf(0.5 + confidence / 2, max(df, 1))) if g >= 2 else z_value(confidence)
    n_eff = n / deff
    ci = _wilson(p, n_eff, q)
    return Share(
        k=k,
        n=n,
        share=p,
        ci=ci,
        n_cells=g,
        design_effect=deff,
        n_effective=n_eff,
        verdicts=MappingProxyType({float(t): _verdict_share(ci, float(t)) for t in targets}),
        variance=variance,
        df=max(df, 1) if g >= 2 else None,
    )


@dataclass(frozen=True)
class H1Result:
    """H1 at study level: the share of runs that are single power laws.

    Attributes
    ----------
    overall : Share
        Over usable runs (excluded and undecided runs left out).
    verdicts : Mapping[float, str]
        ``overall.verdicts``: target share -> three-way verdict.
    with_excluded_as_failures : Share
        The same share with every excluded or undecided run counted as a failure
        (its own interval and verdicts).
    by_variant : Mapping[str, Share]
        Per variant (usable runs), each with its own cluster-aware interval.
    column : str
    threshold : float or None
        Numeric column: value >= threshold is a success; None: boolean column.
    confidence : float
    target_shares : tuple of float
    excluded : tuple of (run, reason)
    skipped_variants : tuple of (variant, reason)
        Every variant of the table without a ``by_variant`` entry: no usable run,
        or usable runs in a single cell (no between-cell variance to estimate).
    seed_column : str or None
        The seed column clustered on besides the cells (None: cells only).
    """

    overall: Share
    verdicts: Mapping[float, str]
    with_excluded_as_failures: Share
    by_variant: Mapping[str, Share]
    column: str
    threshold: float | None
    confidence: float
    target_shares: tuple[float, ...]
    excluded: tuple[tuple[str, str], ...]
    skipped_variants: tuple[tuple[str, str], ...] = ()
    seed_column: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per (all, variants...) with k, n, share, ci_low, ci_high, n_cells, design_effect."""
        rows = [("all", self.overall), ("all, excluded as failures", self.with_excluded_as_failures)]
        rows += list(self.by_variant.items())
        return pd.DataFrame(
            [
                {
                    "variant": v,
                    "k": s.k,
                    "n": s.n,
                    "share": s.share,
                    "ci_low": s.ci[0],
                    "ci_high": s.ci[1],
                    "n_cells": s.n_cells,
                    "design_effect": s.design_effect,
                }
                for v, s in rows
            ]
        )

    def to_dict(self) -> dict:
        """Strictly JSON-serialisable (NaN -> None); intervals as ``[low, high]`` plus ``ci_low``/``ci_high``."""
        return _json(
            {
                "column": self.column,
                "threshold": self.threshold,
                "confidence": self.confidence,
                "target_shares": list(self.target_shares),
                "method": "Wilson interval on the design-effect-adjusted n (cluster-robust over cells"
                + (
                    f"; with shared seeds ({self.seed_column}) the larger of that and the two-way "
                    "cells x seeds estimate"
                    if self.seed_column
                    else ""
                )
                + "), t quantile on n_cells - 1 df"
                + (", or min(n_cells, n_seeds) - 1 df where the two-way estimate is used" if self.seed_column else ""),
                "overall": self.overall.to_dict(),
                "verdicts": {f"{t:g}": v for t, v in self.verdicts.items()},
                "with_excluded_as_failures": self.with_excluded_as_failures.to_dict(),
                "by_variant": {v: s.to_dict() for v, s in self.by_variant.items()},
                "excluded": [{"run": r, "reason": why} for r, why in self.excluded],
                "skipped_variants": [{"variant": v, "reason": why} for v, why in self.skipped_variants],
            }
        )


def _success_values(values: pd.Series, column: str, threshold: float | None) -> np.ndarray:
    """Per-run success as 1.0 / 0.0, NaN where undecided or missing."""
    out = np.full(len(values), np.nan)
    if threshold is None:
        for i, v in enumerate(values):
            if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) or v is pd.NA:
                continue
            if isinstance(v, (bool, np.bool_)):
                out[i] = float(v)
            elif isinstance(v, (int, np.integer, float, np.floating)) and float(v) in (0.0, 1.0):
                out[i] = float(v)
            elif isinstance(v, str) and v.strip().lower() in ("true", "false"):
                out[i] = 1.0 if v.strip().lower() == "true" else 0.0
            else:
                raise AnalysisError(
                    f"column {column!r} holds {v!r}: a boolean column needs True/False/None; "
                    "pass threshold= for a numeric column"
                )
        return out
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(num)
    out[ok] = (num[ok] >= float(threshold)).astype(float)
    return out


def h1_statistics(
    table,
    *,
    column: str = "h1_single_power_law",
    threshold: float | None = None,
    cell_columns: Sequence[str] = ("variant", "lr", "weight_decay"),
    seed_column: str | None = None,
    variant_column: str = "variant",
    run_column: str = "run",
    exclusion_column: str | None = "excluded_reason",
    target_shares: Sequence[float] = (0.8, 0.9),
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    r2_column: str | None = None,
) -> H1Result:
    """Share of single power laws with a cluster-aware interval and three-way verdicts.

    A run is a success when ``column`` is True (boolean column, ``threshold=None``)
    or ``column >= threshold`` (numeric column, e.g. ``column="h1_literal_r2",
    threshold=0.98``).  Runs with a reason in ``exclusion_column``, an undecided
    (None/NaN) value or missing cell labels are excluded and listed with the reason.

    The interval
    ------------
    Runs in one cell (variant x LR x WD) share their configuration, and runs with
    one seed share init and data order across cells, so successes are not
    independent.  The variance of the share is estimated cluster-robustly over
    cells (ratio estimator with the ``G / (G - 1)`` factor), divided by the binomial
    variance to give a design effect ``deff >= 1``, and the Wilson score interval
    is computed on ``n_eff = n / deff`` runs with the normal quantile replaced by a
    t quantile on ``n_cells - 1`` degrees of freedom (Korn & Graubard's
    design-effect adjustment for clustered proportions).  At ``k = n`` or ``k = 0``
    the observed design effect is 1 and the interval is the Wilson interval with
    the t quantile: never of zero width (216/216 gives [0.981, 1]).

    Parameters
    ----------
    table : DataFrame-like
        One row per run.
    column : str
        Boolean decision column, or numeric column with ``threshold``.
    threshold : float, optional
    cell_columns : sequence of str
        Columns whose combinations are the cells.
    seed_column : str or None
        Seed shared across cells.  By default (None) runs are clustered by cell
        only: with 6 seeds a seed-level variance has ~5 degrees of freedom, and
        the two-way estimate (``V_cell + V_seed - V_run``, the larger of it and the
        cell estimate is used when a seed column is given) inflates the design
        effect of independent runs to ~2 by chance alone.  Where the two-way
        estimate is used, the t quantile is on ``min(n_cells, n_seeds) - 1`` degrees
        of freedom (Cameron, Gelbach & Miller, 2011).
    variant_column, run_column, exclusion_column : str
    target_shares : sequence of float
        Targets for the verdicts.
    confidence : float
    n_boot, seed : int
        Accepted for a signature uniform with :func:`h2_statistics`; the interval
        is analytic and does not use them.
    r2_column : str, optional
        Deprecated alias of ``column`` with ``threshold`` defaulting to 0.98.

    Returns
    -------
    H1Result

    Raises
    ------
    AnalysisError
        A missing column, or a non-boolean value in a boolean column.
    NotEnoughPoints
        Fewer than 4 cells with usable runs (the count is in the message).
    """
    del n_boot, seed
    if r2_column is not None:
        column = r2_column
        threshold = 0.98 if threshold is None else threshold
    df = pd.DataFrame(table).reset_index(drop=True)
    _check_cells(df, cell_columns, "H1")
    for col in (column, variant_column):
        if col not in df.columns:
            raise AnalysisError(f"table lacks column {col!r}")
    runs = df[run_column].astype(str).tolist() if run_column in df.columns else [f"row{i}" for i in range(len(df))]
    succ = _success_values(df[column], column, threshold)
    labels_ok = ~df[list(cell_columns)].isna().any(axis=1).to_numpy()
    has_seed = seed_column is not None and seed_column in df.columns
    seed_ok = _seed_present(df, seed_column)
    excluded: list[tuple[str, str]] = []
    keep = np.ones(len(df), dtype=bool)
    reasons = df[exclusion_column].tolist() if exclusion_column and exclusion_column in df.columns else [None] * len(df)
    for i in range(len(df)):
        if _is_reason(reasons[i]):
            why = reasons[i]
        elif not labels_ok[i]:
            why = "cell label missing"
        elif not seed_ok[i]:
            why = "seed missing"
        elif not np.isfinite(succ[i]):
            why = f"{column} undecided" if threshold is None else f"{column} missing or not finite"
        else:
            continue
        keep[i] = False
        excluded.append((runs[i], why))

    # every run has a cell and a seed code (a missing label is its own "<missing>" one), so the
    # share that counts excluded runs as failures counts all of them
    all_cell, _ = _factorize(df.fillna({c: "<missing>" for c in cell_columns}), cell_columns)
    all_seed = _codes(df[seed_column]) if has_seed else None
    n_cells = int(np.unique(all_cell[keep]).size)
    if n_cells < 4:
        raise NotEnoughPoints(4, n_cells, f"cells ({' x '.join(cell_columns)}) with usable runs for H1")
    targets = tuple(float(t) for t in target_shares)

    def share(mask, values):
        return cluster_share(
            values[mask], all_cell[mask], all_seed[mask] if has_seed else None, confidence=confidence, targets=targets
        )

    overall = share(keep, succ)
    as_fail = share(np.ones(len(df), dtype=bool), np.where(keep, succ, 0.0))
    by: dict[str, Share] = {}
    skipped: list[tuple[str, str]] = []
    variants = df[variant_column].fillna("<missing>").astype(str).to_numpy()
    for v in sorted(set(variants[labels_ok])):
        m = keep & (variants == v)
        if not m.any():
            n_v = int((variants == v).sum())
            skipped.append((v, f"no usable run ({n_v} excluded or undecided)"))
            continue
        g = int(np.unique(all_cell[m]).size)
        if g < 2:
            skipped.append((v, "1 cell with usable runs: no cluster-aware interval"))
            continue
        by[v] = share(m, succ)
    return H1Result(
        overall=overall,
        verdicts=overall.verdicts,
        with_excluded_as_failures=as_fail,
        by_variant=MappingProxyType(by),
        column=column,
        threshold=None if threshold is None else float(threshold),
        confidence=confidence,
        target_shares=targets,
        excluded=tuple(excluded),
        skipped_variants=tuple(skipped),
        seed_column=seed_column if has_seed else None,
    )


# ====================================================================== H2
@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation with p-values and intervals.

    Attributes
    ----------
    n : int
        Runs (or cells, for a cell-mean correlation) the estimate is computed on.
    pearson_r, pearson_p : float
    pearson_ci : tuple of float
        (low, high).
    spearman_rho, spearman_p : float
    spearman_ci : tuple of float
        (low, high).
    n_cells : int or None
        Cells behind the estimate; None for run-level resampling (:func:`correlation`).
    n_skipped_cells : int
        Cells left out (within-cell: a single usable seed, or all its runs tie in
        x or in y).
    method : str
        How the interval and p-value were obtained.
    """

    n: int
    pearson_r: float
    pearson_p: float
    pearson_ci: tuple[float, float]
    spearman_rho: float
    spearman_p: float
    spearman_ci: tuple[float, float]
    n_cells: int | None = None
    n_skipped_cells: int = 0
    method: str = "percentile bootstrap over runs"

    def to_dict(self) -> dict:
        """Flat, JSON-ready: the intervals as ``*_ci_low`` / ``*_ci_high``; NaN -> None."""
        return _json(
            {
                "n": self.n,
                "n_cells": self.n_cells,
                "n_skipped_cells": self.n_skipped_cells,
                "pearson_r": self.pearson_r,
                "pearson_p": self.pearson_p,
                "pearson_ci_low": self.pearson_ci[0],
                "pearson_ci_high": self.pearson_ci[1],
                "spearman_rho": self.spearman_rho,
                "spearman_p": self.spearman_p,
                "spearman_ci_low": self.spearman_ci[0],
                "spearman_ci_high": self.spearman_ci[1],
                "method": self.method,
            }
        )


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, axis=1) / den


def correlation(x, y, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Correlation:
    """Pearson/Spearman correlation of *independent* paired samples with bootstrap CIs.

    Resamples runs, so it is valid only when runs are independent; for the study
    use :func:`h2_statistics`, whose intervals resample cells and seeds.

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Finite values, n >= 4.
    n_boot : int
        Bootstrap resamples.
    confidence : float
    seed : int

    Raises
    ------
    NotEnoughPoints
        If fewer than 4 pairs, or either variable is constant.
    NonFiniteValues
        If a pair holds a NaN or an infinite value.
    ValueError
        If ``x`` and ``y`` differ in length.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    if n < 4:
        raise NotEnoughPoints(4, n, "runs for a correlation")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} and {y.size})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        bad = int(np.sum(~np.isfinite(x) | ~np.isfinite(y)))
        raise NonFiniteValues(f"{bad} pair(s) with a NaN or infinite value; drop them first")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise NotEnoughPoints(2, 1, "distinct values (a variable is constant)")
    pr = sps.pearsonr(x, y)
    sr = sps.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    bx, by = x[idx], y[idx]
    r_b = _rowwise_corr(bx, by)
    rho_b = _rowwise_corr(sps.rankdata(bx, axis=1), sps.rankdata(by, axis=1))
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2

    def pct(v):
        v = v[np.isfinite(v)]  # resamples with a constant variable have no correlation
        return float(np.quantile(v, lo_q)), float(np.quantile(v, hi_q))

    return Correlation(
        n=n,
        pearson_r=float(pr.statistic),
        pearson_p=float(pr.pvalue),
        pearson_ci=pct(r_b),
        spearman_rho=float(sr.statistic),
        spearman_p=float(sr.pvalue),
        spearman_ci=pct(rho_b),
    )


# ---------------------------------------------------------------- the cluster bootstrap engine
# Every statistic below is a function of per-run weights W, shape (B, n): row 0 is
# all ones (the estimate), rows 1.. are two-way ("pigeonhole") bootstrap resamples,
# W[b, i] = (times cell(i) was drawn) * (times seed(i) was drawn).  A run drawn w
# times counts as w tied copies, so a statistic of the resample is a weighted
# statistic of the original rows and nothing is copied.


def _resample_weights(cell, n_cells, seed_codes, n_seeds, n_boot, rng):
    """Weights (B+1, n) and cell weights (B+1, G); row 0 is the original sample."""
    wc = rng.multinomial(n_cells, np.full(n_cells, 1.0 / n_cells), size=n_boot).astype(float)
    wc = np.vstack([np.ones((1, n_cells)), wc])
    W = wc[:, cell]
    if seed_codes is not None and n_seeds >= 2:
        ws = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(float)
        ws = np.vstack([np.ones((1, n_seeds)), ws])
        W = W * ws[:, seed_codes]
    return W, wc


def _snap(V: np.ndarray) -> np.ndarray:
    """Means, deviations and residuals rounded to 12 significant digits of the largest value
    before ranking: values equal in exact arithmetic (e.g. two cells' deviations of ±0.05)
    differ in the last bits after the subtraction, and must tie (mid-ranks), not be ordered
    by rounding. Real differences are far above that."""
    scale = float(np.max(np.abs(V))) if V.size else 0.0
    if not np.isfinite(scale) or scale == 0.0:
        return V
    step = 10.0 ** (math.floor(math.log10(scale)) - 11)
    return np.round(V / step) * step


def _ranks(V: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted mid-ranks: a row of weight w is w tied copies; ties share their mid-rank.

    Parameters
    ----------
    V : ndarray, shape (n,) or (B, n)
        Values (+-inf allowed, no NaN).
    W : ndarray, shape (B, n)
        Non-negative weights.

    Returns
    -------
    ndarray, shape (B, n)
        Mid-rank of each row among the weighted copies (1-based); equal to
        ``scipy.stats.rankdata`` when the weights are all 1.
    """
    B, n = W.shape
    if V.ndim == 1:
        order = np.argsort(V, kind="stable")
        vs = V[order]
        new = np.empty(n, dtype=bool)
        new[0] = True
        new[1:] = vs[1:] != vs[:-1]
        grp = np.cumsum(new) - 1
        gw = np.add.reduceat(W[:, order], np.flatnonzero(new), axis=1)
        rg = np.cumsum(gw, axis=1) - gw + (gw + 1.0) / 2.0
        R = np.empty_like(W)
        R[:, order] = rg[:, grp]
        return R
    order = np.argsort(V, axis=1)
    ws = np.take_along_axis(W, order, axis=1)
    R = np.empty_like(W)
    vs = np.take_along_axis(V, order, axis=1)
    new = np.ones(vs.shape, dtype=bool)
    new[:, 1:] = vs[:, 1:] != vs[:, :-1]
    grp = np.cumsum(new, axis=1) - 1
    flat = (grp + (np.arange(B) * n)[:, None]).ravel()
    gw = np.bincount(flat, weights=ws.ravel(), minlength=B * n).reshape(B, n)
    rg = np.cumsum(gw, axis=1) - gw + (gw + 1.0) / 2.0
    np.put_along_axis(R, order, np.take_along_axis(rg, grp, axis=1), axis=1)
    return R


def _varies_within(v: np.ndarray, cell: np.ndarray, G: int) -> np.ndarray:
    """Per cell (G,): whether its values of ``v`` are not all equal."""
    lo, hi = np.full(G, np.inf), np.full(G, -np.inf)
    np.minimum.at(lo, cell, v)
    np.maximum.at(hi, cell, v)
    return hi > lo


#: why a cell adds nothing to the within-cell correlations (:func:`_within_cell_skips`)
SKIP_SINGLE_SEED = "single usable seed"


def _within_cell_skips(
    x: np.ndarray, y: np.ndarray, cell: np.ndarray, G: int, x_name: str, y_name: str
) -> dict[int, str]:
    """Cells (codes) with no within-cell deviation to correlate, each with why.

    The one usability test of the within-cell parts: a cell is skipped when it has
    a single usable run (``SKIP_SINGLE_SEED``), or all its runs tie in ``x``
    ("all runs tie in <x_name>") or in ``y`` ("all runs tie in <y_name>"), the
    first of these that applies.
    """
    counts = np.bincount(cell, minlength=G)
    vx, vy = _varies_within(x, cell, G), _varies_within(y, cell, G)
    out: dict[int, str] = {}
    for c in range(G):
        if counts[c] < 2:
            out[c] = SKIP_SINGLE_SEED
        elif not vx[c]:
            out[c] = f"all runs tie in {x_name}"
        elif not vy[c]:
            out[c] = f"all runs tie in {y_name}"
    return out


def _wcorr(X: np.ndarray, Y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation per row; X, Y broadcast to W's shape (B, n)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = W.sum(axis=1, keepdims=True)
        dx = X - (W * X).sum(axis=1, keepdims=True) / sw
        dy = Y - (W * Y).sum(axis=1, keepdims=True) / sw
        return (W * dx * dy).sum(axis=1) / np.sqrt((W * dx * dx).sum(axis=1) * (W * dy * dy).sum(axis=1))


def _cell_means(X: np.ndarray, W: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted cell means (B, G) of X (n,) or (B, n) and the cell weights (B, G)."""
    cw = W @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((W * X) @ onehot) / cw, cw


def _wls_projector(W: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Per-row weighted least-squares solver, shape (B, p, p): pinv(X' diag(w_b) X)."""
    n, p = design.shape
    outer = (design[:, :, None] * design[:, None, :]).reshape(n, p * p)
    A = (W @ outer).reshape(W.shape[0], p, p)
    return np.linalg.pinv(A, hermitian=True)


def _wresid(V: np.ndarray, W: np.ndarray, design: np.ndarray, solver: np.ndarray) -> np.ndarray:
    """Residuals (B, n) of the weighted least-squares fit of V (B, n) on design (n, p), per row."""
    beta = np.einsum("bij,bj->bi", solver, (W * V) @ design)
    return V - beta @ design.T


_CLIP = 1.0 - 1e-9


#: the interquartile range of a normal distribution in standard deviations
_IQR_PER_SD = 2.0 * float(sps.norm.ppf(0.75))


def _fisher_interval(
    est: float, boot: np.ndarray, q: float, df: int, *, confidence: float = 0.95
) -> tuple[tuple[float, float], float]:
    """Interval tanh(atanh(est) +- q * se) with se the bootstrap spread of atanh(r*); Wald p for rho = 0.

    ``se`` is the s.d. of atanh(r*), unless some resamples reach |r*| = 1 (a resample that drew
    few distinct cells can rank them perfectly): atanh is infinite there, and the s.d. of the
    clipped values would be set by the clip, not by the data. ``se`` is then the
    normal-consistent interquartile range of atanh(r*), IQR / 1.349, which the few infinite
    values do not move (and which grows large, making the interval wide, when they are many).
    Resamples without any spread (every resample of a perfect rank order of the ``df + 1``
    cells is perfect) leave only the order itself: ``p`` is then the chance ``2 / (df + 1)!``
    that exchangeable cells fall in a perfect order, and the interval is the point when that
    chance is below ``1 - confidence``, else undecided (NaN), as is any other spread-free case.
    """
    if not np.isfinite(est):
        return (math.nan, math.nan), math.nan
    b = boot[np.isfinite(boot)]
    if b.size < 10:
        return (math.nan, math.nan), math.nan
    zb = np.arctanh(np.clip(b, -_CLIP, _CLIP))
    z0 = math.atanh(max(-_CLIP, min(_CLIP, est)))
    se = float(np.std(zb, ddof=1))
    if np.any(np.abs(b) >= _CLIP):
        q25, q75 = np.percentile(zb, [25.0, 75.0])
        # 0 when most resamples sit at |r*| = 1: the clipped s.d., wide, is then the honest spread
        se = float(q75 - q25) / _IQR_PER_SD or se
    if not se > 1e-9:  # 0 up to rounding: the bootstrap has no spread to measure
        if abs(est) < _CLIP:
            return (math.nan, math.nan), math.nan
        p = min(1.0, math.exp(math.log(2.0) - math.lgamma(df + 2)))  # 2 / (df + 1)!, also past 170!
        return ((est, est) if p < 1.0 - confidence else (math.nan, math.nan)), p
    p = float(2.0 * sps.t.sf(abs(z0) / se, df))
    return (math.tanh(z0 - q * se), math.tanh(z0 + q * se)), p


def _plain_interval(
    est: float, boot: np.ndarray, q: float, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float]:
    """Interval est +- q * (bootstrap s.d.) for a statistic that is not a correlation,
    clipped to the statistic's ``bounds``."""
    b = boot[np.isfinite(boot)]
    if not np.isfinite(est) or b.size < 10:
        return (math.nan, math.nan)
    se = float(np.std(b, ddof=1))
    return (max(est - q * se, bounds[0]), min(est + q * se, bounds[1]))


def _nan_corr(n: int, n_cells: int, method: str, n_skipped: int = 0) -> Correlation:
    nan2 = (math.nan, math.nan)
    return Correlation(n, math.nan, math.nan, nan2, math.nan, math.nan, nan2, n_cells, n_skipped, method)


@dataclass(frozen=True)
class LevelComparison:
    """Does α_early add anything over the loss level it is measured on?

    Attributes
    ----------
    difference : float
        ``|rho(x, y)| - |rho(level, y)|`` (Spearman), on the runs with a finite level.
    difference_ci : tuple of float
        (low, high), paired cluster bootstrap (the same resamples for both ρ).
        Above 0: the slope ranks best CE better than the level does.
    rho_x, rho_level : float
        The two Spearman correlations with the best CE.
    rho_x_ci, rho_level_ci : tuple of float
    n, n_cells : int
    level_column : str
    """

    difference: float
    difference_ci: tuple[float, float]
    rho_x: float
    rho_x_ci: tuple[float, float]
    rho_level: float
    rho_level_ci: tuple[float, float]
    n: int
    n_cells: int
    level_column: str

    def to_dict(self) -> dict:
        """JSON-ready; intervals as ``[low, high]``."""
        return _json(
            {
                "difference": self.difference,
                "difference_ci": list(self.difference_ci),
                "rho_x": self.rho_x,
                "rho_x_ci": list(self.rho_x_ci),
                "rho_level": self.rho_level,
                "rho_level_ci": list(self.rho_level_ci),
                "n": self.n,
                "n_cells": self.n_cells,
                "level_column": self.level_column,
            }
        )


@dataclass(frozen=True)
class LocoPrediction:
    """Leave-one-cell-out prediction error of the best CE.

    Every cell is held out in turn; each model is fitted by least squares on the
    runs of the other cells and predicts the held-out cell's runs.

    Attributes
    ----------
    rmse : Mapping[str, float]
        Root-mean-square prediction error, in the units of the CE column, per
        model: ``"mean"`` (intercept only), ``"alpha"`` (linear in α_early),
        ``"level"`` (linear in the early-end loss), ``"labels"`` (additive
        categorical model of the cell columns, e.g. variant + LR + WD),
        ``"labels+alpha"``, ``"labels+level"``, ``"alpha+level"``.  Models needing the
        level are absent when the table has no level column.
    n, n_cells : int
        Runs and cells predicted (runs with a finite level when it is used).
    sd : float
        Standard deviation of the CE over those runs (the "mean" model's scale).
    """

    rmse: Mapping[str, float]
    n: int
    n_cells: int
    sd: float

    def to_dict(self) -> dict:
        return _json({"rmse": dict(self.rmse), "n": self.n, "n_cells": self.n_cells, "sd": self.sd})


@dataclass(frozen=True)
class VariantH2:
    """H2 within one variant (its own cells and resamples).

    Attributes
    ----------
    overall, cell_means, within_cell : Correlation
    verdict : str
    n_runs, n_cells : int
    note : str
    """

    overall: Correlation
    cell_means: Correlation
    within_cell: Correlation
    verdict: str
    n_runs: int
    n_cells: int
    note: str

    def to_dict(self) -> dict:
        return _json(
            {
                "overall": self.overall.to_dict(),
                "cell_means": self.cell_means.to_dict(),
                "within_cell": self.within_cell.to_dict(),
                "verdict": self.verdict,
                "n_runs": self.n_runs,
                "n_cells": self.n_cells,
                "note": self.note,
            }
        )


@dataclass(frozen=True)
class H2Result:
    """H2: does the early slope predict the best validation CE, beyond the design?

    Attributes
    ----------
    overall : Correlation
        Pooled over runs; interval and p-value from the two-way cluster bootstrap.
    cell_means : Correlation
        Over the cell means (n = cells).
    within_cell : Correlation
        Deviations of each run from its cell mean (cells with one usable seed, or
        whose runs all tie in x or in y, skipped: counted in ``n_skipped_cells``,
        listed in ``skipped_cells``).
    partial : Correlation
        Partial rank correlation given the cell columns as additive categorical
        factors (Spearman fields; the Pearson fields are the partial Pearson).
    within_cell_seed_adjusted : Correlation or None
        Residuals of the additive cell + seed fit (each run's deviation from its
        cell mean net of its seed's effect shared across cells); None without a
        seed column.  Reported beside ``within_cell``: the seed part of a
        within-cell deviation rests on only ``n_seeds`` independent draws.
    versus_level : LevelComparison or None
        None when the table has no level column.
    verdict : str
        "supported", "not supported" or "inconclusive" (see :func:`h2_statistics`).
    prediction : LocoPrediction or None
        None in the diverged-at-worst-rank analysis (CE values of diverged runs do
        not exist).
    by_variant : Mapping[str, VariantH2]
    n_runs, n_cells : int
    excluded : tuple of (run, reason)
    skipped_cells : tuple of (cell, reason)
        Cells left out of the within-cell correlation, one per ``within_cell.n_skipped_cells``:
        "single usable seed", "all runs tie in <x column>" or "all runs tie in <y column>".
    skipped_variants : tuple of (variant, reason)
        Every variant of the table without a ``by_variant`` entry: no usable run,
        fewer than 4 cells, or a constant variable.
    diverged_at_worst_rank : tuple of str
        Runs included at the worst CE rank (diverged-run analysis only).
    settings : Mapping[str, object]
        Threshold, sign, max p, confidence, resamples and the method.
    notes : tuple of str
    """

    overall: Correlation
    cell_means: Correlation
    within_cell: Correlation
    partial: Correlation
    versus_level: LevelComparison | None
    verdict: str
    prediction: LocoPrediction | None
    by_variant: Mapping[str, VariantH2]
    n_runs: int
    n_cells: int
    excluded: tuple[tuple[str, str], ...]
    skipped_cells: tuple[tuple[str, str], ...]
    skipped_variants: tuple[tuple[str, str], ...]
    diverged_at_worst_rank: tuple[str, ...]
    settings: Mapping[str, object]
    notes: tuple[str, ...]
    within_cell_seed_adjusted: Correlation | None = None

    def to_dict(self) -> dict:
        """Strictly JSON-serialisable nested dict (NaN -> None).

        Correlations are flat dicts with ``*_ci_low`` / ``*_ci_high``; the level
        comparison's intervals are ``[low, high]`` lists.
        """
        return _json(
            {
                "verdict": self.verdict,
                "n_runs": self.n_runs,
                "n_cells": self.n_cells,
                "overall": self.overall.to_dict(),
                "cell_means": self.cell_means.to_dict(),
                "within_cell": self.within_cell.to_dict(),
                "partial": self.partial.to_dict(),
                "within_cell_seed_adjusted": (
                    None if self.within_cell_seed_adjusted is None else self.within_cell_seed_adjusted.to_dict()
                ),
                "versus_level": None if self.versus_level is None else self.versus_level.to_dict(),
                "prediction": None if self.prediction is None else self.prediction.to_dict(),
                "by_variant": {v: r.to_dict() for v, r in self.by_variant.items()},
                "excluded": [{"run": r, "reason": why} for r, why in self.excluded],
                "skipped_cells": [{"cell": c, "reason": why} for c, why in self.skipped_cells],
                "skipped_variants": [{"variant": v, "reason": why} for v, why in self.skipped_variants],
                "diverged_at_worst_rank": list(self.diverged_at_worst_rank),
                "settings": dict(self.settings),
                "notes": list(self.notes),
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per correlation (overall, cell means, within cell, partial, per variant)."""
        rows = [
            ("overall", self.overall),
            ("cell_means", self.cell_means),
            ("within_cell", self.within_cell),
            ("partial", self.partial),
        ]
        for v, r in self.by_variant.items():
            rows += [(f"variant={v}", r.overall), (f"variant={v} within_cell", r.within_cell)]
        return pd.DataFrame([{"group": g, **c.to_dict()} for g, c in rows])


_SIGNS = ("negative", "positive", "either")


def rho_beyond(lo, hi, min_abs_rho: float, sign: str):
    """Whether all of ``[lo, hi]`` lies at the configured strength in the configured
    direction (``sign``: negative, positive or either); ``lo = hi`` asks it of a point,
    and the ends swapped (``hi, lo``) ask whether any of the interval reaches it.
    Elementwise on arrays."""
    lo, hi, t = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float), min_abs_rho
    if sign == "negative":
        out = hi <= -t
    elif sign == "positive":
        out = lo >= t
    else:
        out = (lo >= t) | (hi <= -t)
    return out if out.ndim else bool(out)


def verdict_rho(ci: tuple[float, float], p: float, min_abs_rho: float, max_p: float, sign: str) -> str:
    lo, hi = ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    if rho_beyond(lo, hi, min_abs_rho, sign) and np.isfinite(p) and p < max_p:
        return "supported"
    if not rho_beyond(hi, lo, min_abs_rho, sign):  # no part of the interval reaches the threshold
        return "not supported"
    return "inconclusive"


def _dummies(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Intercept + treatment-coded dummies of the categorical columns, shape (n, p)."""
    parts = [np.ones((len(df), 1))]
    for col in columns:
        codes, uniq = pd.factorize(df[col].astype(str), sort=True)
        if len(uniq) > 1:
            parts.append((codes[:, None] == np.arange(1, len(uniq))[None, :]).astype(float))
    return np.hstack(parts)


@dataclass(frozen=True)
class _Core:
    overall: Correlation
    cell_means: Correlation
    within_cell: Correlation
    partial: Correlation | None
    versus_level: LevelComparison | None
    #: cell code -> why it is left out of the within-cell parts (:func:`_within_cell_skips`)
    skipped: Mapping[int, str]
    within_seed: Correlation | None = None


def _two_way_resid(x: np.ndarray, W: np.ndarray, cell_onehot: np.ndarray, seed_onehot: np.ndarray) -> np.ndarray:
    """Residuals (B, n) of the weighted additive fit x ~ cell + seed, by backfitting.

    With complete cells x seeds and product weights one pass is exact; missing
    runs need more passes (the loop stops when the update is below 1e-12).
    """
    r = np.broadcast_to(x, W.shape) - 0.0
    cw, sw = W @ cell_onehot, W @ seed_onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(50):
            cm = np.nan_to_num(((W * r) @ cell_onehot) / cw)
            r = r - cm @ cell_onehot.T
            sm = np.nan_to_num(((W * r) @ seed_onehot) / sw)
            r = r - sm @ seed_onehot.T
            if np.max(np.abs(cm)) < 1e-12 and np.max(np.abs(sm)) < 1e-12:
                break
    return np.where(W > 0, r, 0.0)


def correlation_core(
    x: np.ndarray,
    y: np.ndarray,
    level: np.ndarray | None,
    cell: np.ndarray,
    seed_codes: np.ndarray | None,
    design: np.ndarray | None,
    *,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
    level_column: str,
    x_name: str = "x",
    y_name: str = "y",
) -> _Core:
    """All correlations of one table (or one variant) from one set of resamples.

    ``x_name`` and ``y_name`` name the variables in the reasons of the skipped cells.
    """
    n = x.size
    G = int(cell.max()) + 1
    S = int(seed_codes.max()) + 1 if seed_codes is not None else 0
    W, wc = _resample_weights(cell, G, seed_codes, S, n_boot, rng)
    onehot = (cell[:, None] == np.arange(G)[None, :]).astype(float)

    def t_quantile(cells: int) -> tuple[int, float]:
        # few clusters: t on (contributing cells - 1) degrees of freedom, whatever the table's size
        df = max(int(cells) - 1, 1)
        return df, float(sps.t.ppf(0.5 + confidence / 2, df))

    def describe(cells: int) -> str:
        df = t_quantile(cells)[0]
        return (
            f"two-way cluster bootstrap ({G} cells x {S} shared seeds, {n_boot} resamples), "
            f"Fisher-z interval with bootstrap s.e. and t({df}) quantile; Wald p for rho = 0"
            if S >= 2
            else f"cluster bootstrap ({G} cells, {n_boot} resamples), Fisher-z interval with bootstrap s.e. "
            f"and t({df}) quantile; Wald p for rho = 0"
        )

    method = describe(G)

    def make(n_, g_, r_p, r_s, skipped=0):
        df, q = t_quantile(g_)
        ci_p, p_p = _fisher_interval(float(r_p[0]), r_p[1:], q, df, confidence=confidence)
        ci_s, p_s = _fisher_interval(float(r_s[0]), r_s[1:], q, df, confidence=confidence)
        return Correlation(
            n=int(n_),
            pearson_r=float(r_p[0]),
            pearson_p=p_p,
            pearson_ci=ci_p,
            spearman_rho=float(r_s[0]),
            spearman_p=p_s,
            spearman_ci=ci_s,
            n_cells=int(g_),
            n_skipped_cells=int(skipped),
            method=describe(g_),
        )

    # pooled
    Rx, Ry = _ranks(x, W), _ranks(y, W)
    overall = make(n, G, _wcorr(x, y, W), _wcorr(Rx, Ry, W))

    # cell means (cells weighted by how often they were drawn)
    mx, cw = _cell_means(x, W, onehot)
    my, _ = _cell_means(y, W, onehot)
    wcell = np.where(cw > 0, wc, 0.0)
    mx, my = np.where(cw > 0, mx, 0.0), np.where(cw > 0, my, 0.0)
    cell_means = make(G, G, _wcorr(mx, my, wcell), _wcorr(_ranks(_snap(mx), wcell), _ranks(_snap(my), wcell), wcell))

    # within cell: cells whose runs differ in x and in y (a cell whose runs all tie, e.g. all at the
    # worst CE rank, has no within-cell deviation to correlate), with >= 2 distinct runs drawn
    skipped = _within_cell_skips(x, y, cell, G, x_name, y_name)
    usable = np.ones(G, dtype=bool)
    usable[list(skipped)] = False
    n_skipped = len(skipped)
    present = ((W > 0) @ onehot) >= 2
    Ww = W * present[:, cell] * usable[cell][None, :]
    if n - int(np.sum(~usable[cell])) >= 4 and int(usable.sum()) >= 2:
        ax, _ = _cell_means(x, Ww, onehot)
        ay, _ = _cell_means(y, Ww, onehot)
        dx = np.where(Ww > 0, x[None, :] - np.nan_to_num(ax)[:, cell], 0.0)
        dy = np.where(Ww > 0, y[None, :] - np.nan_to_num(ay)[:, cell], 0.0)
        within = make(
            int(np.sum(usable[cell])),
            int(usable.sum()),
            _wcorr(dx, dy, Ww),
            _wcorr(_ranks(_snap(dx), Ww), _ranks(_snap(dy), Ww), Ww),
            n_skipped,
        )
    else:
        within = _nan_corr(int(np.sum(usable[cell])), int(usable.sum()), method, n_skipped)

    # within cell and net of the seed main effect (seeds are shared across cells)
    within_seed = None
    if seed_codes is not None and S >= 2 and n - int(np.sum(~usable[cell])) >= 4 and int(usable.sum()) >= 2:
        sh = (seed_codes[:, None] == np.arange(S)[None, :]).astype(float)
        rx2, ry2 = _two_way_resid(x, Ww, onehot, sh), _two_way_resid(y, Ww, onehot, sh)
        within_seed = make(
            int(np.sum(usable[cell])),
            int(usable.sum()),
            _wcorr(rx2, ry2, Ww),
            _wcorr(_ranks(_snap(rx2), Ww), _ranks(_snap(ry2), Ww), Ww),
            n_skipped,
        )

    # partial correlation given the cell columns as additive factors
    partial = None
    if design is not None:
        solver = _wls_projector(W, design)
        ex, ey = _wresid(Rx, W, design, solver), _wresid(Ry, W, design, solver)
        px, py = (
            _wresid(np.broadcast_to(x, W.shape), W, design, solver),
            _wresid(np.broadcast_to(y, W.shape), W, design, solver),
        )
        partial = make(n, G, _wcorr(px, py, W), _wcorr(ex, ey, W))

    # slope versus level, paired on the same resamples
    vl = None
    if level is not None:
        ok = ~np.isnan(level)
        if ok.sum() >= 4 and np.unique(cell[ok]).size >= 2:
            Wl = W * ok[None, :]
            lv = np.where(ok, level, 0.0)
            if ok.all():
                Rxl, Ryl = Rx, Ry
            else:
                Rxl, Ryl = _ranks(x, Wl), _ranks(y, Wl)
            rx = _wcorr(Rxl, Ryl, Wl)
            rl = _wcorr(_ranks(lv, Wl), Ryl, Wl)
            diff = np.abs(rx) - np.abs(rl)
            df, q = t_quantile(np.unique(cell[ok]).size)
            vl = LevelComparison(
                difference=float(diff[0]),
                difference_ci=_plain_interval(float(diff[0]), diff[1:], q, bounds=(-1.0, 1.0)),
                rho_x=float(rx[0]),
                rho_x_ci=_fisher_interval(float(rx[0]), rx[1:], q, df, confidence=confidence)[0],
                rho_level=float(rl[0]),
                rho_level_ci=_fisher_interval(float(rl[0]), rl[1:], q, df, confidence=confidence)[0],
                n=int(ok.sum()),
                n_cells=int(np.unique(cell[ok]).size),
                level_column=level_column,
            )
    return _Core(overall, cell_means, within, partial, vl, MappingProxyType(skipped), within_seed)


def _loco(df: pd.DataFrame, x, y, level, cell, cell_columns) -> LocoPrediction | None:
    """Leave-one-cell-out RMSE of each model. All models are fitted on the same runs, so their
    RMSEs compare: the runs with a level when at least 4 have one (and the level models are
    included), else every run without the level models."""
    if level is not None and np.isfinite(level).sum() < 4:
        level = None
    ok = np.ones(y.size, dtype=bool) if level is None else np.isfinite(level)
    if ok.sum() < 4:
        return None
    sub = df[ok].reset_index(drop=True)
    xs, ys, cs = x[ok], y[ok], cell[ok]
    labels = _dummies(sub, cell_columns)
    one = np.ones((ys.size, 1))
    models = {
        "mean": one,
        "alpha": np.column_stack([one, xs]),
        "labels": labels,
        "labels+alpha": np.column_stack([labels, xs]),
    }
    if level is not None:
        ls = level[ok]
        models.update(
            {
                "level": np.column_stack([one, ls]),
                "labels+level": np.column_stack([labels, ls]),
                "alpha+level": np.column_stack([one, xs, ls]),
            }
        )
    cells = np.unique(cs)
    if cells.size < 2:
        return None
    rmse = {}
    for name, X in models.items():
        err = np.empty(ys.size)
        for c in cells:
            te = cs == c
            beta = np.linalg.lstsq(X[~te], ys[~te], rcond=None)[0]
            err[te] = ys[te] - X[te] @ beta
        rmse[name] = float(np.sqrt(np.mean(err**2)))
    return LocoPrediction(rmse=MappingProxyType(rmse), n=int(ys.size), n_cells=int(cells.size), sd=float(np.std(ys)))


def h2_statistics(
    table,
    *,
    x_column: str = "alpha_early",
    y_column: str = "best_val_ce",
    level_column: str | None = "early_end_loss",
    cell_columns: Sequence[str] = ("variant", "lr", "weight_decay"),
    seed_column: str | None = "seed",
    variant_column: str | None = "variant",
    run_column: str = "run",
    exclusion_column: str | None = "excluded_reason",
    min_abs_rho: float = 0.7,
    max_p: float = 0.01,
    sign: str = "negative",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    diverged_column: str | None = None,
) -> H2Result:
    """H2 with the study's design respected: pooled, cell-mean, within-cell and partial
    correlations, slope versus level, leave-one-cell-out prediction and a verdict.

    The 216 runs are cells (``cell_columns``: variant x LR x WD) x seeds, and one
    seed means the same init and data order in every cell.  The grid drives both
    α_early and the best CE, so runs are not independent units and a pooled
    correlation mostly measures the grid.  Hence:

    * **Intervals and p-values** come from a two-way ("pigeonhole") bootstrap that
      resamples whole cells and, independently, whole seeds (a run's weight is the
      product of its cell's and its seed's multiplicity); without ``seed_column``
      cells only.  Each correlation's interval is ``tanh(atanh(r) ± q·se)`` with
      ``se`` the bootstrap s.d. of ``atanh(r*)`` and ``q`` the t quantile on
      ``n_cells - 1`` degrees of freedom; the p-value is the matching Wald test of
      ρ = 0.  Spearman correlations of a resample use weighted mid-ranks, so they
      equal Spearman's ρ of the resampled table with its duplicated runs.
    * ``overall``: pooled over runs.  ``cell_means``: over the cell means.
      ``within_cell``: the deviations of each run from its cell mean (Spearman =
      rank correlation of the deviations); cells with a single usable seed, or
      whose runs all tie in x or in y, are skipped, counted and listed with the
      reason (``skipped_cells``).  ``within_cell_seed_adjusted``: the same after also
      removing each seed's effect shared across cells (additive cell + seed fit).
      ``partial``: the ranks of x and y over all runs,
      residualised on the cell columns as additive categorical factors, correlated
      (the Pearson fields: the same on the raw values).
    * ``versus_level``: ``|ρ(x, y)| - |ρ(level, y)|`` with a paired interval (the same
      resamples; ``diff ± q·se``).  Above 0: the slope ranks the CE better than the
      loss level it is measured on.
    * ``prediction``: leave-one-cell-out RMSE of the CE from α, the labels, the level
      and combinations (:class:`LocoPrediction`).
    * ``verdict`` from the pooled Spearman interval against ``min_abs_rho`` on the
      side fixed by ``sign``: "supported" when the whole interval lies beyond the
      threshold (``sign="negative"``: high <= -min_abs_rho, a larger α_early goes
      with a lower CE) and p < ``max_p``; "not supported" when the whole interval
      falls short of it (negative: low > -min_abs_rho); else "inconclusive".
      ``sign="either"`` accepts both sides.
    * ``by_variant``: the pooled, cell-mean and within-cell results within each
      variant with their own resamples.  With 9 cells per variant these intervals
      are wide.

    Diverged runs at the worst rank
    -------------------------------
    With ``diverged_column`` (boolean), runs flagged True are kept even though they
    carry an exclusion reason, when their α_early was measured: their CE is set to
    +inf (tied worst rank).  Only the outcome is imputed: a diverged run without
    α_early is excluded (any imputed α would sit where one side of H2 expects it,
    e.g. the flattest slope beside the worst CE manufactures a negative ρ), and a
    missing level stays missing (left out of the level parts).  All statistics are
    then computed on the ranks of x, y and level over the usable runs (the Pearson
    fields are rank correlations too), and ``prediction`` is None.
    See :func:`h2_statistics_diverged_worst_rank`.

    Parameters
    ----------
    table : DataFrame-like
        One row per run.
    x_column, y_column : str
        α_early (dimensionless) and best validation CE (nats or bits).
    level_column : str or None
        The loss level α_early is measured on (``early_end_loss``, nats); None or
        absent: no ``versus_level`` and no level models in ``prediction``.  Runs with
        a missing level are left out of those two parts only (``prediction`` fits
        every model on the runs with a level, so the RMSEs compare; with fewer than 4
        such runs it has no level models and uses every run).
    cell_columns : sequence of str
        The design's cells.
    seed_column : str or None
        The seed shared across cells (absent: cells-only resampling).
    variant_column : str or None
        Per-variant breakdown (None: none).
    run_column, exclusion_column : str
    min_abs_rho, max_p : float
        Thresholds of the verdict.
    sign : {"negative", "positive", "either"}
    confidence : float
    n_boot : int
        Bootstrap resamples.
    seed : int
        Random seed of the resampling.
    diverged_column : str, optional
        See above.

    Returns
    -------
    H2Result

    Raises
    ------
    AnalysisError
        A cell column (named in the message) or a needed column is missing, or
        ``sign`` is not one of the three.
    NotEnoughPoints
        Fewer than 4 cells with usable runs (the count is in the message).
    """
    if sign not in _SIGNS:
        raise AnalysisError(f"sign must be one of {', '.join(_SIGNS)}, got {sign!r}")
    df = pd.DataFrame(table).reset_index(drop=True)
    _check_cells(df, cell_columns, "H2")
    for col in (x_column, y_column):
        if col not in df.columns:
            raise AnalysisError(f"table lacks column {col!r}")
    if diverged_column is not None and diverged_column not in df.columns:
        raise AnalysisError(f"table lacks the diverged column {diverged_column!r}")
    runs = df[run_column].astype(str).tolist() if run_column in df.columns else [f"row{i}" for i in range(len(df))]
    x = pd.to_numeric(df[x_column], errors="coerce").to_numpy(dtype=float, copy=True)
    y = pd.to_numeric(df[y_column], errors="coerce").to_numpy(dtype=float, copy=True)
    has_level = level_column is not None and level_column in df.columns
    level = pd.to_numeric(df[level_column], errors="coerce").to_numpy(dtype=float, copy=True) if has_level else None
    reasons = df[exclusion_column].tolist() if exclusion_column and exclusion_column in df.columns else [None] * len(df)
    div = (
        df[diverged_column].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else v is True).to_numpy()
        if diverged_column is not None
        else np.zeros(len(df), dtype=bool)
    )
    labels_ok = ~df[list(cell_columns)].isna().any(axis=1).to_numpy()
    seed_ok = _seed_present(df, seed_column)
    keep = np.ones(len(df), dtype=bool)
    excluded: list[tuple[str, str]] = []
    worst: list[str] = []
    for i in range(len(df)):
        if not labels_ok[i]:
            why = "cell label missing"
        elif not seed_ok[i]:
            why = "seed missing"  # its bootstrap weight and its seed effect would be another seed's
        elif div[i] and not np.isfinite(x[i]):
            # no rank for the predictor: any imputed α would place the run where one side of H2 expects it
            why = f"diverged before {x_column} could be measured"
        elif div[i]:
            worst.append(runs[i])
            y[i] = math.inf  # a missing level stays missing (NaN below): left out of the level parts
            continue
        elif _is_reason(reasons[i]):
            why = reasons[i]
        elif not np.isfinite(x[i]):
            why = f"{x_column} missing or not finite"
        elif not np.isfinite(y[i]):
            why = f"{y_column} missing or not finite"
        else:
            continue
        keep[i] = False
        excluded.append((runs[i], why))
    sub = df[keep].reset_index(drop=True)
    x, y = x[keep], y[keep]
    if level is not None:
        level = level[keep]
        level = np.where(np.isfinite(level), level, np.nan)
    cell, cell_names = _factorize(sub, cell_columns)
    G = len(cell_names)
    if G < 4:
        raise NotEnoughPoints(4, G, f"cells ({' x '.join(cell_columns)}) with usable runs for H2")
    if diverged_column is not None:
        # rank scale: +-inf become tied extreme ranks, and deviations stay finite
        x, y = sps.rankdata(x), sps.rankdata(y)
        if level is not None:
            fin = ~np.isnan(level)
            lv = np.full(level.size, np.nan)
            lv[fin] = sps.rankdata(level[fin])
            level = lv
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise NotEnoughPoints(2, 1, f"distinct values of {x_column if np.ptp(x) == 0 else y_column}")
    has_seed = seed_column is not None and seed_column in sub.columns
    seed_codes = pd.factorize(sub[seed_column].astype(str), sort=True)[0].astype(np.intp) if has_seed else None
    rng = np.random.default_rng(seed)
    design = _dummies(sub, cell_columns)
    core = correlation_core(
        x,
        y,
        level,
        cell,
        seed_codes,
        design,
        n_boot=n_boot,
        confidence=confidence,
        rng=rng,
        level_column=str(level_column),
        x_name=x_column,
        y_name=y_column,
    )
    skipped_cells = tuple((cell_names[c], why) for c, why in sorted(core.skipped.items()))
    verdict = verdict_rho(core.overall.spearman_ci, core.overall.spearman_p, min_abs_rho, max_p, sign)
    notes = []
    if not has_seed:
        notes.append(
            "no seed column: resampling cells only (seed effects shared across cells are not in the intervals)"
        )
    if not has_level:
        notes.append(f"no level column {level_column!r}: no comparison with the loss level")

    by: dict[str, VariantH2] = {}
    skipped_v: list[tuple[str, str]] = []
    if variant_column is not None and variant_column in sub.columns:
        other = [c for c in cell_columns if c != variant_column]
        vals = sub[variant_column].astype(str).to_numpy()
        every = df[variant_column].fillna("<missing>").astype(str).to_numpy()
        for v in sorted(set(every[labels_ok])):
            m = vals == v
            if not m.any():
                skipped_v.append((v, f"no usable run ({int((every == v).sum())} excluded)"))
                continue
            vcell, vnames = _factorize(sub[m], cell_columns)
            if len(vnames) < 4:
                skipped_v.append((v, f"need at least 4 cells, got {len(vnames)}"))
                continue
            xv, yv = x[m], y[m]
            if np.ptp(xv) == 0 or np.ptp(yv) == 0:
                skipped_v.append((v, "a variable is constant"))
                continue
            vseed = seed_codes[m] if seed_codes is not None else None
            if vseed is not None:
                vseed = pd.factorize(vseed, sort=True)[0].astype(np.intp)
            vc = correlation_core(
                xv,
                yv,
                None,
                vcell,
                vseed,
                None,
                n_boot=n_boot,
                confidence=confidence,
                rng=rng,
                level_column=str(level_column),
                x_name=x_column,
                y_name=y_column,
            )
            by[v] = VariantH2(
                overall=vc.overall,
                cell_means=vc.cell_means,
                within_cell=vc.within_cell,
                verdict=verdict_rho(vc.overall.spearman_ci, vc.overall.spearman_p, min_abs_rho, max_p, sign),
                n_runs=int(m.sum()),
                n_cells=len(vnames),
                note=f"{len(vnames)} cells ({' x '.join(other) or 'cells'}): intervals are wide; "
                "read them as descriptive",
            )
    prediction = None if diverged_column is not None else _loco(sub, x, y, level, cell, cell_columns)
    settings = {
        "x_column": x_column,
        "y_column": y_column,
        "level_column": level_column if has_level else None,
        "cell_columns": list(cell_columns),
        "seed_column": seed_column if has_seed else None,
        "min_abs_rho": min_abs_rho,
        "max_p": max_p,
        "sign": sign,
        "confidence": confidence,
        "n_boot": n_boot,
        "seed": seed,
        "diverged_column": diverged_column,
        "method": core.overall.method,
    }
    return H2Result(
        overall=core.overall,
        cell_means=core.cell_means,
        within_cell=core.within_cell,
        partial=core.partial,
        versus_level=core.versus_level,
        verdict=verdict,
        prediction=prediction,
        by_variant=MappingProxyType(by),
        n_runs=int(x.size),
        n_cells=G,
        excluded=tuple(excluded),
        skipped_cells=skipped_cells,
        skipped_variants=tuple(skipped_v),
        diverged_at_worst_rank=tuple(worst),
        settings=MappingProxyType(settings),
        notes=tuple(notes),
        within_cell_seed_adjusted=core.within_seed,
    )


def h2_statistics_diverged_worst_rank(table, *, diverged_column: str = "diverged", **kwargs) -> H2Result:
    """:func:`h2_statistics` with diverged runs kept at the worst CE rank.

    Runs whose ``diverged_column`` is True and that have an α_early get the worst
    (tied) CE rank; those without one are excluded; everything else as in
    :func:`h2_statistics`.
    """
    return h2_statistics(table, diverged_column=diverged_column, **kwargs)


@dataclass(frozen=True, eq=False)
class WindowHeatmap:
    """Spearman ρ between α over each window and the best validation CE.

    Attributes
    ----------
    starts, ends : ndarray, shape (a,), (b,)
        Window bounds, epochs.
    rho, p_value : ndarray, shape (a, b)
        NaN where ``n_valid < 4`` (see ``n_valid``).
    n_valid : ndarray of int, shape (a, b)
        Runs with a finite α in that window.
    """

    starts: np.ndarray
    ends: np.ndarray
    rho: np.ndarray
    p_value: np.ndarray
    n_valid: np.ndarray


def h2_window_heatmap(alphas, best_val_ce, *, starts, ends) -> WindowHeatmap:
    """Window heat-map of Spearman ρ(α_window, best validation CE).

    Parameters
    ----------
    alphas : array_like, shape (n_runs, a, b)
        α per run and window, e.g. stacked :attr:`WindowScan.alpha` grids (NaN
        where a run's window was invalid).
    best_val_ce : array_like, shape (n_runs,)
    starts, ends : array_like, shape (a,), (b,)
        Window bounds (epochs) matching the grid.

    Returns
    -------
    WindowHeatmap
    """
    A = np.asarray(alphas, dtype=float)
    y = np.asarray(best_val_ce, dtype=float)
    if A.ndim != 3 or A.shape[0] != y.size:
        raise AnalysisError("alphas must have shape (n_runs, a, b) matching best_val_ce")
    a, b = A.shape[1:]
    rho = np.full((a, b), np.nan)
    pv = np.full((a, b), np.nan)
    nv = np.zeros((a, b), dtype=int)
    yok = np.isfinite(y)
    for i in range(a):
        for j in range(b):
            ok = yok & np.isfinite(A[:, i, j])
            nv[i, j] = int(ok.sum())
            if nv[i, j] >= 4 and np.ptp(A[ok, i, j]) > 0 and np.ptp(y[ok]) > 0:
                r = sps.spearmanr(A[ok, i, j], y[ok])
                rho[i, j], pv[i, j] = float(r.statistic), float(r.pvalue)
    return WindowHeatmap(
        starts=np.asarray(starts, dtype=float), ends=np.asarray(ends, dtype=float), rho=rho, p_value=pv, n_valid=nv
    )
