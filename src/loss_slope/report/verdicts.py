"""The H1/H2 verdict sentences, written once for ``summary.md`` and the figure titles.

Every sentence reads correctly for every outcome ("supported", "not supported",
"inconclusive", "not computable"); the thresholds and the confidence level come
from the statistics, never from a literal here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._io import fmt_num as _f, fmt_p, fmt_pct

__all__ = [
    "VERDICTS",
    "h1_criterion_sentence",
    "h1_headline",
    "h2_criterion",
    "h2_headline",
    "h2_verdict_reason",
    "interval",
    "share_verdict_reason",
]

VERDICTS = ("supported", "not supported", "inconclusive", "not computable")


def interval(lo, hi, *, pct: bool = False) -> str:
    """``lo–hi`` (percentages) or ``lo to hi`` (signed numbers)."""
    if pct:
        return f"{fmt_pct(lo)}–{fmt_pct(hi)}"
    return f"{_f(lo)} to {_f(hi)}"


def share_verdict_reason(verdict: str, target: float) -> str:
    """Why a share got its verdict against ``target``."""
    t = fmt_pct(target)
    return {
        "supported": f"the whole interval is at or above {t}",
        "not supported": f"the whole interval is below {t}",
        "inconclusive": f"the interval reaches both sides of {t}: the data cannot decide",
    }.get(verdict, "no usable run")


def _verdict_list(verdicts: Mapping[str, str]) -> str:
    return "; ".join(
        f"{v} against {fmt_pct(float(t))} ({share_verdict_reason(v, float(t))})" for t, v in verdicts.items()
    )


def h1_criterion_sentence(res: Mapping[str, Any], *, confidence: float) -> str:
    """One sentence: k of n runs meet the criterion, the interval and the verdicts."""
    o = res.get("overall")
    if not o or res.get("verdict") == "not computable":
        return f"Not computable: {res.get('error', 'no usable run')}."
    cells = f", {o['n_cells']} cells" if o.get("n_cells") else ""
    runs = "runs" if res.get("threshold") is not None else "decided runs"  # a numeric criterion decides every run
    return (
        f"{o['k']} of {o['n']} {runs} ({fmt_pct(o['share'])}; {fmt_pct(confidence)} cluster-aware interval "
        f"{interval(o['ci_low'], o['ci_high'], pct=True)}{cells}) meet it: {_verdict_list(res['verdicts'])}."
    )


def h1_headline(res: Mapping[str, Any], *, confidence: float) -> str:
    """Figure-title line of the defensible H1 criterion."""
    o = res.get("overall")
    if not o or res.get("verdict") == "not computable":
        return f"H1 not computable: {res.get('error', 'no usable run')}"
    v = ", ".join(f"{verdict} vs {fmt_pct(float(t))}" for t, verdict in res["verdicts"].items())
    return (
        f"H1 {v}: {o['k']} of {o['n']} runs are one power law after the knee "
        f"({fmt_pct(o['share'])}, {fmt_pct(confidence)} CI {interval(o['ci_low'], o['ci_high'], pct=True)})"
    )


def h2_criterion(settings: Mapping[str, Any]) -> str:
    """The H2 threshold as a condition on ρ, in the configured direction."""
    t = float(settings["min_abs_rho"])
    sign = settings.get("sign", "negative")
    if sign == "negative":
        return f"ρ ≤ −{t:g} (a steeper early slope predicting a lower CE)"
    if sign == "positive":
        return f"ρ ≥ {t:g} (a steeper early slope predicting a higher CE)"
    return f"|ρ| ≥ {t:g}"


def h2_verdict_reason(verdict: str, settings: Mapping[str, Any]) -> str:
    """Why the pooled correlation got its verdict."""
    crit = h2_criterion(settings)
    return {
        "supported": f"the whole interval meets {crit} and p < {float(settings['max_p']):g}",
        "not supported": f"the whole interval falls short of {crit}: the data rule out a relation that strong",
        "inconclusive": f"the interval reaches both sides of the threshold of {crit}, or p ≥ "
        f"{float(settings['max_p']):g}: the data cannot decide",
    }.get(verdict, "no usable run")


def _settings(h2: Mapping[str, Any]) -> Mapping[str, Any]:
    return h2.get("settings") or {}


def h2_headline(h2: Mapping[str, Any]) -> str:
    """Figure-title line of the cluster-aware H2 verdict."""
    o = h2.get("overall")
    if not o or h2.get("verdict") == "not computable":
        return f"H2 not computable: {h2.get('error', 'no usable run')}"
    st = _settings(h2)
    conf = st.get("confidence", 0.95)
    return (
        f"H2 {h2['verdict']}: α_early vs best validation CE, Spearman ρ = {_f(o['spearman_rho'])} "
        f"({fmt_pct(conf)} CI {interval(o['spearman_ci_low'], o['spearman_ci_high'])} over "
        f"{h2['n_cells']} cells, p = {fmt_p(o['spearman_p'])}; need {h2_criterion(st)})"
    )
