"""The H1 and H2 sections of ``stats.json``, typed.

:class:`H1Section` is the ``h1`` entry: one :class:`H1Criterion` (or
:class:`NotComputable`) per criterion, the defensible one first.
:class:`H2Section` is the five ``h2*`` entries: the cluster-aware
:class:`H2Result`, the protocol's :class:`H2Literal` and the sensitivity checks.
Both are parts of :class:`~loss_slope.report.study_stats.StudyStats`.

Each record's fields are declared in the order of the keys the analysis library's
``to_dict()`` gives them, so ``to_dict()`` writes the same JSON; a key a record does
not declare is kept in its ``extra`` and written back after them.  A statistic that
could not be computed is a :class:`NotComputable` (``verdict`` = ``"not computable"``
and the ``error``); an entry is one exactly when its ``verdict`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from .records import Record, StatsFormatError, empty

__all__ = [
    "NOT_COMPUTABLE",
    "Correlation",
    "H1Criterion",
    "H1Section",
    "H2Literal",
    "H2Result",
    "H2Section",
    "LevelComparison",
    "NotComputable",
    "Prediction",
    "Share",
    "VariantH2",
]

NOT_COMPUTABLE = "not computable"


@dataclass(frozen=True, kw_only=True)
class NotComputable(Record):
    """A statistic that could not be computed, and why; ``extra`` holds what it would have been of."""

    verdict: str = NOT_COMPUTABLE
    error: str = "no usable run"
    extra: Mapping[str, Any] = field(default_factory=empty)

    computable: ClassVar[bool] = False


# ------------------------------------------------------------------------------ H1
@dataclass(frozen=True, kw_only=True)
class Share(Record):
    """A share of runs with its cluster-aware interval and its verdict per target share."""

    k: int
    n: int
    share: float | None
    ci: tuple[float | None, float | None] = (None, None)
    ci_low: float | None = None
    ci_high: float | None = None
    n_cells: int | None = None
    design_effect: float | None = None
    n_effective: float | None = None
    #: target share as written (``"0.8"``) -> "supported" / "not supported" / "inconclusive"
    verdicts: Mapping[str, str] = field(default_factory=empty)
    #: the clustered variance of the interval ("cells", "cells and seeds"; None: binomial) and its t df
    variance: str | None = None
    df: int | None = None
    extra: Mapping[str, Any] = field(default_factory=empty)


@dataclass(frozen=True, kw_only=True)
class H1Criterion(Record):
    """One H1 criterion (the defensible one, the literal R², a sensitivity check) over the usable runs."""

    column: str = ""
    #: numeric criterion: value >= threshold; None: a True/False decision per run
    threshold: float | None = None
    confidence: float | None = None
    target_shares: tuple[float, ...] = ()
    method: str = ""
    overall: Share
    verdicts: Mapping[str, str] = field(default_factory=empty)
    with_excluded_as_failures: Share | None = field(default=None)
    by_variant: Mapping[str, Share] = field(default_factory=empty)
    excluded: tuple[Mapping[str, str], ...] = ()
    skipped_variants: tuple[Mapping[str, str], ...] = ()
    label: str = ""
    extra: Mapping[str, Any] = field(default_factory=empty)

    computable: ClassVar[bool] = True


def _not_computable(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("verdict") == NOT_COMPUTABLE


def _entry(cls: type, data: Any, at: str):
    """``cls`` from ``data``, or a :class:`NotComputable` when its verdict says so."""
    return NotComputable.read(data, at) if _not_computable(data) else cls.read(data, at)


@dataclass(frozen=True)
class H1Section:
    """``stats["h1"]``: criterion name -> result, the defensible criterion first.

    The defensible (:attr:`MAIN`) and the literal (:attr:`LITERAL`) criteria are always present.
    """

    criteria: Mapping[str, H1Criterion | NotComputable]

    MAIN: ClassVar[str] = "single_power_law"
    LITERAL: ClassVar[str] = "literal_r2"

    @classmethod
    def read(cls, data: Any, at: str = "h1") -> H1Section:
        """From the ``h1`` object at key path ``at``."""
        if not isinstance(data, Mapping):
            raise StatsFormatError(at, f"must be an object, got {type(data).__name__}")
        for key in (cls.MAIN, cls.LITERAL):
            if key not in data:
                raise StatsFormatError(f"{at}.{key}", "is missing (H1Section requires it)")
        return cls(MappingProxyType({k: _entry(H1Criterion, v, f"{at}.{k}") for k, v in data.items()}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> H1Section:
        """From ``stats["h1"]``."""
        return cls.read(data)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in self.criteria.items()}

    @property
    def main(self) -> H1Criterion | NotComputable:
        """The defensible criterion the H1 verdict rests on."""
        return self.criteria[self.MAIN]

    @property
    def literal(self) -> H1Criterion | NotComputable:
        """The protocol's literal criterion (straight-line R² after the knee)."""
        return self.criteria[self.LITERAL]


# ------------------------------------------------------------------------------ H2
@dataclass(frozen=True, kw_only=True)
class Correlation(Record):
    """Pearson and Spearman correlation with their intervals and p-values."""

    n: int | None = None
    n_cells: int | None = None
    n_skipped_cells: int | None = None
    pearson_r: float | None = None
    pearson_p: float | None = None
    pearson_ci_low: float | None = None
    pearson_ci_high: float | None = None
    spearman_rho: float | None = None
    spearman_p: float | None = None
    spearman_ci_low: float | None = None
    spearman_ci_high: float | None = None
    method: str = ""
    extra: Mapping[str, Any] = field(default_factory=empty)


@dataclass(frozen=True, kw_only=True)
class LevelComparison(Record):
    """|ρ(slope, CE)| − |ρ(loss level, CE)| with its paired interval."""

    difference: float | None
    difference_ci: tuple[float | None, float | None]
    rho_x: float | None = None
    rho_x_ci: tuple[float | None, float | None] = (None, None)
    rho_level: float | None = None
    rho_level_ci: tuple[float | None, float | None] = (None, None)
    n: int | None = None
    n_cells: int | None = None
    level_column: str = ""
    extra: Mapping[str, Any] = field(default_factory=empty)


@dataclass(frozen=True, kw_only=True)
class Prediction(Record):
    """Leave-one-cell-out prediction of the best CE: RMSE per predictor set."""

    rmse: Mapping[str, float | None] = field(default_factory=empty)
    n: int | None = None
    n_cells: int | None = None
    sd: float | None = None
    extra: Mapping[str, Any] = field(default_factory=empty)


@dataclass(frozen=True, kw_only=True)
class VariantH2(Record):
    """H2 within one variant."""

    overall: Correlation | None = field(default=None)
    cell_means: Correlation | None = field(default=None)
    within_cell: Correlation | None = field(default=None)
    verdict: str = NOT_COMPUTABLE
    n_runs: int | None = None
    n_cells: int | None = None
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=empty)


@dataclass(frozen=True, kw_only=True)
class H2Result(Record):
    """Cluster-aware H2: the slope ``x`` against the best validation CE ``y``."""

    verdict: str
    n_runs: int | None = None
    n_cells: int | None = None
    overall: Correlation
    cell_means: Correlation | None = field(default=None)
    within_cell: Correlation | None = field(default=None)
    partial: Correlation | None = field(default=None)
    within_cell_seed_adjusted: Correlation | None = field(default=None)
    versus_level: LevelComparison | None = field(default=None)
    prediction: Prediction | None = field(default=None)
    by_variant: Mapping[str, VariantH2] = field(default_factory=empty)
    excluded: tuple[Mapping[str, str], ...] = ()
    skipped_cells: tuple[Mapping[str, str], ...] = ()
    skipped_variants: tuple[Mapping[str, str], ...] = ()
    diverged_at_worst_rank: tuple[str, ...] = ()
    #: min_abs_rho, max_p, sign, confidence, ... as the analysis ran it
    settings: Mapping[str, Any] = field(default_factory=empty)
    notes: tuple[str, ...] = ()
    x: str = ""
    y: str = ""
    level: str = ""
    extra: Mapping[str, Any] = field(default_factory=empty)

    computable: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class H2Literal(Record):
    """The protocol's literal H2 rule over runs treated as independent."""

    verdict: str
    spearman_rho: float | None = None
    spearman_p: float | None = None
    n: int | None = None
    rule: str = ""
    extra: Mapping[str, Any] = field(default_factory=empty)

    computable: ClassVar[bool] = True


@dataclass(frozen=True)
class H2Section:
    """The ``h2*`` entries of ``stats.json``: the cluster-aware answer and its checks.

    ``h2``: α_early (the verdict); ``h2_literal``: the protocol's rule;
    ``h2_diverged_worst_rank``: diverged runs ranked worst; ``h2_alpha_full``: α_full
    instead of α_early; ``h2_other_axis``: α_early on the other time axis (None when
    that axis was not computed).  Every key is present in the file.
    """

    h2: H2Result | NotComputable
    h2_literal: H2Literal | NotComputable
    h2_diverged_worst_rank: H2Result | NotComputable
    h2_alpha_full: H2Result | NotComputable
    h2_other_axis: H2Result | NotComputable | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("h2", "h2_literal", "h2_diverged_worst_rank", "h2_alpha_full", "h2_other_axis")

    @classmethod
    def read(cls, stats: Any, at: str = "") -> H2Section:
        """From the object holding the ``h2*`` keys (the whole ``stats.json``)."""
        if not isinstance(stats, Mapping):
            raise StatsFormatError(at or "h2", f"must be an object, got {type(stats).__name__}")
        for key in cls.KEYS:
            if key not in stats:
                raise StatsFormatError(f"{at}.{key}" if at else key, "is missing (H2Section requires it)")

        def entry(key: str, kind: type):
            value = stats[key]
            return None if value is None and key == "h2_other_axis" else _entry(kind, value, key)

        return cls(
            h2=entry("h2", H2Result),
            h2_literal=entry("h2_literal", H2Literal),
            h2_diverged_worst_rank=entry("h2_diverged_worst_rank", H2Result),
            h2_alpha_full=entry("h2_alpha_full", H2Result),
            h2_other_axis=entry("h2_other_axis", H2Result),
        )

    @classmethod
    def from_dict(cls, stats: Mapping[str, Any]) -> H2Section:
        """From the whole ``stats.json`` (its ``h2*`` keys)."""
        return cls.read(stats)

    def to_dict(self) -> dict[str, Any]:
        """The ``h2*`` keys of ``stats.json``, in order."""
        return {k: None if (v := getattr(self, k)) is None else v.to_dict() for k in self.KEYS}

    @property
    def main(self) -> H2Result | NotComputable:
        """The cluster-aware α_early answer the H2 verdict rests on."""
        return self.h2
