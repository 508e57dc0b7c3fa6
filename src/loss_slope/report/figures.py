"""Report figures: each builder takes the per-run table, the statistics and the curves,
``(table, stats, curves)``, and returns a matplotlib Figure whose title states the finding.

Which figures the report has, and which builder draws each, is listed once in
:data:`loss_slope.report.registry.FIGURES` (re-exported here).  The verdict lines of
the titles come from :mod:`.verdicts`; thresholds and the confidence level from the
statistics' settings, never from a literal here.

Every function renders on a partial sweep (missing, invalid, diverged runs; no
usable run at all): panels without data say so instead of failing.  Uses the Agg
backend; nothing here shows a window.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from loss_slope.analysis.knee import DEFAULT_KNEE_METHOD, KNEE_METHODS
from loss_slope.analysis.stats import rho_beyond

from . import verdicts as V
from ._io import STATUSES, fmt_level
from .registry import FIGURES
from .results import H1Section, H2Result, NotComputable
from .study_stats import StudyStats

__all__ = [
    "FIGURES",
    "figure_builders",
    "plot_alpha_lr_wd",
    "plot_loss_mosaic",
    "plot_r2_histogram",
    "plot_h1_criteria",
    "plot_alpha_vs_val",
    "plot_delta_aic",
    "plot_knee_epochs",
    "plot_window_heatmap",
    "plot_lr_wd_best_val",
    "plot_lr_wd_heatmap",
    "plot_ablation",
    "plot_run_health",
    "plot_variant_curves",
    "render_figures",
    "save_figure",
]

STATUS_COLORS = {
    "ok": "#2e7d32",
    "too_short": "#f9a825",
    "invalid": "#ef6c00",
    "diverged": "#c62828",
    "missing": "#9e9e9e",
}
MODEL_STYLES = {
    "exponential": dict(color="#1f77b4", ls="--", lw=1.4, label="exponential"),
    "power": dict(color="#ff7f0e", ls="-", lw=1.8, label="power law (whole curve)"),
    "two_power": dict(color="#2ca02c", ls=":", lw=1.8, label="two-power (broken)"),
    "power_post_knee": dict(color="#d62728", ls="-", lw=1.4, label="power law after the knee"),
}
PLT_RC = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.fonttype": "none",
}


# ---------------------------------------------------------------- helpers
def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce")


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "ok"]


def _variants(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(str(v) for v in table["variant"]))


def _variant_colors(variants: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _unit(table: pd.DataFrame) -> str:
    if "loss_unit" in table.columns and table["loss_unit"].notna().any():
        return str(table["loss_unit"].dropna().iloc[0])
    return "nats"


def _h1(stats: StudyStats) -> H1Section:
    return stats.h1


def _h2(stats: StudyStats) -> H2Result | NotComputable:
    return stats.h2.main


def _h1_line(stats: StudyStats) -> str:
    return V.h1_headline(stats.h1.main, confidence=stats.confidence)


def _h2_line(stats: StudyStats) -> str:
    return V.h2_headline(stats.h2.main)


def _r2_threshold(stats: StudyStats) -> float:
    return stats.settings.study.r2_threshold


def _h2_settings(stats: StudyStats) -> Mapping[str, Any]:
    """The H2 criterion as configured (``analysis.study``), in the form :mod:`.verdicts` takes."""
    study = stats.settings.study
    return {
        "min_abs_rho": study.h2_min_abs_rho,
        "max_p": study.h2_max_p,
        "sign": study.h2_sign,
        "confidence": study.confidence,
    }


def _cell_edges(centres: np.ndarray) -> np.ndarray:
    """Edges of cells centred on sorted ``centres`` (halfway between neighbours; a lone cell is 1 wide)."""
    c = np.asarray(centres, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[:-1] + c[1:]) / 2
    return np.concatenate(([c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]))


def _suptitle(fig: Figure, text: str) -> None:
    """Left-aligned figure title, wrapped to the figure width."""
    width = max(40, int(fig.get_figwidth() * 9.5))
    fig.suptitle(textwrap.fill(text, width), x=0.01, ha="left")


def _short_run(variant: str, run: str) -> str:
    return f"{variant} {run}"


# ---------------------------------------------------------------- 1. mosaic
def plot_loss_mosaic(table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Six loss curves in log-log (the three highest and three lowest literal R²) with fits and knees."""
    r2col = "h1_literal_r2"
    thr = _r2_threshold(stats)
    unit = _unit(table)
    ok = _ok(table).assign(_r2=lambda d: _num(d, r2col)).dropna(subset=["_r2"])
    ok = ok[ok["run_key"].isin([k for k, c in curves.items() if c and c.get("curve", {}).get("binned")])]
    ranked = ok.sort_values("_r2", ascending=False)
    chosen, seen = [], set()
    for label, part in (("highest", ranked.head(3)), ("lowest", ranked.tail(3))):
        for r in part.itertuples():
            if r.run_key not in seen:
                seen.add(r.run_key)
                chosen.append((label, r))
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.2), sharex=False, sharey=False, constrained_layout=True)
    axes = axes.ravel()
    for i, ax in enumerate(axes):
        if i >= len(chosen):
            _empty(ax, "no further usable run")
            continue
        rank, r = chosen[i]
        fit = curves[r.run_key]
        c, m = fit["curve"], fit.get("models") or {}
        if c.get("step"):
            ax.scatter(
                np.asarray(c["step"], float) + 1,
                c["loss"],
                s=3,
                color="0.75",
                alpha=0.6,
                lw=0,
                label="per-step loss",
                rasterized=True,
            )
        b = c["binned"]
        ax.plot(np.asarray(b["step"], float) + 1, b["loss"], color="black", lw=1.3, label="log-binned mean")
        for name in ("exponential", "power", "two_power"):
            if m.get(name):
                ax.plot(np.asarray(m["step"], float) + 1, m[name], **MODEL_STYLES[name])
        row = fit["row"]
        knee = row.get("knee_found")
        if knee and m.get("power_post_knee"):
            ax.plot(
                np.asarray(m["power_post_knee_step"], float) + 1,
                m["power_post_knee"],
                **MODEL_STYLES["power_post_knee"],
            )
        ymin, ymax = ax.get_ylim()
        for meth in KNEE_METHODS.values():
            step = row.get(f"knee_{meth.name}_step")
            if step is not None and row.get(f"knee_{meth.name}_found"):
                ls = "-" if meth.name == DEFAULT_KNEE_METHOD else "-."
                ax.axvline(step + 1, color=meth.color, lw=1.2, ls=ls, label=meth.label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        r2 = row.get(r2col)
        alpha = row.get("post_knee_exponent")
        knee_txt = (
            f"knee at epoch {row['knee_epoch']:.1f}" if knee and row.get("knee_epoch") is not None else "no LRT knee"
        )
        one = {True: "one power law", False: "not one power law"}.get(row.get("h1_single_power_law"), "undecided")
        failed = [m for m in ("power", "two_power", "exponential", "post_knee") if row.get(f"{m}_fit_ok") is False]
        ax.set_title(
            f"{_short_run(r.variant, r.run)}  ({rank} R²): {one}\n"
            f"R² = {r2:.3f}, exponent {alpha:.2f}, {knee_txt}"
            + (f"\nfailed fit: {', '.join(failed)}" if failed else "")
            if alpha is not None
            else f"{_short_run(r.variant, r.run)}\nR² = {r2:.3f}"
        )
        ax.set_xlabel("optimizer step + 1 (log scale)")
        ax.set_ylabel(f"training loss ({unit}, log scale)")
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncol=5, frameon=False, markerscale=3
        )
    best = ranked["_r2"].max() if len(ranked) else float("nan")
    worst = ranked["_r2"].min() if len(ranked) else float("nan")
    if len(ranked):
        n_hit = int((ranked["_r2"] >= thr).sum())
        head = (
            f"Loss curves with the highest and lowest straight-line log-log R² after the knee (best {best:.3f}, "
            f"worst {worst:.3f}): {n_hit} of {len(ranked)} usable runs reach R² ≥ {thr:g}"
        )
    else:
        head = "Loss curves: no usable run to show"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 2. R² histogram
def plot_r2_histogram(table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Any] | None = None) -> Figure:
    """Histogram of the literal R² (straight line in log-log after the knee) and of the
    floor + shift power law's R², with the threshold, split by the H1 decision."""
    lit = _h1(stats).literal
    thr = _r2_threshold(stats)
    ok = _ok(table)
    a = _num(ok, "h1_literal_r2")
    b = _num(ok, "post_knee_r2").dropna().to_numpy()
    dec = ok["h1_single_power_law"] if "h1_single_power_law" in ok.columns else pd.Series(None, index=ok.index)
    fig, ax = plt.subplots(figsize=(9, 5.2), constrained_layout=True)
    if a.notna().sum() == 0 and b.size == 0:
        _empty(ax, "no usable run: no R² to show")
    else:
        allv = np.concatenate([a.dropna().to_numpy(), b, [thr]])
        lo = max(min(math.floor(float(np.nanmin(allv)) * 50) / 50, thr - 0.02), -1.0)
        bins = np.linspace(lo, 1.0, min(int(round((1.0 - lo) / 0.01)) + 1, 61))
        parts = [
            (True, "#2e7d32", "one power law (defensible criterion)"),
            (False, "#c62828", "not one power law"),
            (None, "#9e9e9e", "undecided (failed fit / too short)"),
        ]
        data, colors, labels = [], [], []
        for val, color, lab in parts:
            sel = a[[(d is val) if val is None else (d == val) for d in dec]].dropna().to_numpy() if len(a) else []
            if len(sel):
                data.append(sel)
                colors.append(color)
                labels.append(f"straight-line R², {lab}: {len(sel)}")
        if data:
            ax.hist(data, bins=bins, color=colors, stacked=True, alpha=0.85, label=labels)
        ax.hist(
            b, bins=bins, histtype="step", lw=2, color="#ff7f0e", label=f"R² of the floor + shift fit, n = {b.size}"
        )
        ax.axvline(thr, color="black", lw=2, ls="--", label=f"literal threshold R² = {thr:g}")
        ax.set_xlim(bins[0], 1.0)
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("R² after the knee, log training loss against log step (dimensionless)")
    ax.set_ylabel("runs (count)")
    ax.set_title(textwrap.fill(_h1_line(stats), int(fig.get_figwidth() * 14)), loc="left", fontsize=9)
    head = "The protocol's literal H1 criterion: R² of a straight line in log-log after the knee"
    if lit.computable:
        head += f" — {lit.overall.k} of {lit.overall.n} runs reach {thr:g}, whatever their shape (colours)"
    _suptitle(fig, head)
    return fig


def plot_h1_criteria(table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Any] | None = None) -> Figure:
    """Share of runs meeting each H1 criterion (and knee definition), with cluster-aware intervals."""
    conf = stats.confidence
    rows = [(name, r) for name, r in _h1(stats).criteria.items() if r.computable]
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.55 * max(1, len(rows))), constrained_layout=True)
    if not rows:
        _empty(ax, "no H1 criterion is computable")
        _suptitle(fig, "H1 by criterion: nothing to show")
        return fig
    targets = [float(t) for t in rows[0][1].target_shares]
    y = np.arange(len(rows))[::-1]
    for yi, (name, r) in zip(y, rows):
        o = r.overall
        main = name == H1Section.MAIN
        ax.barh(yi, 100 * o.share, color="#2e7d32" if main else "#90a4ae", alpha=0.9)
        ax.errorbar(
            100 * o.share,
            yi,
            xerr=[[max(100 * (o.share - o.ci_low), 0.0)], [max(100 * (o.ci_high - o.share), 0.0)]],
            color="black",
            capsize=4,
            fmt="none",
        )
        verdicts = V.h1_verdicts_short(r.verdicts)
        ax.annotate(f"{o.k}/{o.n}: {verdicts}", (101, yi), va="center", fontsize=8, annotation_clip=False)
    for t in targets:
        ax.axvline(100 * t, color="#c62828", ls="--", lw=1.2)
    ax.set_yticks(y, [textwrap.fill(r.label or n, 48) for n, r in rows], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"runs meeting the criterion (%; {fmt_level(conf)} cluster-aware interval; dashed: targets)")
    _suptitle(fig, _h1_line(stats))
    return fig


# ---------------------------------------------------------------- 3. α vs best val CE
def plot_alpha_vs_val(table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Any] | None = None) -> Figure:
    """α_early vs best validation CE: runs coloured by LR, marker by variant, cell means as
    large outlined markers (the grid's share of the relation is the spread of the means)."""
    ok = _ok(table)
    unit = _unit(table)
    fig, ax = plt.subplots(figsize=(9, 7), constrained_layout=True)
    win = stats.settings.early_window
    y = _num(ok, "best_val_ce")
    xe = _num(ok, "alpha_early")
    if not (y.notna() & xe.notna()).any():
        _empty(ax, "no usable run with α_early and a best validation CE")
    else:
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        variants = _variants(ok)
        lrs = sorted(_num(ok, "lr").dropna().unique())
        cmap = plt.get_cmap("viridis")
        lr_color = {lr: cmap(i / max(len(lrs) - 1, 1)) for i, lr in enumerate(lrs)}
        for (v, lr), g in ok.groupby(["variant", "lr"], sort=False):
            ax.scatter(
                _num(g, "alpha_early"),
                _num(g, "best_val_ce"),
                s=30,
                color=lr_color.get(float(lr)),
                marker=markers[variants.index(str(v)) % len(markers)],
                alpha=0.55,
                lw=0,
                zorder=2,
            )
        for (v, lr, _wd), g in ok.groupby(["variant", "lr", "weight_decay"], sort=False):
            gx, gy = _num(g, "alpha_early").mean(), _num(g, "best_val_ce").mean()
            if np.isfinite([gx, gy]).all():
                ax.scatter(
                    [gx],
                    [gy],
                    s=150,
                    color=lr_color.get(float(lr)),
                    edgecolor="black",
                    lw=1.4,
                    marker=markers[variants.index(str(v)) % len(markers)],
                    zorder=3,
                )
        handles = [Line2D([], [], marker="o", ls="", color=lr_color[lr], label=f"LR {lr:g}") for lr in lrs]
        handles += [
            Line2D([], [], marker=markers[i % len(markers)], ls="", color="0.3", label=v)
            for i, v in enumerate(variants)
        ]
        handles.append(
            Line2D([], [], marker="o", ls="", mfc="white", mec="black", ms=11, label="cell mean (variant × LR × WD)")
        )
        h2 = _h2(stats)
        for key, lab in (("overall", "pooled"), ("cell_means", "cell means"), ("within_cell", "within cells")):
            c = getattr(h2, key) if h2.computable else None
            if c and c.spearman_rho is not None:
                handles.append(
                    Line2D(
                        [],
                        [],
                        ls="",
                        label=f"{lab}: ρ = {c.spearman_rho:.2f} "
                        f"[{V.interval(c.spearman_ci_low, c.spearman_ci_high, targets=V.rho_thresholds(h2.settings))}]",
                    )
                )
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
        if (y.dropna() > 0).all():
            ax.set_yscale("log")
    ax.set_xlabel(
        f"α_early: log-log slope of the training loss over epochs {win[0]:g}–{win[1]:g} "
        "(dimensionless; larger = faster decrease)"
    )
    ax.set_ylabel(f"best validation cross-entropy ({unit}, log scale)")
    ax.set_title(textwrap.fill(_h2_line(stats), int(fig.get_figwidth() * 14)), loc="left", fontsize=9)
    _suptitle(fig, "Does the early slope predict the best validation loss — across the grid or within a cell?")
    return fig


# ---------------------------------------------------------------- 4. ΔAIC
def plot_delta_aic(
    table: pd.DataFrame, stats: StudyStats | None = None, curves: Mapping[str, Any] | None = None
) -> Figure:
    """ΔAIC of exponential / power / two-power per run (0 = best), grouped by variant."""
    ok = _ok(table)
    models = ["exponential", "power", "two_power"]
    cols = [f"{m}_delta_aic" for m in models]
    have = ok[[c for c in cols if c in ok.columns]]
    n = len(ok)
    width = min(24.0, max(9.0, 0.32 * n + 3))
    fig, ax = plt.subplots(figsize=(width, 5.8), constrained_layout=True)
    if n == 0 or have.empty or not have.notna().any().any():
        _empty(ax, "no usable run with a model comparison")
        _suptitle(fig, "Model comparison (ΔAIC): no usable run to show")
        return fig
    ok = ok.reset_index(drop=True)
    colors = {"exponential": "#1f77b4", "power": "#ff7f0e", "two_power": "#2ca02c"}
    x = np.arange(n, dtype=float)
    # a gap between variants
    gaps = np.cumsum([0] + [1 if ok["variant"].iloc[i] != ok["variant"].iloc[i - 1] else 0 for i in range(1, n)])
    x = x + gaps * 0.8
    w = 0.27
    floor = 0.1  # ΔAIC 0 (the best model) drawn as a stub so it is visible on a log axis
    failed = {}
    for j, m in enumerate(models):
        vals = _num(ok, f"{m}_delta_aic").to_numpy()
        good = _fit_ok(ok, m)
        failed[m] = int((~good & np.isfinite(vals)).sum())
        height = np.where(np.isfinite(vals), np.maximum(vals, floor), np.nan)
        ax.bar(
            x + (j - 1) * w,
            np.where(good, height, np.nan),
            w,
            color=colors[m],
            label=MODEL_STYLES[m]["label"].split(" (")[0] if m != "two_power" else "two-power law",
        )
        if failed[m]:  # a fit the check of its binned residuals failed: drawn hollow, hatched
            ax.bar(x + (j - 1) * w, np.where(good, np.nan, height), w, color="none", ec=colors[m], hatch="///")
    ax.set_yscale("log")
    ax.axhline(2, color="0.3", lw=1, ls="--", label="ΔAIC = 2")
    ax.axhline(10, color="0.3", lw=1, ls=":", label="ΔAIC = 10")
    if n <= 60:
        ax.set_xticks(x, [str(r) for r in ok["run"]], rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xticks([])
    for v, g in ok.groupby("variant", sort=False):
        xs = x[g.index]
        ax.annotate(
            str(v),
            xy=((xs.min() + xs.max()) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontweight="bold",
        )
    ax.set_ylabel("ΔAIC vs the best model per run\n(autocorrelation-aware; log scale, 0 drawn at 0.1)")
    ax.set_xlabel("run (grouped by variant)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=5, frameon=False)
    best = ok["best_aic"].value_counts() if "best_aic" in ok.columns else pd.Series(dtype=int)
    n_pow = int(best.get("power", 0))
    n_two = int(best.get("two_power", 0))
    n_exp = int(best.get("exponential", 0))
    diff = (_num(ok, "exponential_delta_aic") - _num(ok, "power_delta_aic")).to_numpy()
    med_exp = float(np.nanmedian(diff)) if np.isfinite(diff).any() else math.nan
    if not math.isfinite(med_exp):
        versus = "no run has both the exponential and the power law"
    elif med_exp >= 0:
        versus = f"the exponential is worse than the power law by median ΔAIC = {med_exp:.0f}"
    else:
        versus = f"the exponential is better than the power law by median ΔAIC = {-med_exp:.0f}"
    names = {"exponential": "exponential", "power": "power law", "two_power": "two-power"}
    bad = ", ".join(f"{names[m]} {k}" for m, k in failed.items() if k)
    _suptitle(
        fig,
        f"Best model by AIC: power law in {n_pow}, two-power in {n_two}, exponential in {n_exp} of {n} runs; "
        f"{versus}" + (f" (hatched: failed fits, counted as fitted: {bad})" if bad else ""),
    )
    return fig


def _fit_ok(table: pd.DataFrame, model: str) -> np.ndarray:
    """Whether each run's ``model`` fit passed its check (``<model>_fit_ok``; True where not recorded)."""
    col = table.get(f"{model}_fit_ok")
    if col is None:
        return np.ones(len(table), dtype=bool)
    return col.astype("boolean").fillna(True).astype(bool).to_numpy()


# ---------------------------------------------------------------- 5. knee epochs
def _found(g: pd.DataFrame, method: str) -> np.ndarray:
    e = _num(g, f"knee_{method}_epoch")
    f = g.get(f"knee_{method}_found")
    if f is not None:
        e = e[f.astype("boolean").fillna(False).astype(bool)]
    return e.dropna().to_numpy()


def plot_knee_epochs(
    table: pd.DataFrame,
    stats: StudyStats | None = None,
    curves: Mapping[str, Any] | None = None,
    *,
    methods: Sequence[str] | None = None,
) -> Figure:
    """Knee epoch per variant, one box per knee method (found knees only).

    ``methods``: names in :data:`loss_slope.analysis.knee.KNEE_METHODS` (default: every
    registered method the table has a ``knee_<name>_epoch`` column of).
    """
    ok = _ok(table)
    if methods is None:
        methods = [m for m in KNEE_METHODS if f"knee_{m}_epoch" in table.columns]
    variants = _variants(table)
    k = max(1, len(methods))
    fig, ax = plt.subplots(figsize=(min(16, max(9, 0.6 * len(variants) * k + 3)), 5.8), constrained_layout=True)
    if ok.empty or not methods:
        _empty(ax, "no usable run: no knees to show")
        _suptitle(fig, "Knee epochs: no usable run to show")
        return fig
    w = 0.8 / k
    rng = np.random.default_rng(0)
    found_all: dict[str, int] = {}
    ticks = []
    for i, v in enumerate(variants):
        g = ok[ok["variant"] == v]
        parts = []
        for j, m in enumerate(methods):
            e = _found(g, m)
            found_all[m] = found_all.get(m, 0) + e.size
            parts.append(f"{KNEE_METHODS[m].short} {e.size}/{len(g)}")
            pos = i + (j - (k - 1) / 2) * w
            col = KNEE_METHODS[m].color
            if e.size:
                ax.boxplot(
                    [e],
                    positions=[pos],
                    widths=w * 0.8,
                    patch_artist=True,
                    showfliers=False,
                    boxprops=dict(facecolor=col, alpha=0.35),
                    medianprops=dict(color=col, lw=2),
                )
                ax.scatter(pos + rng.uniform(-w / 4, w / 4, e.size), e, s=16, color=col, zorder=3)
        ticks.append(f"{v}\n" + ", ".join(parts[:2]) + ("\n" + ", ".join(parts[2:]) if len(parts) > 2 else ""))
    ax.set_xticks(range(len(variants)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    vals = np.concatenate([_found(ok, m) for m in methods]) if methods else np.array([])
    if vals.size and (vals > 0).all():
        ax.set_yscale("log")
        ax.set_ylabel("knee epoch (log scale)")
    else:
        ax.set_ylabel("knee epoch")
    if not vals.size:
        ax.text(0.5, 0.5, "no method found a knee in any usable run", transform=ax.transAxes, ha="center", color="0.35")
    ax.set_xlabel("variant (with runs where each detector found a knee / usable runs)")
    fig.legend(
        handles=[
            Patch(
                facecolor=KNEE_METHODS[m].color,
                alpha=0.6,
                label=f"{KNEE_METHODS[m].label}: {found_all.get(m, 0)} of {len(ok)} runs",
            )
            for m in methods
        ],
        loc="outside lower center",
        ncol=min(4, k),
        frameon=False,
    )
    n_lrt = found_all.get(DEFAULT_KNEE_METHOD, 0)
    head = f"Knee epoch per variant: the calibrated LRT detector finds a knee in {n_lrt} of {len(ok)} usable runs"
    if n_lrt:
        head += f" (median epoch {np.median(_found(ok, DEFAULT_KNEE_METHOD)):.1f})"
    others = [m for m in methods if m != DEFAULT_KNEE_METHOD and found_all.get(m)]
    if others:
        m = others[0]
        head += f"; the {KNEE_METHODS[m].label} is at median epoch {np.median(_found(ok, m)):.1f}"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 6. window robustness
def plot_window_heatmap(table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Any] | None = None) -> Figure:
    """Spearman ρ(α over [start, stop), best val CE) over shifted windows."""
    hm = stats.window_heatmap
    fig, ax = plt.subplots(figsize=(9, 7.4), constrained_layout=True)
    if hm is None:
        _empty(ax, "no usable run with a window scan")
        _suptitle(fig, "α window robustness: nothing to show")
        return fig
    starts, ends = np.asarray(hm.starts, float), np.asarray(hm.ends, float)
    rho = np.array([[np.nan if v is None else v for v in r] for r in hm.rho], dtype=float)
    p = np.array([[np.nan if v is None else v for v in r] for r in hm.p_value], dtype=float)
    st = _h2_settings(stats)
    min_rho, max_p = st["min_abs_rho"], st["max_p"]
    criterion = V.h2_criterion(st).split(" (")[0]  # ρ ≤ −0.7, ρ ≥ 0.7 or |ρ| ≥ 0.7

    def meets(r, pv):
        """The configured direction and strength, with p below max_p (the verdict's rule, at a point)."""
        return rho_beyond(r, r, min_rho, st["sign"]) & (pv < max_p)

    # cells centred on their epochs, whatever the scan's stride (a start clipped at 0 makes it uneven)
    start_edges, end_edges = _cell_edges(starts), _cell_edges(ends)
    im = ax.pcolormesh(end_edges, start_edges, rho, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.grid(False)
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("Spearman ρ(α over the window, best validation CE)")
    if rho.size <= 225:
        for i, s0 in enumerate(starts):
            for j, e0 in enumerate(ends):
                if np.isfinite(rho[i, j]):
                    strong = bool(meets(rho[i, j], p[i, j]))
                    ax.text(
                        e0,
                        s0,
                        f"{rho[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        fontweight="bold" if strong else "normal",
                        color="white" if abs(rho[i, j]) > 0.6 else "black",
                    )
    nom = hm.nominal
    i0 = np.flatnonzero(np.isclose(starts, nom[0]))
    j0 = np.flatnonzero(np.isclose(ends, nom[1]))
    on_grid = bool(i0.size and j0.size)
    if on_grid:
        i, j = i0[0], j0[0]
        ax.add_patch(
            Rectangle(
                (end_edges[j], start_edges[i]),
                end_edges[j + 1] - end_edges[j],
                start_edges[i + 1] - start_edges[i],
                fill=False,
                lw=2.5,
                ec="black",
            )
        )
    ax.set_xlabel("window stop (epoch, exclusive)")
    ax.set_ylabel("window start (epoch)")
    valid = np.isfinite(rho)
    strong = valid & meets(rho, p)
    if not valid.any():
        nominal_text = "no window has a correlation (too few runs with both numbers)"
    elif on_grid and np.isfinite(rho[i0[0], j0[0]]):
        nominal_text = f"ρ = {rho[i0[0], j0[0]]:.2f} at epochs {nom[0]:g}–{nom[1]:g}"
    elif on_grid:
        nominal_text = f"no correlation at the nominal window {nom[0]:g}–{nom[1]:g}"
    else:
        nominal_text = f"the nominal window {nom[0]:g}–{nom[1]:g} is not on the scan's grid"
    ax.set_title(
        f"Black box: the nominal window {nom[0]:g}–{nom[1]:g}; bold: {criterion} and p < {max_p:g} "
        "with runs treated as independent (pooled point estimates: the cluster-aware intervals are in "
        "the summary); blank: window empty or too short",
        loc="left",
        fontsize=9,
        wrap=True,
    )
    _suptitle(
        fig,
        f"Window robustness of H2: {nominal_text}; "
        f"{criterion} with p < {max_p:g} in {int(strong.sum())} of {int(valid.sum())} windows",
    )
    return fig


# ---------------------------------------------------------------- 7. LR × WD
def plot_lr_wd_heatmap(table: pd.DataFrame, column: str = "best_val_ce") -> Figure:
    """Mean over seeds of ``column`` (best validation CE, or α_early) for each LR × WD, one panel per variant."""
    unit = _unit(table)
    is_ce = column == "best_val_ce"
    variants = _variants(table)
    nv = max(1, len(variants))
    ncol = 2 if nv in (2, 4) else min(nv, 3)
    nrow = math.ceil(nv / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.9 * ncol + 1.2, 3.6 * nrow + 0.9), squeeze=False, constrained_layout=True
    )
    ok = _ok(table).assign(_y=lambda d: _num(d, column))
    ok = ok[np.isfinite(ok["_y"]) & ((ok["_y"] > 0) | (not is_ce))]
    if not len(ok):
        norm = None
    elif is_ce:
        norm = LogNorm(vmin=ok["_y"].min(), vmax=max(ok["_y"].max(), ok["_y"].min() * 1.0001))
    else:
        norm = Normalize(vmin=ok["_y"].min(), vmax=max(ok["_y"].max(), ok["_y"].min() + 1e-9))
    best = None
    im = None
    for ax, v in zip(axes.ravel(), variants):
        g_all = table[table["variant"] == v]
        lrs = sorted(pd.to_numeric(g_all["lr"], errors="coerce").dropna().unique())
        wds = sorted(pd.to_numeric(g_all["weight_decay"], errors="coerce").dropna().unique())
        g = ok[ok["variant"] == v]
        if not lrs or not wds or g.empty:
            _empty(ax, f"{v}\nno usable run")
            continue
        grid = np.full((len(wds), len(lrs)), np.nan)
        cnt = np.zeros_like(grid, dtype=int)
        for (wd, lr), gg in g.groupby(["weight_decay", "lr"]):
            i, j = wds.index(wd), lrs.index(lr)
            grid[i, j] = float(np.exp(np.log(gg["_y"]).mean())) if is_ce else float(gg["_y"].mean())
            cnt[i, j] = len(gg)
        im = ax.imshow(grid, origin="lower", cmap="viridis_r" if is_ce else "magma", norm=norm, aspect="auto")
        for i in range(len(wds)):
            for j in range(len(lrs)):
                total = int(
                    ((pd.to_numeric(g_all["lr"]) == lrs[j]) & (pd.to_numeric(g_all["weight_decay"]) == wds[i])).sum()
                )
                txt = (
                    f"{grid[i, j]:.3g}\n{cnt[i, j]}/{total} seeds" if np.isfinite(grid[i, j]) else f"no run\n0/{total}"
                )
                color = "black"
                if np.isfinite(grid[i, j]):
                    r, g_, b_, _ = im.cmap(im.norm(grid[i, j]))
                    color = "white" if 0.299 * r + 0.587 * g_ + 0.114 * b_ < 0.5 else "black"
                ax.text(j, i, txt, ha="center", va="center", fontsize=9, color=color)
                better = best is None or (grid[i, j] < best[0] if is_ce else grid[i, j] > best[0])
                if np.isfinite(grid[i, j]) and better:
                    best = (grid[i, j], v, lrs[j], wds[i])
        ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
        ax.set_yticks(range(len(wds)), [f"{x:g}" for x in wds])
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("weight decay")
        ax.set_title(str(v))
        ax.grid(False)
    for ax in axes.ravel()[len(variants) :]:
        ax.set_visible(False)
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85)
        cb.set_label(
            f"best validation CE ({unit}; geometric mean over seeds)"
            if is_ce
            else "α_early (dimensionless; mean over seeds)"
        )
    what = "Best validation CE" if is_ce else "Early slope α_early"
    if best and is_ce:
        head = (
            f"{what} by LR × weight decay: lowest {best[0]:.3g} {unit} "
            f"in {best[1]} at lr = {best[2]:g}, wd = {best[3]:g}"
        )
    elif best:
        head = (
            f"{what} by LR × weight decay — the grid's share of H2: steepest {best[0]:.3g} "
            f"in {best[1]} at lr = {best[2]:g}, wd = {best[3]:g}"
        )
    else:
        head = f"{what} by LR × weight decay: no usable run"
    _suptitle(fig, head)
    return fig


def plot_alpha_lr_wd(
    table: pd.DataFrame, stats: StudyStats | None = None, curves: Mapping[str, Any] | None = None
) -> Figure:
    """α_early (mean over seeds) over LR × WD, one panel per variant: the grid's share of H2."""
    return plot_lr_wd_heatmap(table, "alpha_early")


def plot_lr_wd_best_val(
    table: pd.DataFrame, stats: StudyStats | None = None, curves: Mapping[str, Any] | None = None
) -> Figure:
    """Best validation CE (geometric mean over seeds) over LR × WD, one panel per variant."""
    return plot_lr_wd_heatmap(table, "best_val_ce")


# ---------------------------------------------------------------- 8. ablation
def plot_ablation(table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Any] | None = None) -> Figure:
    """Per variant: share of single power laws and pooled Spearman ρ, with cluster-aware intervals."""
    variants = _variants(table)
    colors = _variant_colors(variants)
    h1 = _h1(stats).main
    h2 = _h2(stats)
    conf = stats.confidence
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(10, 2.3 * len(variants) + 4), 5.2), constrained_layout=True)
    x = np.arange(len(variants))
    byv = h1.by_variant if h1.computable else {}
    for i, v in enumerate(variants):
        s = byv.get(v)
        if s:
            a1.bar(i, 100 * s.share, color=colors[v], alpha=0.85)
            a1.errorbar(
                i,
                100 * s.share,
                yerr=[[max(100 * (s.share - s.ci_low), 0.0)], [max(100 * (s.ci_high - s.share), 0.0)]],
                color="black",
                capsize=5,
            )
            a1.annotate(
                f"{s.k}/{s.n}",
                (i, 100 * s.ci_high),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                fontsize=9,
            )
        else:
            a1.annotate("no decided run", (i, 2), ha="center", rotation=90, color="0.4", fontsize=9)
    for t in h1.target_shares if h1.computable else ():
        a1.axhline(100 * float(t), color="#c62828", ls="--", lw=1.2)
    a1.set_ylim(0, 105)
    a1.set_xticks(x, variants)
    a1.set_ylabel(f"runs that are one power law after the knee (%, {fmt_level(conf)} cluster-aware CI)")
    a1.set_title("H1 per variant (dashed: targets)", loc="left", fontsize=9)
    byg = h2.by_variant if h2.computable else {}
    st = _h2_settings(stats)
    for i, v in enumerate(variants):
        c = byg[v].overall if v in byg else None
        if c and c.spearman_rho is not None:
            rho, lo, hi = c.spearman_rho, c.spearman_ci_low, c.spearman_ci_high
            a2.bar(i, rho, color=colors[v], alpha=0.85)
            if lo is not None and hi is not None:
                a2.errorbar(i, rho, yerr=[[max(rho - lo, 0.0)], [max(hi - rho, 0.0)]], color="black", capsize=5)
            a2.annotate(
                f"{byg[v].n_cells} cells\n{byg[v].verdict}",
                (i, max(hi or rho, rho)),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        else:
            a2.annotate("too few cells", (i, 0.05), ha="center", rotation=90, color="0.4", fontsize=9)
    thr = st["min_abs_rho"]
    a2.axhline(thr, color="#c62828", ls="--", lw=1.5, label=f"|ρ| = {thr:g}")
    a2.axhline(-thr, color="#c62828", ls="--", lw=1.5)
    a2.axhline(0, color="black", lw=0.8)
    a2.set_ylim(-1.15, 1.3)
    a2.set_xticks(x, variants)
    a2.set_ylabel(f"Spearman ρ(α_early, best val CE) ({fmt_level(st['confidence'])} cluster-aware CI)")
    a2.legend(loc="lower right")
    a2.set_title("H2 per variant (few cells per variant: wide intervals)", loc="left", fontsize=9)
    _suptitle(fig, "Ablation by variant — " + _h1_line(stats) + "; " + _h2_line(stats))
    return fig


# ---------------------------------------------------------------- 9. run health
def plot_run_health(
    table: pd.DataFrame, stats: StudyStats | None = None, curves: Mapping[str, Any] | None = None
) -> Figure:
    """Runs per status and variant: a partial sweep is obvious at a glance."""
    variants = _variants(table)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.45 * max(1, len(variants))), constrained_layout=True)
    if not variants:
        _empty(ax, "the study has no runs")
        _suptitle(fig, "Run health: the study has no runs")
        return fig
    left = np.zeros(len(variants))
    for s in STATUSES:
        vals = np.array([int(((table["variant"] == v) & (table["status"] == s)).sum()) for v in variants])
        ax.barh(
            range(len(variants)), vals, left=left, color=STATUS_COLORS[s], label=s.replace("_", " "), edgecolor="white"
        )
        for i, (l0, n) in enumerate(zip(left, vals)):
            if n:
                ax.text(
                    l0 + n / 2,
                    i,
                    str(n),
                    ha="center",
                    va="center",
                    color="white" if s != "too_short" else "black",
                    fontweight="bold",
                )
        left += vals
    ax.set_yticks(range(len(variants)), variants)
    ax.invert_yaxis()
    ax.set_xlabel("runs (count)")
    ax.set_xlim(0, max(left.max(), 1) * 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=len(STATUSES), frameon=False)
    ax.grid(axis="y", visible=False)
    counts = {s: int((table["status"] == s).sum()) for s in STATUSES}
    n = len(table)
    head = f"Run health: {counts['ok']} of {n} runs usable"
    others = [f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES[1:] if counts[s]]
    head += " (" + ", ".join(others) + ")" if others else " — complete sweep, nothing excluded"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 10. per-variant curves
def plot_variant_curves(table: pd.DataFrame, curves: Mapping[str, Mapping[str, Any]], variant: str) -> Figure:
    """All runs of one variant (log-binned), coloured by LR, with the α_early window."""
    unit = _unit(table)
    g = table[table["variant"] == variant]
    fig, ax = plt.subplots(figsize=(9, 5.8), constrained_layout=True)
    lrs = sorted(pd.to_numeric(g["lr"], errors="coerce").dropna().unique())
    cmap = plt.get_cmap("viridis")
    lr_col = {lr: cmap(0.15 + 0.7 * i / max(1, len(lrs) - 1)) for i, lr in enumerate(lrs)}
    shown = 0
    spe = None
    for r in g.itertuples():
        fit = curves.get(r.run_key)
        if not fit or not fit.get("curve", {}).get("binned"):
            continue
        b = fit["curve"]["binned"]
        spe = spe or fit["row"].get("steps_per_epoch")
        ls = "-" if r.status == "ok" else ":"
        color = lr_col.get(r.lr, "0.5")
        ax.plot(np.asarray(b["step"], float) + 1, b["loss"], color=color, lw=1.2, ls=ls, alpha=0.85)
        dstep = fit["row"].get("diverged_step")
        if r.status == "diverged" and dstep is not None:
            bs, bl = np.asarray(b["step"], float), np.asarray(b["loss"], float)
            y = float(np.interp(dstep, bs, bl)) if bs.size else float("nan")
            ax.plot([dstep + 1], [y], marker="X", ms=11, color=STATUS_COLORS["diverged"], ls="", zorder=4)
        shown += 1
    if shown == 0:
        _empty(ax, f"{variant}: no run with a curve")
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        win = None
        if "alpha_early_start_step" in g.columns:
            s0, s1 = _num(g, "alpha_early_start_step").median(), _num(g, "alpha_early_end_step").median()
            if np.isfinite([s0, s1]).all():
                win = (s0 + 1, s1 + 1)
                ax.axvspan(*win, color="#ff7f0e", alpha=0.12)
        hs = [Line2D([], [], color=c, lw=2, label=f"lr = {lr:g}") for lr, c in lr_col.items()]
        if win:
            hs.append(Patch(color="#ff7f0e", alpha=0.25, label="α_early window"))
        if (g["status"] != "ok").any():
            hs.append(Line2D([], [], color="0.4", ls=":", label="not usable (see table)"))
        if (g["status"] == "diverged").any():
            hs.append(Line2D([], [], marker="X", ms=9, ls="", color=STATUS_COLORS["diverged"], label="diverged here"))
        ax.legend(handles=hs, loc="lower left")
    ax.set_xlabel("optimizer step + 1 (log scale)")
    ax.set_ylabel(f"training loss ({unit}, log-binned geometric mean, log scale)")
    ok = _ok(g)
    a = _num(ok, "alpha_early")
    others = ", ".join(
        f"{int((g['status'] == s).sum())} {s.replace('_', ' ')}" for s in STATUSES[1:] if (g["status"] == s).any()
    )
    head = f"{variant}: {len(ok)} of {len(g)} runs usable" + (f" ({others})" if others else "")
    if len(ok) and a.notna().any():
        head += f"; α_early median {a.median():.2f} (range {a.min():.2f}–{a.max():.2f})"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- output
def save_figure(fig: Figure, paths: Sequence[str | Path], *, dpi: int = 150) -> None:
    for p in paths:
        p = Path(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=dpi, metadata={"Date": None} if p.suffix == ".svg" else None)
    plt.close(fig)


def figure_builders(
    table: pd.DataFrame, stats: StudyStats, curves: Mapping[str, Mapping[str, Any]]
) -> dict[str, Callable[[], Figure]]:
    """Figure name -> a call that draws it with its registered builder (:data:`FIGURES` order)."""
    return {name: partial(_BUILDERS[name], table, stats, curves) for name in FIGURES}


def render_figures(
    table: pd.DataFrame,
    stats: StudyStats,
    curves: Mapping[str, Mapping[str, Any]],
    outputs: Mapping[str, Sequence[str | Path]],
    variant_outputs: Mapping[str, Sequence[str | Path]] | None = None,
) -> None:
    """Write every figure.

    Parameters
    ----------
    table, stats, curves
        Per-run table, study statistics, ``run_key`` -> fit JSON.
    outputs : mapping
        Figure name (a key of :data:`FIGURES`) -> paths to write (e.g. PNG and SVG).
    variant_outputs : mapping, optional
        Variant -> paths of its loss-curve figure.
    """
    unknown = set(outputs) - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)}; known: {sorted(FIGURES)}")
    builders = figure_builders(table, stats, curves)
    with plt.rc_context(PLT_RC):
        for name, paths in outputs.items():
            save_figure(builders[name](), paths)
        for v, paths in (variant_outputs or {}).items():
            save_figure(plot_variant_curves(table, curves, v), paths)


def _builders() -> dict[str, Callable[..., Figure]]:
    """Each registered figure's builder; a registry entry naming no function here fails at import."""
    missing = [f"{f.name} -> {f.builder}" for f in FIGURES.values() if not callable(globals().get(f.builder))]
    if missing:
        raise ImportError(f"figures registered without a builder in {__name__}: {', '.join(missing)}")
    return {f.name: globals()[f.builder] for f in FIGURES.values()}


_BUILDERS = _builders()
