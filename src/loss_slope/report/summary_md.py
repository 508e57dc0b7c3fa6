"""``summary.md``: the H1 and H2 answers in plain sentences, the figures, and every
run that is not in the statistics with its reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from . import verdicts as V
from ._io import STATUSES, fmt_level, fmt_num as _f, fmt_p, fmt_pct
from .registry import figures_in
from .results import Correlation, H1Criterion, H2Result, NotComputable
from .study_stats import StudyStats
from .truth import truth_markdown

__all__ = ["render_summary"]


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _h1_row(name: str, res: H1Criterion | NotComputable, n_targets: int) -> list[str]:
    """A criterion's row: runs, share, interval, then one verdict per target share (``n_targets`` columns)."""
    if not res.computable:
        return [res.extra.get("label", name), "—", "—", "—", f"not computable: {res.error}"] + [""] * (n_targets - 1)
    o = res.overall
    cols = [res.label or name, f"{o.k} / {o.n}", fmt_pct(o.share, targets=res.verdicts)]
    cols += [V.interval(o.ci_low, o.ci_high, pct=True, targets=res.verdicts)]
    cols += [f"{v} (vs {fmt_level(t)})" for t, v in res.verdicts.items()]
    return cols + [""] * (4 + n_targets - len(cols))


def _undecided_reason(run) -> str:
    """Why a usable run has no H1 verdict: the criterion's own reason, else the error it raised."""
    for col in ("h1_reason", "error_h1_single_power_law"):
        why = getattr(run, col, None)
        if isinstance(why, str) and why:
            return why
    return "no reason recorded"


def _skipped_variants_lines(skipped: Sequence[Mapping[str, str]]) -> list[str]:
    """One sentence naming each variant left out of a per-variant table, with its reason."""
    if not skipped:
        return []
    parts = [f"{s['variant']} ({s['reason']})" for s in skipped]
    return ["No per-variant estimate for " + "; ".join(parts) + ".", ""]


def _h1_section(stats: StudyStats, table: pd.DataFrame, figs) -> list[str]:
    h1 = stats.h1
    conf = stats.confidence
    main, literal = h1.main, h1.literal
    out = ["## H1 — after the knee, is the training loss one power law?", ""]
    out += [
        "**Defensible criterion** — after the knee found by the calibrated test, the curve is one power law: "
        "the same test finds no further break (nor an earlier one), a power law with two breaks fits the whole "
        "curve no better than one with a knee, and the exponent does not drift between the first and second half "
        "of the segment (docs/analysis.md). " + V.h1_criterion_sentence(main, confidence=conf),
        "",
    ]
    wf = main.with_excluded_as_failures if main.computable else None
    if wf:
        out += [V.h1_failures_sentence(wf, confidence=conf), ""]
    thr = stats.settings.study.r2_threshold
    out += [
        f"**The protocol's literal criterion** — straight-line log-log R² ≥ {_f(thr, 'g')} after the knee. "
        + V.h1_criterion_sentence(literal, confidence=conf)
        + " It measures the batch noise as much as the shape: an exact power law with realistic noise fails it and "
        "a broken one can pass it, so it is reported, not decided on.",
        "",
    ]
    n_targets = max([len(res.verdicts) for res in h1.criteria.values() if res.computable] + [1])
    rows = [_h1_row(name, res, n_targets) for name, res in h1.criteria.items()]
    out += [_table(["criterion", "runs", "share", f"{fmt_level(conf)} interval"] + ["verdict"] * n_targets, rows), ""]
    byv = main.by_variant if main.computable else {}
    if byv:
        out += [
            "Per variant (defensible criterion; few cells per variant, so the intervals are wide):",
            "",
            _table(
                ["variant", "single power law", "share", f"{fmt_level(conf)} interval"],
                [
                    [
                        v,
                        f"{s.k} / {s.n}",
                        fmt_pct(s.share, targets=s.verdicts),
                        V.interval(s.ci_low, s.ci_high, pct=True, targets=s.verdicts),
                    ]
                    for v, s in byv.items()
                ],
            ),
            "",
        ]
    if main.computable:
        out += _skipped_variants_lines(main.skipped_variants)
    ok = table[table["status"] == "ok"]
    if "h1_single_power_law" in ok.columns:
        undecided = ok[ok["h1_single_power_law"].isna()]
        if len(undecided):
            out += [
                f"{len(undecided)} usable run(s) are undecided (no H1 verdict of their own):",
                "",
                _table(
                    ["variant", "run", "why"],
                    [[r.variant, r.run, _undecided_reason(r)] for r in undecided.itertuples()],
                ),
                "",
            ]
    if "knee_found" in ok.columns:
        nk = int(ok["knee_found"].fillna(False).astype(bool).sum())
        out += [
            f"The calibrated knee detector (broken_power_lrt) found a knee in {nk} of {len(ok)} usable runs; "
            "where it found none, the whole curve is tested.",
            "",
        ]
    out += figs("h1")
    return out


def _sign_clause(sign: str) -> str:
    """The configured direction of H2, as words after the |ρ| threshold ("" for either)."""
    return {"negative": ", negative", "positive": ", positive"}.get(str(sign), "")


def _corr_cell(c: Correlation | None, thresholds: Sequence[float]) -> str:
    if not c or c.spearman_rho is None:
        return "n/a"
    rho = _f(c.spearman_rho, thresholds=thresholds)
    return f"{rho} [{V.interval(c.spearman_ci_low, c.spearman_ci_high, targets=thresholds)}]"


def _n(c: Correlation | None) -> Any:
    return c.n if c else "n/a"


def _p(c: Correlation | None, max_p: float) -> str:
    return fmt_p(c.spearman_p if c else None, max_p=max_p)


def _skipped_cells_lines(h2: H2Result) -> list[str]:
    """The cells left out of the within-cell correlation, counted by their reason."""
    n = (h2.within_cell.n_skipped_cells if h2.within_cell else 0) or 0
    reasons = Counter(str(c["reason"]) for c in h2.skipped_cells or ())
    if not (n or reasons):
        return []
    detail = "; ".join(f"{k}: {why}" for why, k in reasons.items())
    n = max(n, sum(reasons.values()))
    return [f"{n} cell(s) add nothing within cells and are skipped" + (f" ({detail})." if detail else "."), ""]


def _h2_section(stats: StudyStats, figs) -> list[str]:
    section = stats.h2
    h2 = section.main
    win = stats.settings.early_window
    study = stats.settings.study
    rho_t = V.rho_thresholds({"min_abs_rho": study.h2_min_abs_rho, "sign": study.h2_sign})
    max_p = float(study.h2_max_p)
    out = ["## H2 — does the early slope α_early predict the best validation cross-entropy?", ""]
    if not h2.computable:
        out += [f"**Not computable:** {h2.error}.", ""]
    else:
        o, st = h2.overall, h2.settings
        out += [
            f"**Defensible verdict: {h2.verdict}.** Over {h2.n_runs} usable runs in {h2.n_cells} cells "
            f"(variant × LR × WD), the log-log slope over epochs {win[0]:g}–{win[1]:g} (α_early) and the best "
            f"validation CE have Spearman ρ = {_f(o.spearman_rho, thresholds=rho_t)} "
            f"({fmt_level(st['confidence'])} interval "
            f"{V.interval(o.spearman_ci_low, o.spearman_ci_high, targets=rho_t)}, "
            f"p = {fmt_p(o.spearman_p, max_p=max_p)}; both from "
            f"resampling whole cells and seeds). The criterion is {V.h2_criterion(st)} with p < "
            f"{float(st['max_p']):g}: "
            f"{V.h2_verdict_reason(h2.verdict, st, ci=(o.spearman_ci_low, o.spearman_ci_high))}.",
            "",
            "Where the relation comes from — between cells (the grid's LR and WD drive both numbers) or within a "
            "cell (seeds of one configuration):",
            "",
            _table(
                ["correlation", "n", f"Spearman ρ [{fmt_level(st['confidence'])} interval]", "p"],
                [
                    ["pooled over runs", o.n, _corr_cell(o, rho_t), _p(o, max_p)],
                    ["over cell means", _n(h2.cell_means), _corr_cell(h2.cell_means, rho_t), _p(h2.cell_means, max_p)],
                    [
                        "within cells (deviations from the cell mean)",
                        _n(h2.within_cell),
                        _corr_cell(h2.within_cell, rho_t),
                        _p(h2.within_cell, max_p),
                    ],
                    [
                        "within cells, net of the seeds' shared effect (seeds are shared across cells)",
                        _n(h2.within_cell_seed_adjusted),
                        _corr_cell(h2.within_cell_seed_adjusted, rho_t),
                        _p(h2.within_cell_seed_adjusted, max_p),
                    ],
                    [
                        "partial, given additive variant, LR and WD effects",
                        _n(h2.partial),
                        _corr_cell(h2.partial, rho_t),
                        _p(h2.partial, max_p),
                    ],
                ],
            ),
            "",
            "The within-cell rows answer whether the relation holds inside a cell; the second one, with the "
            "seed's effect shared by every cell taken out, is the one to read when seeds matter. The partial "
            "row removes "
            "only additive effects of the grid's factors: an interaction between them (LR × WD) stays in it, "
            "so it can show a relation between cells.",
            "",
        ]
        out += _skipped_cells_lines(h2)
        vl = h2.versus_level
        if vl:
            lo, hi = vl.difference_ci
            if lo is not None and lo > 0:
                meaning = "the slope ranks the best CE better than the loss level it is measured on"
            elif hi is not None and hi < 0:
                meaning = "the loss level ranks the best CE better than the slope does"
            else:
                meaning = "the data cannot tell the slope from the loss level it is measured on"
            out += [
                f"Slope or level? |ρ(α_early, CE)| − |ρ(early-end loss, CE)| = {_f(vl.difference)} "
                f"({fmt_level(st['confidence'])} paired interval {V.interval(lo, hi)}; ρ of the loss over the "
                "last epoch of the window = "
                f"{_f(vl.rho_level)}): {meaning}.",
                "",
            ]
        pred = h2.prediction
        if pred and pred.rmse:
            out += [
                "Leave-one-cell-out prediction of the best CE (RMSE, "
                f"{pred.n_cells} cells held out in turn; s.d. of the CE {_f(pred.sd, '.3g')}):",
                "",
                _table(["predictor", "RMSE"], [[k, _f(v, ".3g")] for k, v in pred.rmse.items()]),
                "",
            ]
    lit = section.h2_literal
    rule = (
        f"**The protocol's literal rule** "
        f"(|Spearman ρ| ≥ {study.h2_min_abs_rho:g}{_sign_clause(study.h2_sign)} with p < {study.h2_max_p:g}"
    )
    if lit.computable:
        out += [
            f"{rule}, the {lit.n} runs treated as independent): "
            f"ρ = {_f(lit.spearman_rho, thresholds=rho_t)}, p = {fmt_p(lit.spearman_p, max_p=max_p)} — "
            f"{lit.verdict}. Runs of one cell share their configuration and seeds are shared across cells, so this "
            "p-value overstates the evidence.",
            "",
        ]
    else:
        out += [f"{rule}): not computable: {lit.error}.", ""]
    rows = []
    for key, label in (
        ("h2_diverged_worst_rank", "diverged runs with an α_early, at the worst CE rank"),
        ("h2_alpha_full", "α_full (knee to end) instead of α_early"),
        ("h2_other_axis", f"α_early on the {(stats.other_time_axis or '').replace('_', ' ')} axis"),
    ):
        r = getattr(section, key)
        if r is None:
            continue
        if not r.computable:
            rows.append([label, "—", "—", f"not computable: {r.error}"])
        else:
            if key == "h2_diverged_worst_rank":
                label += f" ({len(r.diverged_at_worst_rank)} diverged)"
            rows.append([label, r.n_runs, _corr_cell(r.overall, rho_t), r.verdict])
    if rows:
        out += ["Sensitivity:", "", _table(["analysis", "runs", "pooled ρ [interval]", "verdict"], rows), ""]
    byv = h2.by_variant if h2.computable else {}
    if byv:
        out += [
            "Per variant (each has few cells, so its intervals are wide and rarely decide):",
            "",
            _table(
                ["variant", "runs", "cells", "pooled ρ [interval]", "within-cell ρ [interval]", "verdict"],
                [
                    [v, r.n_runs, r.n_cells, _corr_cell(r.overall, rho_t), _corr_cell(r.within_cell, rho_t), r.verdict]
                    for v, r in byv.items()
                ],
            ),
            "",
        ]
    if h2.computable:
        out += _skipped_variants_lines(h2.skipped_variants)
    hm = stats.window_heatmap
    if hm is not None and h2.computable and h2.settings:
        import numpy as np

        rho = np.array([[np.nan if v is None else v for v in r] for r in hm.rho], dtype=float)
        valid = np.isfinite(rho)
        if valid.any():
            out += [
                f"Window robustness: shifting the window's start and stop by up to ±"
                f"{(hm.ends[-1] - hm.ends[0]) / 2:g} epochs, the pooled ρ ranges over "
                f"{np.nanmin(rho):.2f} to {np.nanmax(rho):.2f} ({int(valid.sum())} windows).",
                "",
            ]
    out += figs("h2")
    return out


def _cells_section(stats: StudyStats) -> list[str]:
    cells = [c for c in stats.counts_by_cell if c.excluded]
    if not cells:
        return []
    return [
        "Runs excluded per cell (variant × LR × WD), next to both answers above:",
        "",
        _table(
            ["variant", "LR", "WD", "runs", "usable", "excluded", "by status"],
            [
                [
                    c.variant,
                    _f(c.lr, "g"),
                    _f(c.weight_decay, "g"),
                    c.runs,
                    c.ok,
                    c.excluded,
                    ", ".join(f"{c.of(s)} {s.replace('_', ' ')}" for s in STATUSES if s != "ok" and c.of(s)),
                ]
                for c in cells
            ],
        ),
        "",
    ]


def _missing_inputs(table: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, str]]:
    """(run, reason) of each usable run without one of ``columns`` (a statistic's inputs)."""
    ok = table[table["status"] == "ok"]
    out = []
    for r in ok.itertuples():
        gone = [c for c in columns if c not in ok.columns or pd.isna(getattr(r, c, None))]
        if gone:
            out.append((f"{r.variant}/{r.run}", "no " + ", no ".join(gone)))
    return out


def _sensitivity_coverage(stats: StudyStats) -> list[list[str]]:
    """Per computable statistic but the defensible H1 share (whose runs and variants its section
    names): how many usable runs it leaves out, why, and the variants it has no estimate for."""
    h2 = stats.h2
    checks = [
        (res.label or name, res)
        for name, res in stats.h1.criteria.items()
        if name != stats.h1.MAIN and res.computable and res.threshold is None
    ]
    checks += [
        (label, res)
        for label, res in (
            ("H2 (α_early)", h2.h2),
            ("H2 with α_full", h2.h2_alpha_full),
            ("H2, diverged runs at the worst CE rank", h2.h2_diverged_worst_rank),
            ("H2 on the other time axis", h2.h2_other_axis),
        )
        if res is not None and res.computable
    ]
    rows = []
    for label, res in checks:
        reasons = Counter(str(e["reason"]) for e in res.excluded)
        usable = {k: n for k, n in reasons.items() if not any(k.startswith(s) for s in STATUSES)}
        skipped = "; ".join(f"{v['variant']} ({v['reason']})" for v in res.skipped_variants) or "none"
        if usable or res.skipped_variants:
            left = "; ".join(f"{n} {why}" for why, n in usable.items()) or "none"
            rows.append([label, left, skipped])
    return rows


def _excluded_section(table: pd.DataFrame, stats: StudyStats) -> list[str]:
    out = ["## Runs not in the statistics", ""]
    bad = table[table["status"] != "ok"]
    main_h1, main_h2 = stats.h1.main, stats.h2.h2
    if bad.empty and main_h1.computable and main_h2.computable:
        out += ["None: every run of the config was fitted and is in the statistics.", ""]
    elif bad.empty:
        out += [
            "Every run of the config was fitted; a statistic above could not be computed (its reason is there).",
            "",
        ]
    else:
        out += [
            f"{len(bad)} of {len(table)} runs are excluded from H1 and H2:",
            "",
            _table(
                ["variant", "run", "status", "reason"],
                [[r.variant, r.run, r.status, r.reason or ""] for r in bad.itertuples()],
            ),
            "",
        ]
    extra = []
    h2 = stats.h2
    for res, name in (
        (stats.h1.main, "H1"),
        (h2.h2, "H2"),
        (h2.h2_alpha_full, "H2 with α_full"),
    ):
        for e in res.excluded if res.computable else ():
            if not any(e["reason"].startswith(s) for s in STATUSES):
                extra.append([name, e["run"], e["reason"]])
    # a statistic that could not be computed lists no runs of its own: its inputs' gaps say why
    if not main_h1.computable:
        column = str(main_h1.extra.get("column") or "h1_single_power_law")
        extra += [["H1", run, why] for run, why in _missing_inputs(table, [column, "seed"])]
    if not main_h2.computable:
        extra += [["H2", run, why] for run, why in _missing_inputs(table, ["alpha_early", "best_val_ce", "seed"])]
    if extra:
        out += [
            "Usable runs left out of one statistic because a number it needs is missing:",
            "",
            _table(["statistic", "run", "reason"], extra),
            "",
        ]
    coverage = _sensitivity_coverage(stats)
    if coverage:
        out += [
            "The other statistics are over fewer runs where a run has no number of their own, and some have no "
            "per-variant estimate:",
            "",
            _table(["statistic", "usable runs left out", "variants without an estimate"], coverage),
            "",
        ]
    return out


def _micro_batch_section(table: pd.DataFrame) -> list[str]:
    """Runs whose training ran out of GPU memory and continued with a smaller
    micro-batch (same effective batch; BatchNorm saw the smaller micro-batches)."""
    if "oom_fallbacks" not in table.columns:
        return []
    hit = table[pd.to_numeric(table["oom_fallbacks"], errors="coerce").fillna(0) > 0]
    if hit.empty:
        return []
    return [
        "## Out-of-memory fallbacks",
        "",
        f"{len(hit)} run(s) ran out of GPU memory and finished with a smaller micro-batch and gradient "
        "accumulation (effective batch, LR schedule and step count unchanged; BatchNorm statistics were "
        "computed per micro-batch from then on):",
        "",
        _table(
            ["variant", "run", "status", "micro-batch", "fallbacks"],
            [[r.variant, r.run, r.status, f"{r.micro_batch:.0f}", int(r.oom_fallbacks)] for r in hit.itertuples()],
        ),
        "",
    ]


def _checkpoint_section(table: pd.DataFrame) -> list[str]:
    """What the runs wrote as checkpoint files, per variant (``checkpoint_*`` columns of the
    runs table; runs without a record, e.g. trained before it existed, are counted apart)."""
    if "checkpoint_written_mb" not in table.columns:
        return []
    mb = pd.to_numeric(table["checkpoint_written_mb"], errors="coerce")
    files = pd.to_numeric(table["checkpoint_files"], errors="coerce")
    if not mb.notna().any():
        return []
    rows = []
    for variant, idx in table.groupby("variant", sort=False).groups.items():
        m, f = mb.loc[idx].dropna(), files.loc[idx].dropna()
        known = len(m) > 0  # no record in the variant: unknown, not zero
        rows.append(
            [
                variant,
                f"{len(m)} of {len(idx)}",
                f"{f.sum():.0f}" if known else "—",
                f"{m.sum():,.1f}" if known else "—",
                f"{m.median():,.1f}" if known else "—",
            ]
        )
    return [
        "## Checkpoints written",
        "",
        f"{mb.sum() / 1e3:,.2f} GB in {files.sum():.0f} files over {int(mb.notna().sum())} run(s), every "
        "attempt that recorded its end (a killed attempt's files are not counted; `trainer.checkpoint` sets "
        "how often `latest` is saved):",
        "",
        _table(["variant", "runs with a record", "files", "MB written", "MB per run (median)"], rows),
        "",
    ]


def render_summary(
    table: pd.DataFrame,
    stats: StudyStats,
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
    stats : StudyStats
        ``stats.json`` (:func:`loss_slope.report.summarize.study_statistics`).
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

    def figs(section: str) -> list[str]:
        """The registered figures of one section (:data:`~loss_slope.report.registry.FIGURES`)."""
        return [line for f in figures_in(section) for line in (fig(f.name), "")]

    counts = stats.counts
    n = stats.n_runs
    title = f"# loss-slope study `{stats.study or 'study'}`" + (" — partial report" if partial else "")
    health = ", ".join(f"{counts.of(s)} {s.replace('_', ' ')}" for s in STATUSES if s != "ok")
    out = [title, "", f"{n} runs in the config: **{counts.ok} usable** ({health})."]
    if counts.missing:
        out += [
            "",
            f"> **Partial sweep:** {counts.missing} run(s) have no fit (training not finished); "
            "they are listed below and every statistic uses only the usable runs.",
        ]
    out += ["", *figs("health")]
    out += _h1_section(stats, table, figs)
    out += _h2_section(stats, figs)
    out += _cells_section(stats)
    if stats.truth is not None:
        out += [truth_markdown(stats.truth), ""]
    out += ["## Per variant", "", *figs("variants")]
    if variant_figure_paths:
        out += [
            " ".join(f"[{v}]({p})" for v, p in variant_figure_paths.items())
            + " — loss curves of every run per variant.",
            "",
        ]
    out += ["## Model comparison, knees and the LR × WD grid", "", *figs("models")]
    out += _excluded_section(table, stats)
    out += _micro_batch_section(table)
    out += _checkpoint_section(table)
    if table_paths:
        out += ["## Files", ""] + [f"- [{label}]({p})" for label, p in table_paths.items()] + [""]
    st = stats.settings.study.to_dict()
    win = stats.settings.early_window
    out += ["## Settings", "", "`analysis.study`: " + ", ".join(f"`{k}` = {v}" for k, v in st.items()) + "."]
    out += [f"α_early window: epochs {win[0]:g}–{win[1]:g}.", ""]
    return "\n".join(out).rstrip() + "\n"
