"""The H1/H2 verdict sentences, written once for ``summary.md`` and the figure titles.

Every sentence reads correctly for every outcome ("supported", "not supported",
"inconclusive", "not computable"); the thresholds and the confidence level come
from the statistics, never from a literal here.  The results are the typed
entries of ``stats.json`` (:mod:`.results`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._io import fmt_level, fmt_num as _f, fmt_p, fmt_pct
from .results import H1Criterion, H2Result, NotComputable, Share

__all__ = [
    "VERDICTS",
    "h1_criterion_sentence",
    "h1_failures_sentence",
    "h1_headline",
    "h1_verdicts_short",
    "h2_criterion",
    "h2_headline",
    "h2_verdict_reason",
    "interval",
    "rho_thresholds",
    "share_verdict_reason",
]

VERDICTS = ("supported", "not supported", "inconclusive", "not computable")


def interval(lo, hi, *, pct: bool = False, targets=()) -> str:
    """``lo–hi`` (percentages) or ``lo to hi`` (signed numbers), each bound printed on its side
    of every target (target shares, e.g. the keys of a verdict mapping, or the ρ thresholds)."""
    if pct:
        return f"{fmt_pct(lo, targets=targets)}–{fmt_pct(hi, targets=targets)}"
    return f"{_f(lo, thresholds=targets)} to {_f(hi, thresholds=targets)}"


def rho_thresholds(settings: Mapping[str, Any]) -> tuple[float, ...]:
    """The values of ρ that H2's verdict compares with, in the configured direction."""
    t = float(settings["min_abs_rho"])
    return {"negative": (-t,), "positive": (t,)}.get(settings["sign"], (-t, t))


def share_verdict_reason(verdict: str, target: float) -> str:
    """Why a share got its verdict against ``target``."""
    t = fmt_level(target)
    return {
        "supported": f"the whole interval is at or above {t}",
        "not supported": f"the whole interval is below {t}",
        "inconclusive": f"the interval reaches both sides of {t}: the data cannot decide",
    }.get(verdict, "no usable run")


def _verdict_list(verdicts: Mapping[str, str]) -> str:
    return "; ".join(f"{v} against {fmt_level(t)} ({share_verdict_reason(v, float(t))})" for t, v in verdicts.items())


def h1_verdicts_short(verdicts: Mapping[str, str]) -> str:
    """``supported vs 80 %, inconclusive vs 90 %``: the verdict against each target share."""
    return ", ".join(f"{verdict} vs {fmt_level(t)}" for t, verdict in verdicts.items())


def h1_criterion_sentence(res: H1Criterion | NotComputable, *, confidence: float) -> str:
    """One sentence: k of n runs meet the criterion, the interval and the verdicts."""
    if not res.computable:
        return f"Not computable: {res.error}."
    o = res.overall
    cells = f", {o.n_cells} cells" if o.n_cells else ""
    if o.variance:  # which clustered variance the interval rests on, and its t quantile's df
        cells += f", clustered by {o.variance}" + (f", t on {o.df} df" if o.df else "")
    runs = "runs" if res.threshold is not None else "decided runs"  # a numeric criterion decides every run
    return (
        f"{o.k} of {o.n} {runs} ({fmt_pct(o.share, targets=res.verdicts)}; {fmt_level(confidence)} cluster-aware "
        "interval "
        f"{interval(o.ci_low, o.ci_high, pct=True, targets=res.verdicts)}{cells}) meet it: "
        f"{_verdict_list(res.verdicts)}."
    )


def h1_failures_sentence(share: Share, *, confidence: float) -> str:
    """The defensible H1 share with every excluded or undecided run counted as a failure."""
    return (
        f"Counting every excluded or undecided run as a failure: {share.k} of {share.n} runs "
        f"({fmt_pct(share.share, targets=share.verdicts)}, {fmt_level(confidence)} interval "
        f"{interval(share.ci_low, share.ci_high, pct=True, targets=share.verdicts)}): "
        + "; ".join(f"{v} against {fmt_level(t)}" for t, v in share.verdicts.items())
        + "."
    )


def h1_headline(res: H1Criterion | NotComputable, *, confidence: float) -> str:
    """Figure-title line of the defensible H1 criterion."""
    if not res.computable:
        return f"H1 not computable: {res.error}"
    o = res.overall
    return (
        f"H1 {h1_verdicts_short(res.verdicts)}: {o.k} of {o.n} runs are one power law after the knee "
        f"({fmt_pct(o.share, targets=res.verdicts)}, {fmt_level(confidence)} CI "
        f"{interval(o.ci_low, o.ci_high, pct=True, targets=res.verdicts)})"
    )


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def h2_criterion(settings: Mapping[str, Any]) -> str:
    """The H2 threshold as a condition on ρ, in the configured direction."""
    t = float(settings["min_abs_rho"])
    sign = settings["sign"]
    if sign == "negative":
        return f"ρ ≤ −{t:g} (a steeper early slope predicting a lower CE)"
    if sign == "positive":
        return f"ρ ≥ {t:g} (a steeper early slope predicting a higher CE)"
    return f"|ρ| ≥ {t:g}"


def h2_verdict_reason(verdict: str, settings: Mapping[str, Any], ci=None) -> str:
    """Why the pooled correlation got its verdict (``ci``: its interval, when there may be none)."""
    crit = h2_criterion(settings)
    if verdict == "inconclusive" and ci is not None and not all(_finite(b) for b in ci):
        return (
            "the resamples give no interval (every one repeats the same perfect order of too few cells), "
            "so the data cannot decide"
        )
    return {
        "supported": f"the whole interval meets {crit} and p < {float(settings['max_p']):g}",
        "not supported": f"the whole interval falls short of {crit}: the data rule out a relation that strong",
        "inconclusive": f"the interval reaches both sides of the threshold of {crit}, or p ≥ "
        f"{float(settings['max_p']):g}: the data cannot decide",
    }.get(verdict, "no usable run")


def h2_headline(h2: H2Result | NotComputable) -> str:
    """Figure-title line of the cluster-aware H2 verdict."""
    if not h2.computable:
        return f"H2 not computable: {h2.error}"
    o, st = h2.overall, h2.settings
    return (
        f"H2 {h2.verdict}: α_early vs best validation CE, Spearman ρ = "
        f"{_f(o.spearman_rho, thresholds=rho_thresholds(st))} "
        f"({fmt_level(st['confidence'])} CI "
        f"{interval(o.spearman_ci_low, o.spearman_ci_high, targets=rho_thresholds(st))} over "
        f"{h2.n_cells} cells, p = {fmt_p(o.spearman_p, max_p=float(st['max_p']))}; need {h2_criterion(st)})"
    )
