"""The ``truth`` section of ``stats.json`` (a simulated study's estimates against its truth), typed.

:func:`loss_slope.report.truth.compare_with_truth` returns the JSON object;
:class:`TruthComparison` is that object read back, the fields in the order it writes
its keys.  In ``stats.json`` every key is present: ``h1.time_axis`` (the axis the H1
decision was judged on) and ``h2.defensible`` (the study's cluster-aware H2 result
judged against the truth) are null only in a comparison made without the study's
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import Record

__all__ = [
    "DefensibleH2Check",
    "DivergedCounts",
    "ExponentError",
    "ExponentRecovery",
    "KneeRecovery",
    "TruthComparison",
    "TruthH1",
    "TruthH2",
    "WrongVerdict",
]


@dataclass(frozen=True, kw_only=True)
class TruthH1(Record):
    """The estimated H1 share and its interval against the true share."""

    rule: str
    n: int
    estimated_share: float | None
    ci: tuple[float | None, float | None]
    #: "cluster-aware" (the study's interval) or "Wilson, runs as independent"
    interval: str
    true_share: float | None
    true_within_ci: bool
    confidence: float
    false_positive: int
    false_negative: int
    time_axis: str | None = None


@dataclass(frozen=True, kw_only=True)
class DefensibleH2Check(Record):
    """The study's cluster-aware H2 verdict and intervals against the truth."""

    verdict: str
    true_verdict: str
    #: None when the study's verdict is "inconclusive"
    matches: bool | None
    pooled_ci: tuple[float, float] | None
    within_ci: tuple[float, float] | None
    true_in_pooled_ci: bool | None
    true_within_in_ci: bool | None


@dataclass(frozen=True, kw_only=True)
class TruthH2(Record):
    """Spearman ρ of α_early vs best CE, pooled and within cells, estimated and true."""

    n: int
    estimated_rho: float | None
    estimated_p: float | None
    true_rho: float | None
    true_p: float | None
    estimated_within_rho: float | None
    estimated_within_p: float | None
    true_within_rho: float | None
    true_within_p: float | None
    configured_rho_cell: float | None
    configured_rho_within: float | None
    min_abs_rho: float
    max_p: float
    estimated_verdict: str
    true_verdict: str
    verdict_matches: bool
    defensible: DefensibleH2Check | None = None


@dataclass(frozen=True, kw_only=True)
class KneeRecovery(Record):
    """|log10(estimated / true knee epoch)| over the usable runs whose knee was found."""

    n_true: int
    n_found: int
    median_error_decades: float | None
    p90_error_decades: float | None
    max_error_decades: float | None


@dataclass(frozen=True, kw_only=True)
class ExponentError(Record):
    """An exponent estimated minus its value on the clean curve."""

    n: int
    median_error: float | None
    median_abs_error: float | None


@dataclass(frozen=True, kw_only=True)
class ExponentRecovery(Record):
    """α_early, α_full and (when the schedule does not shape the curve) the power-law exponent."""

    alpha_early: ExponentError
    alpha_full: ExponentError
    power_exponent: ExponentError | None


@dataclass(frozen=True, kw_only=True)
class DivergedCounts(Record):
    """Diverged runs, as estimated and by the truth."""

    estimated: int
    true: int


@dataclass(frozen=True, kw_only=True)
class WrongVerdict(Record):
    """A run whose H1 decision, divergence or knee differs from the truth."""

    run: str
    #: "H1", "diverged" or "knee"
    what: str
    estimated: bool
    truth: bool


@dataclass(frozen=True, kw_only=True)
class TruthComparison(Record):
    """``stats["truth"]``: every estimate of a simulated study against its known truth."""

    n_runs: int
    n_ok: int
    n_truth: int
    h1: TruthH1
    h2: TruthH2
    knee: KneeRecovery
    exponent: ExponentRecovery
    diverged: DivergedCounts
    wrong: tuple[WrongVerdict, ...]
