"""The H1 and H2 sections of ``stats.json``, typed.

``stats.json`` is the contract between ``summarize`` (which writes it) and the
report (which reads it back).  :func:`~loss_slope.report.summarize.study_statistics`
builds its ``h1`` entry as an :class:`H1Section` and its ``h2*`` entries as an
:class:`H2Section`, and writes each with its own ``to_dict()``; ``summary.md``,
the figures and the verdict sentences read them back with ``from_dict()`` and use
typed fields instead of ``.get(...) or {}`` chains.

``to_dict()`` writes the fields in declaration order, which is the order of the
keys the analysis library's ``to_dict()`` gives them, so the JSON is unchanged; a
key this module does not know is kept in ``extra`` and written back after them.
A statistic that could not be computed is a :class:`NotComputable` (``verdict`` =
``"not computable"`` and the ``error``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

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
    "confidence",
    "study_setting",
]

NOT_COMPUTABLE = "not computable"


def _freeze(value: Any) -> Any:
    """JSON value -> immutable: lists become tuples, objects read-only mappings."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The inverse of :func:`_freeze`; records are written with their own ``to_dict()``."""
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _one(cls):
    return {"nested": ("one", cls)}


def _map(cls):
    return {"nested": ("map", cls)}


def _empty() -> Mapping:
    return MappingProxyType({})


class _Record:
    """``from_dict`` / ``to_dict`` for the frozen dataclasses below.

    A field's ``metadata["nested"]`` = ``("one", cls)`` or ``("map", cls)`` says that
    its JSON value is a ``cls`` record (or a mapping of them); ``None`` stays ``None``.
    """

    extra: Mapping[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        rest = dict(data)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra" or f.name not in rest:
                continue
            value = rest.pop(f.name)
            kind, sub = f.metadata.get("nested", (None, None))
            if value is None or kind is None:
                value = _freeze(value)
            elif kind == "one":
                value = sub.from_dict(value)
            else:
                value = MappingProxyType({k: sub.from_dict(v) for k, v in value.items()})
            kwargs[f.name] = value
        return cls(**kwargs, extra=_freeze(rest))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(_thaw(self.extra))
        return out


@dataclass(frozen=True, kw_only=True)
class NotComputable(_Record):
    """A statistic that could not be computed, and why; ``extra`` holds what it would have been of."""

    verdict: str = NOT_COMPUTABLE
    error: str = "no usable run"
    extra: Mapping[str, Any] = field(default_factory=_empty)

    computable: ClassVar[bool] = False


# ------------------------------------------------------------------------------ H1
@dataclass(frozen=True, kw_only=True)
class Share(_Record):
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
    verdicts: Mapping[str, str] = field(default_factory=_empty)
    extra: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, kw_only=True)
class H1Criterion(_Record):
    """One H1 criterion (the defensible one, the literal R², a sensitivity check) over the usable runs."""

    column: str = ""
    #: numeric criterion: value >= threshold; None: a True/False decision per run
    threshold: float | None = None
    confidence: float | None = None
    target_shares: tuple[float, ...] = ()
    method: str = ""
    overall: Share = field(metadata=_one(Share))
    verdicts: Mapping[str, str] = field(default_factory=_empty)
    with_excluded_as_failures: Share | None = field(default=None, metadata=_one(Share))
    by_variant: Mapping[str, Share] = field(default_factory=_empty, metadata=_map(Share))
    excluded: tuple[Mapping[str, str], ...] = ()
    skipped_variants: tuple[Mapping[str, str], ...] = ()
    label: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty)

    computable: ClassVar[bool] = True


def _h1_entry(data: Mapping[str, Any]) -> H1Criterion | NotComputable:
    if data.get("verdict") == NOT_COMPUTABLE or not data.get("overall"):
        return NotComputable.from_dict(data)
    return H1Criterion.from_dict(data)


@dataclass(frozen=True)
class H1Section:
    """``stats["h1"]``: criterion name -> result, the defensible criterion first."""

    criteria: Mapping[str, H1Criterion | NotComputable]

    MAIN: ClassVar[str] = "single_power_law"
    LITERAL: ClassVar[str] = "literal_r2"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> H1Section:
        return cls(MappingProxyType({k: _h1_entry(v) for k, v in data.items()}))

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in self.criteria.items()}

    @property
    def main(self) -> H1Criterion | NotComputable:
        """The defensible criterion the H1 verdict rests on."""
        return self.criteria.get(self.MAIN) or NotComputable(error="no H1 result")

    @property
    def literal(self) -> H1Criterion | NotComputable:
        """The protocol's literal criterion (straight-line R² after the knee)."""
        return self.criteria.get(self.LITERAL) or NotComputable(error="no literal R² result")


# ------------------------------------------------------------------------------ H2
@dataclass(frozen=True, kw_only=True)
class Correlation(_Record):
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
    extra: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, kw_only=True)
class LevelComparison(_Record):
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
    extra: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, kw_only=True)
class Prediction(_Record):
    """Leave-one-cell-out prediction of the best CE: RMSE per predictor set."""

    rmse: Mapping[str, float | None] = field(default_factory=_empty)
    n: int | None = None
    n_cells: int | None = None
    sd: float | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, kw_only=True)
class VariantH2(_Record):
    """H2 within one variant."""

    overall: Correlation | None = field(default=None, metadata=_one(Correlation))
    cell_means: Correlation | None = field(default=None, metadata=_one(Correlation))
    within_cell: Correlation | None = field(default=None, metadata=_one(Correlation))
    verdict: str = NOT_COMPUTABLE
    n_runs: int | None = None
    n_cells: int | None = None
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, kw_only=True)
class H2Result(_Record):
    """Cluster-aware H2: the slope ``x`` against the best validation CE ``y``."""

    verdict: str
    n_runs: int | None = None
    n_cells: int | None = None
    overall: Correlation = field(metadata=_one(Correlation))
    cell_means: Correlation | None = field(default=None, metadata=_one(Correlation))
    within_cell: Correlation | None = field(default=None, metadata=_one(Correlation))
    partial: Correlation | None = field(default=None, metadata=_one(Correlation))
    within_cell_seed_adjusted: Correlation | None = field(default=None, metadata=_one(Correlation))
    versus_level: LevelComparison | None = field(default=None, metadata=_one(LevelComparison))
    prediction: Prediction | None = field(default=None, metadata=_one(Prediction))
    by_variant: Mapping[str, VariantH2] = field(default_factory=_empty, metadata=_map(VariantH2))
    excluded: tuple[Mapping[str, str], ...] = ()
    skipped_cells: tuple[Mapping[str, str], ...] = ()
    skipped_variants: tuple[Mapping[str, str], ...] = ()
    diverged_at_worst_rank: tuple[str, ...] = ()
    #: min_abs_rho, max_p, sign, confidence, ... as the analysis ran it
    settings: Mapping[str, Any] = field(default_factory=_empty)
    notes: tuple[str, ...] = ()
    x: str = ""
    y: str = ""
    level: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty)

    computable: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class H2Literal(_Record):
    """The protocol's literal H2 rule over runs treated as independent."""

    verdict: str
    spearman_rho: float | None = None
    spearman_p: float | None = None
    n: int | None = None
    rule: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty)

    computable: ClassVar[bool] = True


def _h2_entry(data: Mapping[str, Any] | None) -> H2Result | NotComputable | None:
    if data is None:
        return None
    if data.get("verdict") == NOT_COMPUTABLE or not data.get("overall"):
        return NotComputable.from_dict(data)
    return H2Result.from_dict(data)


@dataclass(frozen=True)
class H2Section:
    """The ``h2*`` entries of ``stats.json``: the cluster-aware answer and its checks.

    ``h2``: α_early (the verdict); ``h2_literal``: the protocol's rule;
    ``h2_diverged_worst_rank``: diverged runs ranked worst; ``h2_alpha_full``: α_full
    instead of α_early; ``h2_other_axis``: α_early on the other time axis (None when
    that axis was not computed).
    """

    h2: H2Result | NotComputable
    h2_literal: H2Literal | NotComputable
    h2_diverged_worst_rank: H2Result | NotComputable
    h2_alpha_full: H2Result | NotComputable
    h2_other_axis: H2Result | NotComputable | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("h2", "h2_literal", "h2_diverged_worst_rank", "h2_alpha_full", "h2_other_axis")

    @classmethod
    def from_dict(cls, stats: Mapping[str, Any]) -> H2Section:
        """From the whole ``stats.json`` (its ``h2*`` keys)."""
        lit = stats.get("h2_literal") or {}
        literal = (
            NotComputable.from_dict(lit)
            if lit.get("verdict", NOT_COMPUTABLE) == NOT_COMPUTABLE
            else H2Literal.from_dict(lit)
        )
        return cls(
            h2=_h2_entry(stats.get("h2") or {}),
            h2_literal=literal,
            h2_diverged_worst_rank=_h2_entry(stats.get("h2_diverged_worst_rank") or {}),
            h2_alpha_full=_h2_entry(stats.get("h2_alpha_full") or {}),
            h2_other_axis=_h2_entry(stats.get("h2_other_axis")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``h2*`` keys of ``stats.json``, in order."""
        return {k: None if (v := getattr(self, k)) is None else v.to_dict() for k in self.KEYS}


# ------------------------------------------------------------------------------ settings
def study_setting(stats: Mapping[str, Any], key: str) -> Any:
    """A key of ``analysis.study`` as the statistics were computed with (``stats["settings"]["study"]``)."""
    return stats["settings"]["study"][key]


def confidence(stats: Mapping[str, Any]) -> float:
    """The configured confidence level of every interval (``analysis.study.confidence``)."""
    return float(study_setting(stats, "confidence"))
