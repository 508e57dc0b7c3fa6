"""``summary.md``: the H1 and H2 answers in plain sentences, the figures, and every
run that is not in the statistics with its reason."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from ._io import STATUSES, fmt_p, fmt_pct

__all__ = ["render_summary"]


def _f(x, fmt: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _r2_name(col: str) -> str:
    return "R² over log-binned means" if col == "power_r2_binned" else "R² over every logged step"


def _h1_section(stats: Mapping[str, Any], table: pd.DataFrame, fig) -> list[str]:
    h1, sens = stats["h1"], stats.get("h1_sensitivity") or {}
    out = ["## H1 — after the knee, is the training loss a power law?", ""]
    o = h1.get("overall")
    if not o:
        out += [f"**Not computable:** {h1.get('error', 'no usable run')}.", ""]
    else:
        verdict = "Supported" if h1["answer"] == "supported" else "Not supported"
        out += [
            f"**{verdict}.** {o['k']} of {o['n']} usable runs ({fmt_pct(o['share'])}, "
            f"{fmt_pct(h1['confidence'])} Wilson interval {fmt_pct(o['ci_low'])}–{fmt_pct(o['ci_high'])}) have a "
            f"post-knee power-law fit with {_r2_name(h1['statistic'])} ≥ {h1['threshold']:g}; "
            f"the success criterion is at least {fmt_pct(h1['target_share'])} of the runs.",
            "",
        ]
        so = sens.get("overall")
        if so:
            out += [
                f"Sensitivity: with the {_r2_name(sens['statistic'])} instead, {so['k']} of {so['n']} runs "
                f"({fmt_pct(so['share'])}, interval {fmt_pct(so['ci_low'])}–{fmt_pct(so['ci_high'])}) reach "
                f"{sens['threshold']:g}.",
                "",
            ]
        ok = table[table["status"] == "ok"]
        r2 = pd.to_numeric(ok.get(h1["statistic"]), errors="coerce").dropna()
        if len(r2):
            out += [f"The R² of the usable runs spans {r2.min():.3f}–{r2.max():.3f} (median {r2.median():.3f})."]
        if "knee_found" in ok.columns:
            nk = int(ok["knee_found"].fillna(False).astype(bool).sum())
            out += [
                f"The calibrated knee detector (broken_power_lrt) found a knee in {nk} of {len(ok)} usable runs; "
                "where it found none, the power law (with floor and transient shift) is fitted to the whole curve."
            ]
        out += ["", _table(
            ["variant", "runs ≥ threshold", "share", "Wilson interval"],
            [[v, f"{s['k']} / {s['n']}", fmt_pct(s["share"]), f"{fmt_pct(s['ci_low'])}–{fmt_pct(s['ci_high'])}"]
             for v, s in (h1.get("by_variant") or {}).items()],
        ), ""]
    out += [fig("r2_histogram"), "", fig("loss_curves_mosaic"), ""]
    return out


def _direction(rho: float) -> str:
    if rho > 0:
        return "runs whose loss fell faster in the early window reached a *higher* (worse) best validation CE"
    if rho < 0:
        return "runs whose loss fell faster in the early window reached a *lower* (better) best validation CE"
    return "no monotone relation"


def _h2_section(stats: Mapping[str, Any], fig) -> list[str]:
    h2, hf = stats["h2"], stats.get("h2_alpha_full") or {}
    win = stats.get("settings", {}).get("early_window", [5, 15])
    out = ["## H2 — does the early slope α_early predict the best validation cross-entropy?", ""]
    o = h2.get("overall")
    if not o:
        out += [f"**Not computable:** {h2.get('error', 'no usable run')}.", ""]
    else:
        verdict = "Supported" if h2["answer"] == "supported" else "Not supported"
        out += [
            f"**{verdict}.** Over {o['n']} usable runs, the log-log slope over epochs {win[0]:g}–{win[1]:g} "
            f"(α_early) and the best validation CE have Spearman ρ = {o['spearman_rho']:.2f} "
            f"(p = {fmt_p(o['spearman_p'])}, {fmt_pct(h2['confidence'])} bootstrap interval "
            f"{_f(o['spearman_ci_low'])} to {_f(o['spearman_ci_high'])}) and Pearson r = {o['pearson_r']:.2f} "
            f"(p = {fmt_p(o['pearson_p'])}); the success criterion is |ρ| ≥ {h2['min_abs_rho']:g} with "
            f"p < {h2['max_p']:g}. "
            + (f"The sign says that {_direction(o['spearman_rho'])}."
               if o["spearman_p"] < h2["max_p"]
               else f"The sign, not significant here, would mean that {_direction(o['spearman_rho'])}."),
            "",
        ]
        fo = hf.get("overall")
        if fo:
            out += [
                f"For comparison, the slope from the knee to the end (α_full) gives ρ = {fo['spearman_rho']:.2f} "
                f"(p = {fmt_p(fo['spearman_p'])}) and r = {fo['pearson_r']:.2f} (p = {fmt_p(fo['pearson_p'])}).",
                "",
            ]
        rows = [["all", o["n"], _f(o["spearman_rho"]), fmt_p(o["spearman_p"]),
                 f"{_f(o['spearman_ci_low'])} to {_f(o['spearman_ci_high'])}", _f(o["pearson_r"]), fmt_p(o["pearson_p"]),
                 _f(fo["spearman_rho"]) if fo else "n/a"]]
        fg = hf.get("by_group") or {}
        for g, c in (h2.get("by_group") or {}).items():
            rows.append([g, c["n"], _f(c["spearman_rho"]), fmt_p(c["spearman_p"]),
                         f"{_f(c['spearman_ci_low'])} to {_f(c['spearman_ci_high'])}", _f(c["pearson_r"]),
                         fmt_p(c["pearson_p"]), _f(fg[g]["spearman_rho"]) if g in fg else "n/a"])
        out += [_table(["group", "n", "Spearman ρ", "p", "bootstrap interval", "Pearson r", "p", "ρ with α_full"], rows), ""]
        if h2.get("skipped_groups"):
            out += ["Groups too small for a correlation: "
                    + "; ".join(f"{s['group']} ({s['reason']})" for s in h2["skipped_groups"]) + ".", ""]
    hm = stats.get("window_heatmap")
    if hm:
        import numpy as np

        rho = np.array([[np.nan if v is None else v for v in r] for r in hm["rho"]], dtype=float)
        p = np.array([[np.nan if v is None else v for v in r] for r in hm["p_value"]], dtype=float)
        valid = np.isfinite(rho)
        strong = valid & (np.abs(rho) >= h2["min_abs_rho"]) & (p < h2["max_p"])
        out += [
            f"Window robustness: shifting the window's start and stop by up to ±"
            f"{(hm['ends'][-1] - hm['ends'][0]) / 2:g} epochs, ρ ranges over "
            f"{np.nanmin(rho):.2f} to {np.nanmax(rho):.2f}; {int(strong.sum())} of {int(valid.sum())} windows "
            f"meet the criterion.",
            "",
        ]
    out += [fig("alpha_vs_best_val"), "", fig("window_robustness"), ""]
    return out


def _excluded_section(table: pd.DataFrame, stats: Mapping[str, Any]) -> list[str]:
    out = ["## Runs not in the statistics", ""]
    bad = table[table["status"] != "ok"]
    if bad.empty:
        out += ["None: every run of the config was fitted and is in the statistics.", ""]
    else:
        out += [
            f"{len(bad)} of {len(table)} runs are excluded from H1 and H2:",
            "",
            _table(["variant", "run", "status", "reason"],
                   [[r.variant, r.run, r.status, r.reason or ""] for r in bad.itertuples()]),
            "",
        ]
    extra = []
    for key, name in (("h1", "H1"), ("h2", "H2"), ("h2_alpha_full", "H2 with α_full")):
        for e in (stats.get(key) or {}).get("excluded") or []:
            if not any(e["reason"].startswith(s) for s in STATUSES):
                extra.append([name, e["run"], e["reason"]])
    if extra:
        out += ["Usable runs left out of one statistic because a number it needs is missing:", "",
                _table(["statistic", "run", "reason"], extra), ""]
    return out


def _micro_batch_section(table: pd.DataFrame) -> list[str]:
    """Runs whose training ran out of GPU memory and continued with a smaller
    micro-batch (same effective batch; BatchNorm saw the smaller micro-batches)."""
    if "oom_fallbacks" not in table.columns:
        return []
    hit = table[pd.to_numeric(table["oom_fallbacks"], errors="coerce").fillna(0) > 0]
    if hit.empty:
        return []
    return ["## Out-of-memory fallbacks", "",
            f"{len(hit)} run(s) ran out of GPU memory and finished with a smaller micro-batch and gradient "
            "accumulation (effective batch, LR schedule and step count unchanged; BatchNorm statistics were "
            "computed per micro-batch from then on):", "",
            _table(["variant", "run", "status", "micro-batch", "fallbacks"],
                   [[r.variant, r.run, r.status, f"{r.micro_batch:.0f}", int(r.oom_fallbacks)]
                    for r in hit.itertuples()]), ""]


def render_summary(
    table: pd.DataFrame,
    stats: Mapping[str, Any],
    figure_paths: Mapping[str, str],
    *,
    variant_figure_paths: Mapping[str, str] | None = None,
    table_paths: Mapping[str, str] | None = None,
    partial: bool = False,
) -> str:
    """The markdown text of ``summary.md``.

    Parameters
    ----------
    table : DataFrame
        Per-run table (one row per run of the config).
    stats : mapping
        From :func:`loss_slope.report.summarize.study_statistics`.
    figure_paths : mapping
        Figure name -> path relative to the summary (PNG).
    variant_figure_paths : mapping, optional
        Variant -> its loss-curve figure, relative.
    table_paths : mapping, optional
        Label -> table file, relative (listed at the end).
    partial : bool
        A partial report (built from the runs whose training finished).
    """

    def fig(name: str) -> str:
        path = figure_paths.get(name)
        return f"![{name.replace('_', ' ')}]({path})" if path else ""

    counts = stats["counts"]
    n = stats["n_runs"]
    title = f"# loss-slope study `{stats.get('study') or 'study'}`" + (" — partial report" if partial else "")
    health = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES if s != "ok")
    out = [title, "", f"{n} runs in the config: **{counts['ok']} usable** ({health})."]
    if counts.get("missing"):
        out += ["", f"> **Partial sweep:** {counts['missing']} run(s) have no fit (training not finished); "
                "they are listed below and every statistic uses only the usable runs."]
    out += ["", fig("run_health"), ""]
    out += _h1_section(stats, table, fig)
    out += _h2_section(stats, fig)
    out += ["## Per variant", "", fig("ablation"), ""]
    if variant_figure_paths:
        out += [" ".join(f"[{v}]({p})" for v, p in variant_figure_paths.items()) + " — loss curves of every run per variant.", ""]
    out += ["## Model comparison, knees and the LR × WD grid", "", fig("delta_aic"), "", fig("knee_epochs"), "",
            fig("lr_wd_best_val"), ""]
    out += _excluded_section(table, stats)
    out += _micro_batch_section(table)
    if table_paths:
        out += ["## Files", ""] + [f"- [{label}]({p})" for label, p in table_paths.items()] + [""]
    st = stats.get("settings", {}).get("study", {})
    if st:
        out += ["## Settings", "", "`analysis.study`: " + ", ".join(f"`{k}` = {v}" for k, v in st.items()) + "."]
        out += [f"α_early window: epochs {stats['settings']['early_window'][0]:g}–{stats['settings']['early_window'][1]:g}.", ""]
    return "\n".join(out).rstrip() + "\n"
