"""``stats.json``, typed: the contract between ``summarize`` (which writes it) and the report.

:func:`~loss_slope.report.summarize.study_statistics` builds a :class:`StudyStats` and
``summarize`` writes its ``to_dict()``; ``summary.md``, the figures, the per-variant
table and the rehearsal read the file back with :meth:`StudyStats.from_dict` and use
its fields.  The keys, in the order they are written:

=========================  ===============================================================
``study``                  the study's name
``n_runs``                 runs of the config
``counts``                 :class:`StatusCounts`: runs per status
``counts_by_variant``      variant -> :class:`StatusCounts`
``counts_by_cell``         one :class:`CellCounts` per cell (variant x LR x WD)
``time_axis``              the configured time axis
``other_time_axis``        the other axis when its columns were computed, else null
``h1``                     :class:`~.results.H1Section`
``h2`` ... ``h2_other_axis``  :class:`~.results.H2Section` (five keys of the top level)
``window_heatmap``         :class:`WindowHeatmap`, or null without window scans
``excluded_runs``          one :class:`ExcludedRun` per run not in the statistics
``settings``               :class:`Settings`: ``analysis.study``, the α_early window, the axis
``truth``                  :class:`~.truth_section.TruthComparison`; only in a simulated study
=========================  ===============================================================

Every key but ``truth`` is required; a missing key, an unknown one or a value of the
wrong kind raises :class:`~.records.StatsFormatError` naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ._io import STATUSES
from .records import Record, StatsFormatError, convert, freeze, thaw
from .results import H1Section, H2Section
from .truth_section import TruthComparison

__all__ = [
    "CellCounts",
    "ExcludedRun",
    "Settings",
    "StatusCounts",
    "StatsFormatError",
    "StudySettings",
    "StudyStats",
    "WindowHeatmap",
]


@dataclass(frozen=True, kw_only=True)
class StatusCounts(Record):
    """Runs per status; the fields are :data:`~._io.STATUSES`, in that order."""

    ok: int
    too_short: int
    invalid: int
    diverged: int
    missing: int

    def of(self, status: str) -> int:
        """The count of one status."""
        return getattr(self, status)


if tuple(f.name for f in dataclasses.fields(StatusCounts)) != STATUSES:  # pragma: no cover - an import-time check
    raise ImportError("StatusCounts must have one field per run status, in STATUSES order")


@dataclass(frozen=True, kw_only=True)
class CellCounts(Record):
    """One cell of the grid (variant x LR x WD): its runs, per status, and how many are excluded."""

    variant: str
    lr: float | None
    weight_decay: float | None
    runs: int
    ok: int
    too_short: int
    invalid: int
    diverged: int
    missing: int
    excluded: int

    def of(self, status: str) -> int:
        """The count of one status."""
        return getattr(self, status)


@dataclass(frozen=True, kw_only=True)
class ExcludedRun(Record):
    """A run not in the statistics: its status (not ``ok``) and why."""

    variant: str
    run: str
    status: str
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class WindowHeatmap(Record):
    """Spearman ρ(α over [start, stop), best validation CE) over shifted windows.

    ``rho`` and ``p_value`` are indexed [start][stop] and null where fewer than 4 runs
    have an α in that window; ``nominal`` is the configured α_early window.
    """

    starts: tuple[float, ...]
    ends: tuple[float, ...]
    rho: tuple[tuple[float | None, ...], ...]
    p_value: tuple[tuple[float | None, ...], ...]
    n_valid: tuple[tuple[int, ...], ...]
    nominal: tuple[float, float]


@dataclass(frozen=True)
class StudySettings:
    """``analysis.study`` as the statistics were computed with, every key in config order.

    The keys the report reads are required and typed (:attr:`REQUIRED`); the rest are kept as given.
    """

    values: Mapping[str, Any]

    REQUIRED: ClassVar[Mapping[str, Any]] = {
        "r2_threshold": float,
        "h2_min_abs_rho": float,
        "h2_sign": str,
        "h2_max_p": float,
        "confidence": float,
    }

    @classmethod
    def read(cls, data: Any, at: str = "settings.study") -> StudySettings:
        if not isinstance(data, Mapping):
            raise StatsFormatError(at, f"must be an object, got {type(data).__name__}")
        for key, kind in cls.REQUIRED.items():
            if key not in data:
                raise StatsFormatError(f"{at}.{key}", "is missing (StudySettings requires it)")
            convert(data[key], kind, f"{at}.{key}")
        return cls(freeze(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySettings:
        return cls.read(data)

    def to_dict(self) -> dict[str, Any]:
        return thaw(self.values)

    @property
    def r2_threshold(self) -> float:
        """The literal H1 criterion's R² threshold."""
        return float(self.values["r2_threshold"])

    @property
    def h2_min_abs_rho(self) -> float:
        """H2's threshold on |ρ|."""
        return float(self.values["h2_min_abs_rho"])

    @property
    def h2_sign(self) -> str:
        """H2's required sign of ρ: "negative", "positive" or "either"."""
        return str(self.values["h2_sign"])

    @property
    def h2_max_p(self) -> float:
        """H2's largest p-value."""
        return float(self.values["h2_max_p"])

    @property
    def confidence(self) -> float:
        """The confidence level of every interval."""
        return float(self.values["confidence"])


@dataclass(frozen=True, kw_only=True)
class Settings(Record):
    """What the statistics were computed with."""

    study: StudySettings
    #: the α_early window, epochs
    early_window: tuple[float, float]
    time_axis: str


@dataclass(frozen=True, kw_only=True)
class StudyStats:
    """The whole of ``stats.json`` (see the module for the keys)."""

    study: str
    n_runs: int
    counts: StatusCounts
    counts_by_variant: Mapping[str, StatusCounts]
    counts_by_cell: tuple[CellCounts, ...]
    time_axis: str
    other_time_axis: str | None
    h1: H1Section
    h2: H2Section
    window_heatmap: WindowHeatmap | None
    excluded_runs: tuple[ExcludedRun, ...]
    settings: Settings
    #: only in a simulated study; the key is absent otherwise
    truth: TruthComparison | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyStats:
        """From the JSON object of ``stats.json``.

        Raises
        ------
        StatsFormatError
            A key is missing or unknown, or a value is not of its kind; the error names the key.
        """
        if not isinstance(data, Mapping):
            raise StatsFormatError("(top level)", f"must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} | set(H2Section.KEYS)
        unknown = [k for k in data if k not in known]
        if unknown:
            raise StatsFormatError(unknown[0], "is not a key of stats.json")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "h1":
                kwargs["h1"] = H1Section.read(_required(data, "h1"), "h1")
            elif f.name == "h2":
                kwargs["h2"] = H2Section.read(data)
            elif f.name == "truth":
                kwargs["truth"] = TruthComparison.read(data["truth"], "truth") if "truth" in data else None
            else:
                kwargs[f.name] = convert(_required(data, f.name), hints[f.name], f.name)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``stats.json``: the keys in the order of the module's table."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "h2":
                out.update(value.to_dict())
            elif f.name != "truth" or value is not None:
                out[f.name] = thaw(value)
        return out

    @property
    def confidence(self) -> float:
        """The configured confidence level of every interval (``analysis.study.confidence``)."""
        return self.settings.study.confidence


def _required(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise StatsFormatError(key, "is missing (stats.json requires it)")
    return data[key]
