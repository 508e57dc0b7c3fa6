"""Study statistics: H1 (share of straight log-log curves) and H2 (early slope vs
best validation CE), with run screening that records why a run is excluded.

Tables are pandas DataFrames (or anything ``pandas.DataFrame`` accepts) with one
row per run.  A run is excluded -- and listed with its reason in the result --
when its ``exclusion_column`` holds a reason (e.g. from :func:`screen_curve`) or
when a value the statistic needs is missing or not finite.  Nothing is dropped
silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ._data import z_value
from .exceptions import AnalysisError, NotEnoughPoints

__all__ = [
    "Screening",
    "screen_curve",
    "wilson_interval",
    "Share",
    "H1Result",
    "h1_statistics",
    "Correlation",
    "H2Result",
    "h2_statistics",
    "WindowHeatmap",
    "h2_window_heatmap",
]


# ====================================================================== screening
@dataclass(frozen=True)
class Screening:
    """Whether a run's curve is usable.

    Attributes
    ----------
    ok : bool
    reason : str or None
        Why it is not (``None`` when ok).
    """

    ok: bool
    reason: str | None


def screen_curve(
    steps, loss, *, explode_factor: float = 1.0, spike_factor: float = 100.0, edge_fraction: float = 0.02
) -> Screening:
    """Detect diverged runs.

    A run is rejected when its loss has NaN/inf values, is not > 0, when the median
    loss of the last ``edge_fraction`` of the steps exceeds ``explode_factor`` x the
    median of the first ``edge_fraction`` (the loss ended above where it started),
    or when any loss exceeds ``spike_factor`` x that initial median.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
    explode_factor, spike_factor, edge_fraction : float

    Returns
    -------
    Screening
    """
    s = np.asarray(steps, dtype=float)
    l_ = np.asarray(loss, dtype=float)
    if s.shape != l_.shape or s.size == 0:
        return Screening(False, "empty or mismatched steps/loss")
    bad = ~np.isfinite(l_)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        return Screening(False, f"diverged: {int(bad.sum())} non-finite loss values from step {s[first]:g}")
    if np.any(l_ <= 0):
        return Screening(False, "loss <= 0")
    k = max(1, int(round(edge_fraction * l_.size)))
    head, tail = float(np.median(l_[:k])), float(np.median(l_[-k:]))
    if tail > explode_factor * head:
        return Screening(False, f"diverged: final loss {tail:.4g} > {explode_factor:g} x initial {head:.4g}")
    peak = float(np.max(l_))
    if peak > spike_factor * head:
        return Screening(False, f"loss spike {peak:.4g} > {spike_factor:g} x initial {head:.4g}")
    return Screening(True, None)


# ====================================================================== H1
def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Raises
    ------
    NotEnoughPoints
        If ``n == 0``.
    """
    if n <= 0:
        raise NotEnoughPoints(1, 0, "runs")
    if not 0 <= k <= n:
        raise ValueError("need 0 <= k <= n")
    z = z_value(confidence)
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Share:
    """A proportion with its Wilson interval."""

    k: int
    n: int
    share: float
    ci: tuple[float, float]


@dataclass(frozen=True)
class H1Result:
    """H1: share of runs whose power-law fit has R^2 >= threshold.

    Attributes
    ----------
    overall : Share
    by_variant : Mapping[str, Share]
    threshold : float
    confidence : float
    excluded : tuple of (run, reason)
    """

    overall: Share
    by_variant: Mapping[str, Share]
    threshold: float
    confidence: float
    excluded: tuple[tuple[str, str], ...]

    def to_frame(self) -> pd.DataFrame:
        rows = [("all", self.overall)] + list(self.by_variant.items())
        return pd.DataFrame(
            [
                {"variant": v, "k": s.k, "n": s.n, "share": s.share, "ci_low": s.ci[0], "ci_high": s.ci[1]}
                for v, s in rows
            ]
        )


def _screen_table(table, numeric: Sequence[str], labels: Sequence[str], run_column: str, exclusion_column: str | None):
    """Drop rows with an exclusion reason or unusable values, recording each one."""
    df = pd.DataFrame(table).reset_index(drop=True)
    for col in list(numeric) + list(labels):
        if col not in df.columns:
            raise AnalysisError(f"table lacks column {col!r}")
    if run_column in df.columns:
        runs = df[run_column].astype(str).tolist()
    else:
        runs = [f"row{i}" for i in range(len(df))]
    excluded: list[tuple[str, str]] = []
    keep = np.ones(len(df), dtype=bool)
    if exclusion_column and exclusion_column in df.columns:
        for i, reason in enumerate(df[exclusion_column]):
            if isinstance(reason, str) and reason:
                keep[i] = False
                excluded.append((runs[i], reason))
    for col in numeric:
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        for i in np.flatnonzero(keep & ~np.isfinite(vals)):
            keep[i] = False
            excluded.append((runs[i], f"{col} missing or not finite"))
    for col in labels:
        miss = df[col].isna().to_numpy()
        for i in np.flatnonzero(keep & miss):
            keep[i] = False
            excluded.append((runs[i], f"{col} missing"))
    return df[keep].reset_index(drop=True), tuple(excluded)


def h1_statistics(
    table,
    *,
    r2_column: str = "power_r2",
    variant_column: str = "variant",
    run_column: str = "run",
    exclusion_column: str | None = "excluded_reason",
    threshold: float = 0.98,
    confidence: float = 0.95,
) -> H1Result:
    """Share of runs with power-law R^2 >= ``threshold``, overall and per variant.

    Parameters
    ----------
    table : DataFrame-like
        One row per run with ``r2_column`` and ``variant_column``.
    r2_column, variant_column, run_column, exclusion_column : str
    threshold : float
    confidence : float

    Returns
    -------
    H1Result
    """
    df, excluded = _screen_table(table, [r2_column], [variant_column], run_column, exclusion_column)
    if len(df) == 0:
        raise NotEnoughPoints(1, 0, "usable runs")

    def share(sub) -> Share:
        k = int(np.sum(sub[r2_column].astype(float) >= threshold))
        n = int(len(sub))
        return Share(k=k, n=n, share=k / n, ci=wilson_interval(k, n, confidence=confidence))

    by = {str(v): share(g) for v, g in df.groupby(variant_column, sort=True)}
    return H1Result(
        overall=share(df),
        by_variant=MappingProxyType(by),
        threshold=threshold,
        confidence=confidence,
        excluded=excluded,
    )


# ====================================================================== H2
@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation with p-values and bootstrap CIs.

    Attributes
    ----------
    n : int
    pearson_r, pearson_p : float
    pearson_ci : tuple of float
        Percentile bootstrap interval (paired resampling of runs).
    spearman_rho, spearman_p : float
    spearman_ci : tuple of float
    """

    n: int
    pearson_r: float
    pearson_p: float
    pearson_ci: tuple[float, float]
    spearman_rho: float
    spearman_p: float
    spearman_ci: tuple[float, float]

    def to_dict(self) -> dict:
        """Flat, JSON-ready: the intervals as ``*_ci_low`` / ``*_ci_high``."""
        return {
            "n": self.n,
            "pearson_r": self.pearson_r,
            "pearson_p": self.pearson_p,
            "pearson_ci_low": self.pearson_ci[0],
            "pearson_ci_high": self.pearson_ci[1],
            "spearman_rho": self.spearman_rho,
            "spearman_p": self.spearman_p,
            "spearman_ci_low": self.spearman_ci[0],
            "spearman_ci_high": self.spearman_ci[1],
        }


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, axis=1) / den


def correlation(x, y, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Correlation:
    """Pearson/Spearman correlation of paired samples with bootstrap CIs.

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
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    if n < 4:
        raise NotEnoughPoints(4, n, "runs for a correlation")
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


@dataclass(frozen=True)
class H2Result:
    """H2: correlation of α_early with the best validation CE.

    Attributes
    ----------
    overall : Correlation
    by_group : Mapping[str, Correlation]
        Keyed ``"column=value"`` for each grouping column (e.g. ``"variant=S-core"``,
        ``"optimizer=adamw"``).
    skipped_groups : tuple of (group, reason)
        Groups too small for a correlation.
    excluded : tuple of (run, reason)
    """

    overall: Correlation
    by_group: Mapping[str, Correlation]
    skipped_groups: tuple[tuple[str, str], ...]
    excluded: tuple[tuple[str, str], ...]

    def to_frame(self) -> pd.DataFrame:
        rows = [("all", self.overall)] + list(self.by_group.items())
        return pd.DataFrame(
            [{"group": g, **c.to_dict()} for g, c in rows]
        )


def h2_statistics(
    table,
    *,
    x_column: str = "alpha_early",
    y_column: str = "best_val_ce",
    group_columns: Sequence[str] = ("variant", "optimizer"),
    run_column: str = "run",
    exclusion_column: str | None = "excluded_reason",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> H2Result:
    """Pearson and Spearman correlation of ``x_column`` with ``y_column``.

    Parameters
    ----------
    table : DataFrame-like
        One row per run.
    x_column, y_column : str
        α_early and best validation CE (nats or bits: correlations are unit-free).
    group_columns : sequence of str
        Columns to break the statistic down by (missing columns are ignored).
    run_column, exclusion_column : str
    n_boot, confidence, seed
        Bootstrap settings.

    Returns
    -------
    H2Result
    """
    df, excluded = _screen_table(table, [x_column, y_column], [], run_column, exclusion_column)
    overall = correlation(
        df[x_column].astype(float), df[y_column].astype(float), n_boot=n_boot, confidence=confidence, seed=seed
    )
    by: dict[str, Correlation] = {}
    skipped: list[tuple[str, str]] = []
    for col in group_columns:
        if col not in df.columns:
            continue
        for val, g in df.groupby(col, sort=True):
            key = f"{col}={val}"
            try:
                by[key] = correlation(
                    g[x_column].astype(float),
                    g[y_column].astype(float),
                    n_boot=n_boot,
                    confidence=confidence,
                    seed=seed,
                )
            except NotEnoughPoints as exc:
                skipped.append((key, str(exc)))
    return H2Result(overall=overall, by_group=MappingProxyType(by), skipped_groups=tuple(skipped), excluded=excluded)


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
