"""Report figures: each function takes the per-run table (and the statistics / curves)
and returns a matplotlib Figure whose title states the finding.

Every function renders on a partial sweep (missing, invalid, diverged runs; no
usable run at all): panels without data say so instead of failing.  Uses the Agg
backend; nothing here shows a window.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ._io import STATUSES, fmt_p, fmt_pct  # noqa: E402

__all__ = [
    "FIGURES",
    "plot_loss_mosaic",
    "plot_r2_histogram",
    "plot_alpha_vs_val",
    "plot_delta_aic",
    "plot_knee_epochs",
    "plot_window_heatmap",
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
KNEE_COLORS = {"broken_power_lrt": "#d62728", "burn_in_aic": "#9467bd", "ce_threshold": "#8c564b", "hinge": "#17becf"}
KNEE_LABELS = {
    "broken_power_lrt": "LRT knee (calibrated)",
    "burn_in_aic": "burn-in end (AIC)",
    "ce_threshold": "val CE ≤ threshold",
    "hinge": "hinge (uncalibrated)",
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


def _h1_line(stats: Mapping[str, Any], key: str = "h1") -> str:
    h1 = stats.get(key) or {}
    o = h1.get("overall")
    col = "binned R²" if h1.get("statistic") == "power_r2_binned" else "R²"
    if not o:
        return f"H1 not computable: {h1.get('error', 'no usable run')}"
    verdict = "supported" if h1.get("answer") == "supported" else "not supported"
    return (
        f"H1 {verdict}: {o['k']} of {o['n']} runs have post-knee power-law {col} ≥ {h1['threshold']:g} "
        f"({fmt_pct(o['share'])}, 95 % CI {fmt_pct(o['ci_low'])}–{fmt_pct(o['ci_high'])}; target ≥ {fmt_pct(h1['target_share'])})"
    )


def _h2_line(stats: Mapping[str, Any]) -> str:
    h2 = stats.get("h2") or {}
    o = h2.get("overall")
    if not o:
        return f"H2 not computable: {h2.get('error', 'no usable run')}"
    verdict = "supported" if h2.get("answer") == "supported" else "not supported"
    return (
        f"H2 {verdict}: α_early vs best validation CE, Spearman ρ = {o['spearman_rho']:.2f} "
        f"(p = {fmt_p(o['spearman_p'])}, n = {o['n']}; need |ρ| ≥ {h2['min_abs_rho']:g}, p < {h2['max_p']:g})"
    )


def _suptitle(fig: Figure, text: str) -> None:
    """Left-aligned figure title, wrapped to the figure width."""
    width = max(40, int(fig.get_figwidth() * 9.5))
    fig.suptitle(textwrap.fill(text, width), x=0.01, ha="left")


def _short_run(variant: str, run: str) -> str:
    return f"{variant} {run}"


# ---------------------------------------------------------------- 1. mosaic
def plot_loss_mosaic(
    table: pd.DataFrame, curves: Mapping[str, Mapping[str, Any]], stats: Mapping[str, Any]
) -> Figure:
    """Six loss curves in log-log (the three highest and three lowest R²) with fits and knees."""
    r2col = (stats.get("h1") or {}).get("statistic", "power_r2")
    thr = (stats.get("h1") or {}).get("threshold", 0.98)
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
            ax.scatter(np.asarray(c["step"], float) + 1, c["loss"], s=3, color="0.75", alpha=0.6, lw=0,
                       label="per-step loss", rasterized=True)
        b = c["binned"]
        ax.plot(np.asarray(b["step"], float) + 1, b["loss"], color="black", lw=1.3, label="log-binned mean")
        for name in ("exponential", "power", "two_power"):
            if m.get(name):
                ax.plot(np.asarray(m["step"], float) + 1, m[name], **MODEL_STYLES[name])
        row = fit["row"]
        knee = row.get("knee_found")
        if knee and m.get("power_post_knee"):
            ax.plot(np.asarray(m["power_post_knee_step"], float) + 1, m["power_post_knee"], **MODEL_STYLES["power_post_knee"])
        ymin, ymax = ax.get_ylim()
        for meth, col in KNEE_COLORS.items():
            step = row.get(f"knee_{meth}_step")
            if step is not None and row.get(f"knee_{meth}_found"):
                ax.axvline(step + 1, color=col, lw=1.2, ls="-" if meth == "broken_power_lrt" else "-.",
                           label=KNEE_LABELS[meth])
        ax.set_xscale("log")
        ax.set_yscale("log")
        r2 = row.get(r2col)
        alpha = row.get("power_exponent")
        knee_txt = f"knee at epoch {row['knee_epoch']:.1f}" if knee and row.get("knee_epoch") is not None else "no LRT knee"
        ax.set_title(
            f"{_short_run(r.variant, r.run)}  ({rank} R²)\n"
            f"R² = {r2:.3f}, power-law exponent {alpha:.2f}, {knee_txt}"
            if alpha is not None else f"{_short_run(r.variant, r.run)}\nR² = {r2:.3f}"
        )
        ax.set_xlabel("optimizer step + 1 (log scale)")
        ax.set_ylabel(f"training loss ({unit}, log scale)")
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=5, frameon=False,
                   markerscale=3)
    best = ranked["_r2"].max() if len(ranked) else float("nan")
    worst = ranked["_r2"].min() if len(ranked) else float("nan")
    if len(ranked):
        n_hit = int((ranked["_r2"] >= thr).sum())
        head = (
            f"Loss curves with the highest and lowest power-law R² (best {best:.3f}, worst {worst:.3f}): "
            f"{n_hit} of {len(ranked)} usable runs reach R² ≥ {thr:g}"
        )
    else:
        head = "Loss curves: no usable run to show"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 2. R² histogram
def plot_r2_histogram(table: pd.DataFrame, stats: Mapping[str, Any]) -> Figure:
    """Histogram of the H1 R² (and the other R² definition), with the threshold line."""
    h1 = stats.get("h1") or {}
    col = h1.get("statistic", "power_r2")
    other = "power_r2_binned" if col == "power_r2" else "power_r2"
    thr = float(h1.get("threshold", 0.98))
    ok = _ok(table)
    a, b = _num(ok, col).dropna().to_numpy(), _num(ok, other).dropna().to_numpy()
    fig, ax = plt.subplots(figsize=(9, 5.2), constrained_layout=True)
    if a.size == 0 and b.size == 0:
        _empty(ax, "no usable run: no R² to show")
    else:
        lo = float(np.nanmin(np.concatenate([a, b, [thr]])))
        lo = max(min(math.floor(lo * 50) / 50, thr - 0.02), -1.0)
        bins = np.linspace(lo, 1.0, int(round((1.0 - lo) / 0.01)) + 1)
        if bins.size > 61:
            bins = np.linspace(lo, 1.0, 61)
        names = {"power_r2": "R² over every step (H1 statistic)", "power_r2_binned": "R² over log-binned means"}
        if col != "power_r2":
            names = {"power_r2": "R² over every step", "power_r2_binned": "R² over log-binned means (H1 statistic)"}
        ax.hist(a, bins=bins, color="#1f77b4", alpha=0.85, label=f"{names[col]}, n = {a.size}")
        ax.hist(b, bins=bins, histtype="step", lw=2, color="#ff7f0e", label=f"{names[other]}, n = {b.size}")
        ax.axvline(thr, color="#c62828", lw=2, ls="--", label=f"H1 threshold R² = {thr:g}")
        ax.set_xlim(bins[0], 1.0)
        ax.legend(loc="upper left")
    ax.set_xlabel("R² of the post-knee power-law fit to log training loss (dimensionless)")
    ax.set_ylabel("runs (count)")
    ax.set_title(_h1_line(stats), loc="left")
    _suptitle(fig, "How straight is the loss after the knee? Power-law R² per run")
    return fig


# ---------------------------------------------------------------- 3. α vs best val CE
def plot_alpha_vs_val(table: pd.DataFrame, stats: Mapping[str, Any]) -> Figure:
    """α_early vs best validation CE, coloured by optimizer; α_full in grey."""
    ok = _ok(table)
    unit = _unit(table)
    fig, ax = plt.subplots(figsize=(9, 7), constrained_layout=True)
    win = (stats.get("settings") or {}).get("early_window") or [5, 15]
    y = _num(ok, "best_val_ce")
    xe, xf = _num(ok, "alpha_early"), _num(ok, "alpha_full")
    have = (y.notna() & (xe.notna() | xf.notna())).any()
    if not have:
        _empty(ax, "no usable run with α and a best validation CE")
    else:
        h2, h2f = stats.get("h2") or {}, stats.get("h2_alpha_full") or {}
        of = h2f.get("overall")
        lab_f = "α_full (knee → end; grey rings, joined to α_early), all runs" + (
            f": ρ = {of['spearman_rho']:.2f}, p = {fmt_p(of['spearman_p'])}" if of else ""
        )
        ax.scatter(xf, y, s=36, facecolor="none", edgecolor="0.55", lw=1.2, label=lab_f, zorder=2)
        for xa, xb, yy in zip(xe, xf, y):
            if np.isfinite([xa, xb, yy]).all():
                ax.plot([xa, xb], [yy, yy], color="0.85", lw=0.8, zorder=1)
        opt_colors = {"sgd": "#1f77b4", "adamw": "#d62728"}
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        variants = _variants(ok)
        groups = (h2.get("by_group") or {})
        for opt, g in ok.groupby("optimizer", sort=True):
            c = groups.get(f"optimizer={opt}")
            lab = f"α_early (epochs {win[0]:g}–{win[1]:g}), {opt}, n = {len(g)}" + (
                f": ρ = {c['spearman_rho']:.2f}, p = {fmt_p(c['spearman_p'])}" if c else ""
            )
            color = opt_colors.get(str(opt), None)
            first = True
            for v, gv in g.groupby("variant", sort=False):
                ax.scatter(_num(gv, "alpha_early"), _num(gv, "best_val_ce"), s=55, color=color,
                           marker=markers[variants.index(str(v)) % len(markers)], edgecolor="white", lw=0.6,
                           label=lab if first else None, zorder=3)
                first = False
        o = h2.get("overall")
        if o:
            ax.plot([], [], " ", label=(f"all α_early: Spearman ρ = {o['spearman_rho']:.2f} (p = {fmt_p(o['spearman_p'])}), "
                                        f"Pearson r = {o['pearson_r']:.2f} (p = {fmt_p(o['pearson_p'])})"))
        vh = [Line2D([], [], marker=markers[i % len(markers)], ls="", color="0.3", label=f"marker: {v}")
              for i, v in enumerate(variants)]
        hs, ls = ax.get_legend_handles_labels()
        fig.legend(hs + vh, ls + [h.get_label() for h in vh], loc="outside lower center", ncol=2, fontsize=8,
                   frameon=False)
        if (y > 0).all():
            ax.set_yscale("log")
    ax.set_xlabel("log-log slope α of the training loss (dimensionless; larger = faster decrease)")
    ax.set_ylabel(f"best validation cross-entropy ({unit}, log scale)")
    ax.set_title(_h2_line(stats), loc="left")
    _suptitle(fig, "Does the early slope predict the best validation loss?")
    return fig


# ---------------------------------------------------------------- 4. ΔAIC
def plot_delta_aic(table: pd.DataFrame) -> Figure:
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
    for j, m in enumerate(models):
        vals = _num(ok, f"{m}_delta_aic").to_numpy()
        ax.bar(x + (j - 1) * w, np.where(np.isfinite(vals), np.maximum(vals, floor), np.nan), w,
               color=colors[m], label=MODEL_STYLES[m]["label"].split(" (")[0] if m != "two_power" else "two-power law")
    ax.set_yscale("log")
    ax.axhline(2, color="0.3", lw=1, ls="--", label="ΔAIC = 2")
    ax.axhline(10, color="0.3", lw=1, ls=":", label="ΔAIC = 10")
    if n <= 60:
        ax.set_xticks(x, [str(r) for r in ok["run"]], rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xticks([])
    for v, g in ok.groupby("variant", sort=False):
        xs = x[g.index]
        ax.annotate(str(v), xy=((xs.min() + xs.max()) / 2, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontweight="bold")
    ax.set_ylabel("ΔAIC vs the best model per run\n(autocorrelation-aware; log scale, 0 drawn at 0.1)")
    ax.set_xlabel("run (grouped by variant)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=5, frameon=False)
    best = ok["best_aic"].value_counts() if "best_aic" in ok.columns else pd.Series(dtype=int)
    n_pow = int(best.get("power", 0))
    n_two = int(best.get("two_power", 0))
    n_exp = int(best.get("exponential", 0))
    med_exp = float(np.nanmedian(_num(ok, "exponential_delta_aic") - _num(ok, "power_delta_aic")))
    _suptitle(fig, f"Best model by AIC: power law in {n_pow}, two-power in {n_two}, exponential in {n_exp} of {n} runs; "
        f"the exponential is worse than the power law by median ΔAIC = {med_exp:.0f}")
    return fig


# ---------------------------------------------------------------- 5. knee epochs
KNEE_SHORT = {"broken_power_lrt": "LRT", "burn_in_aic": "AIC", "ce_threshold": "CE", "hinge": "hinge"}


def _found(g: pd.DataFrame, method: str) -> np.ndarray:
    e = _num(g, f"knee_{method}_epoch")
    f = g.get(f"knee_{method}_found")
    if f is not None:
        e = e[f.astype("boolean").fillna(False).astype(bool)]
    return e.dropna().to_numpy()


def plot_knee_epochs(table: pd.DataFrame, methods: Sequence[str] | None = None) -> Figure:
    """Knee epoch per variant, one box per knee method (found knees only)."""
    ok = _ok(table)
    if methods is None:
        methods = [m for m in KNEE_COLORS if f"knee_{m}_epoch" in table.columns]
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
            parts.append(f"{KNEE_SHORT.get(m, m)} {e.size}/{len(g)}")
            pos = i + (j - (k - 1) / 2) * w
            col = KNEE_COLORS.get(m, "0.5")
            if e.size:
                ax.boxplot([e], positions=[pos], widths=w * 0.8, patch_artist=True, showfliers=False,
                           boxprops=dict(facecolor=col, alpha=0.35), medianprops=dict(color=col, lw=2))
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
    fig.legend(handles=[Patch(facecolor=KNEE_COLORS.get(m, "0.5"), alpha=0.6,
                              label=f"{KNEE_LABELS.get(m, m)}: {found_all.get(m, 0)} of {len(ok)} runs") for m in methods],
               loc="outside lower center", ncol=min(4, k), frameon=False)
    n_lrt = found_all.get("broken_power_lrt", 0)
    head = f"Knee epoch per variant: the calibrated LRT detector finds a knee in {n_lrt} of {len(ok)} usable runs"
    if n_lrt:
        head += f" (median epoch {np.median(_found(ok, 'broken_power_lrt')):.1f})"
    others = [m for m in methods if m != "broken_power_lrt" and found_all.get(m)]
    if others:
        m = others[0]
        head += f"; the {KNEE_LABELS[m]} is at median epoch {np.median(_found(ok, m)):.1f}"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 6. window robustness
def plot_window_heatmap(stats: Mapping[str, Any]) -> Figure:
    """Spearman ρ(α over [start, stop), best val CE) over shifted windows."""
    hm = stats.get("window_heatmap")
    fig, ax = plt.subplots(figsize=(9, 7.4), constrained_layout=True)
    if not hm:
        _empty(ax, "no usable run with a window scan")
        _suptitle(fig, "α window robustness: nothing to show")
        return fig
    starts, ends = np.asarray(hm["starts"], float), np.asarray(hm["ends"], float)
    rho = np.array([[np.nan if v is None else v for v in r] for r in hm["rho"]], dtype=float)
    p = np.array([[np.nan if v is None else v for v in r] for r in hm["p_value"]], dtype=float)
    h2 = stats.get("h2") or {}
    min_rho, max_p = float(h2.get("min_abs_rho", 0.7)), float(h2.get("max_p", 0.01))
    im = ax.imshow(rho, origin="lower", cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                   extent=(ends[0] - 0.5, ends[-1] + 0.5, starts[0] - 0.5, starts[-1] + 0.5))
    ax.grid(False)
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("Spearman ρ(α over the window, best validation CE)")
    if rho.size <= 225:
        for i, s0 in enumerate(starts):
            for j, e0 in enumerate(ends):
                if np.isfinite(rho[i, j]):
                    strong = abs(rho[i, j]) >= min_rho and p[i, j] < max_p
                    ax.text(e0, s0, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            fontweight="bold" if strong else "normal",
                            color="white" if abs(rho[i, j]) > 0.6 else "black")
    nom = hm.get("nominal") or [np.nan, np.nan]
    ax.add_patch(Rectangle((nom[1] - 0.5, nom[0] - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xlabel("window stop (epoch, exclusive)")
    ax.set_ylabel("window start (epoch)")
    valid = np.isfinite(rho)
    strong = valid & (np.abs(rho) >= min_rho) & (p < max_p)
    i0 = np.flatnonzero(np.isclose(starts, nom[0]))
    j0 = np.flatnonzero(np.isclose(ends, nom[1]))
    nominal = rho[i0[0], j0[0]] if i0.size and j0.size else float("nan")
    ax.set_title(f"Black box: the nominal window {nom[0]:g}–{nom[1]:g}; bold: |ρ| ≥ {min_rho:g} and p < {max_p:g}; "
                 "blank: window empty or too short", loc="left", fontsize=9)
    _suptitle(fig, f"Window robustness of H2: ρ = {nominal:.2f} at epochs {nom[0]:g}–{nom[1]:g}; "
        f"|ρ| ≥ {min_rho:g} with p < {max_p:g} in {int(strong.sum())} of {int(valid.sum())} windows")
    return fig


# ---------------------------------------------------------------- 7. LR × WD
def plot_lr_wd_heatmap(table: pd.DataFrame) -> Figure:
    """Mean best validation CE over seeds for each LR × WD, one panel per variant."""
    unit = _unit(table)
    variants = _variants(table)
    nv = max(1, len(variants))
    ncol = 2 if nv in (2, 4) else min(nv, 3)
    nrow = math.ceil(nv / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.9 * ncol + 1.2, 3.6 * nrow + 0.9), squeeze=False,
                             constrained_layout=True)
    ok = _ok(table).assign(_y=lambda d: _num(d, "best_val_ce"))
    ok = ok[np.isfinite(ok["_y"]) & (ok["_y"] > 0)]
    norm = LogNorm(vmin=ok["_y"].min(), vmax=max(ok["_y"].max(), ok["_y"].min() * 1.0001)) if len(ok) else None
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
            grid[i, j] = float(np.exp(np.log(gg["_y"]).mean()))
            cnt[i, j] = len(gg)
        im = ax.imshow(grid, origin="lower", cmap="viridis_r", norm=norm, aspect="auto")
        for i in range(len(wds)):
            for j in range(len(lrs)):
                total = int(((pd.to_numeric(g_all["lr"]) == lrs[j]) & (pd.to_numeric(g_all["weight_decay"]) == wds[i])).sum())
                txt = f"{grid[i, j]:.3g}\n{cnt[i, j]}/{total} seeds" if np.isfinite(grid[i, j]) else f"no run\n0/{total}"
                color = "black"
                if np.isfinite(grid[i, j]):
                    r, g_, b_, _ = im.cmap(im.norm(grid[i, j]))
                    color = "white" if 0.299 * r + 0.587 * g_ + 0.114 * b_ < 0.5 else "black"
                ax.text(j, i, txt, ha="center", va="center", fontsize=9, color=color)
                if np.isfinite(grid[i, j]) and (best is None or grid[i, j] < best[0]):
                    best = (grid[i, j], v, lrs[j], wds[i])
        ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
        ax.set_yticks(range(len(wds)), [f"{x:g}" for x in wds])
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("weight decay")
        ax.set_title(str(v))
        ax.grid(False)
    for ax in axes.ravel()[len(variants):]:
        ax.set_visible(False)
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85)
        cb.set_label(f"best validation CE ({unit}; geometric mean over seeds)")
    if best:
        head = (f"Best validation CE by LR × weight decay: lowest {best[0]:.3g} {unit} "
                f"in {best[1]} at lr = {best[2]:g}, wd = {best[3]:g}")
    else:
        head = "Best validation CE by LR × weight decay: no usable run"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 8. ablation
def plot_ablation(table: pd.DataFrame, stats: Mapping[str, Any]) -> Figure:
    """Per variant: share of runs with R² ≥ threshold (Wilson CI) and Spearman ρ (bootstrap CI)."""
    variants = _variants(table)
    colors = _variant_colors(variants)
    h1 = stats.get("h1") or {}
    h2 = stats.get("h2") or {}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(10, 2.3 * len(variants) + 4), 5.2), constrained_layout=True)
    x = np.arange(len(variants))
    byv = h1.get("by_variant") or {}
    for i, v in enumerate(variants):
        s = byv.get(v)
        if s:
            a1.bar(i, 100 * s["share"], color=colors[v], alpha=0.85)
            a1.errorbar(i, 100 * s["share"], yerr=[[100 * (s["share"] - s["ci_low"])], [100 * (s["ci_high"] - s["share"])]],
                        color="black", capsize=5)
            a1.annotate(f"{s['k']}/{s['n']}", (i, 100 * s["ci_high"]), xytext=(0, 4), textcoords="offset points",
                        ha="center", fontsize=9)
        else:
            a1.annotate("no usable run", (i, 2), ha="center", rotation=90, color="0.4", fontsize=9)
    if h1:
        a1.axhline(100 * h1.get("target_share", 0.8), color="#c62828", ls="--", lw=1.5,
                   label=f"H1 target {fmt_pct(h1.get('target_share', 0.8))}")
        a1.legend(loc="upper right")
    a1.set_ylim(0, 105)
    a1.set_xticks(x, variants)
    a1.set_ylabel(f"runs with R² ≥ {h1.get('threshold', 0.98):g} (%, 95 % Wilson CI)")
    a1.set_title("H1 per variant: " + ", ".join(f"{v} {fmt_pct((byv.get(v) or {}).get('share', float('nan')))}" for v in variants),
                 loc="left", fontsize=9)
    byg = h2.get("by_group") or {}
    for i, v in enumerate(variants):
        c = byg.get(f"variant={v}")
        if c:
            a2.bar(i, c["spearman_rho"], color=colors[v], alpha=0.85)
            a2.errorbar(i, c["spearman_rho"], yerr=[[c["spearman_rho"] - c["spearman_ci_low"]],
                                                    [c["spearman_ci_high"] - c["spearman_rho"]]], color="black", capsize=5)
            a2.annotate(f"n={c['n']}\np={fmt_p(c['spearman_p'])}", (i, max(c["spearman_ci_high"], c["spearman_rho"])),
                        xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8)
        else:
            a2.annotate("too few runs", (i, 0.05), ha="center", rotation=90, color="0.4", fontsize=9)
    thr = float(h2.get("min_abs_rho", 0.7))
    a2.axhline(thr, color="#c62828", ls="--", lw=1.5, label=f"|ρ| = {thr:g}")
    a2.axhline(-thr, color="#c62828", ls="--", lw=1.5)
    a2.axhline(0, color="black", lw=0.8)
    a2.set_ylim(-1.15, 1.3)
    a2.set_xticks(x, variants)
    a2.set_ylabel("Spearman ρ(α_early, best val CE) (95 % bootstrap CI)")
    a2.legend(loc="lower right")
    a2.set_title("H2 per variant (few runs per variant: wide intervals)", loc="left", fontsize=9)
    o1, o2 = h1.get("overall"), h2.get("overall")
    head = "Ablation by variant: "
    head += f"H1 share {fmt_pct(o1['share'])} overall" if o1 else "H1 not computable"
    head += f"; H2 ρ = {o2['spearman_rho']:.2f} overall" if o2 else "; H2 not computable"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- 9. run health
def plot_run_health(table: pd.DataFrame) -> Figure:
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
        ax.barh(range(len(variants)), vals, left=left, color=STATUS_COLORS[s], label=s.replace("_", " "), edgecolor="white")
        for i, (l0, n) in enumerate(zip(left, vals)):
            if n:
                ax.text(l0 + n / 2, i, str(n), ha="center", va="center", color="white" if s != "too_short" else "black",
                        fontweight="bold")
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
    others = ", ".join(f"{int((g['status'] == s).sum())} {s.replace('_', ' ')}" for s in STATUSES[1:]
                       if (g["status"] == s).any())
    head = f"{variant}: {len(ok)} of {len(g)} runs usable" + (f" ({others})" if others else "")
    if len(ok) and a.notna().any():
        head += f"; α_early median {a.median():.2f} (range {a.min():.2f}–{a.max():.2f})"
    _suptitle(fig, head)
    return fig


# ---------------------------------------------------------------- output
#: figure name -> what it shows (the order of the report)
FIGURES = {
    "run_health": "Run health per variant (ok / too short / invalid / diverged / missing)",
    "r2_histogram": "H1: histogram of post-knee power-law R² with the threshold",
    "loss_curves_mosaic": "H1: the three highest- and three lowest-R² loss curves with fits and knees",
    "alpha_vs_best_val": "H2: α_early vs best validation CE (α_full in grey)",
    "window_robustness": "H2: Spearman ρ for shifted α windows",
    "ablation": "H1 share and H2 ρ per variant",
    "delta_aic": "Model comparison: ΔAIC of exponential, power and two-power fits",
    "knee_epochs": "Knee epochs per variant and detector",
    "lr_wd_best_val": "Best validation CE over the LR × WD grid",
}


def save_figure(fig: Figure, paths: Sequence[str | Path], *, dpi: int = 150) -> None:
    for p in paths:
        p = Path(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=dpi, metadata={"Date": None} if p.suffix == ".svg" else None)
    plt.close(fig)


def figure_builders(
    table: pd.DataFrame, stats: Mapping[str, Any], curves: Mapping[str, Mapping[str, Any]]
) -> dict[str, Callable[[], Figure]]:
    return {
        "run_health": lambda: plot_run_health(table),
        "r2_histogram": lambda: plot_r2_histogram(table, stats),
        "loss_curves_mosaic": lambda: plot_loss_mosaic(table, curves, stats),
        "alpha_vs_best_val": lambda: plot_alpha_vs_val(table, stats),
        "window_robustness": lambda: plot_window_heatmap(stats),
        "ablation": lambda: plot_ablation(table, stats),
        "delta_aic": lambda: plot_delta_aic(table),
        "knee_epochs": lambda: plot_knee_epochs(table),
        "lr_wd_best_val": lambda: plot_lr_wd_heatmap(table),
    }


def render_figures(
    table: pd.DataFrame,
    stats: Mapping[str, Any],
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
    builders = figure_builders(table, stats, curves)
    with plt.rc_context(PLT_RC):
        for name, paths in outputs.items():
            save_figure(builders[name](), paths)
        for v, paths in (variant_outputs or {}).items():
            save_figure(plot_variant_curves(table, curves, v), paths)
