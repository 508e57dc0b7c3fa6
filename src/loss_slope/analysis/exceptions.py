"""Domain errors of the analysis library.

Every check that rejects a curve raises one of these, so that a pipeline stage can
record *why* a run was excluded instead of propagating NaN.  All input problems are
also :class:`ValueError`, so generic callers keep working.
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "InvalidCurve",
    "NotEnoughPoints",
    "InvalidSteps",
    "NonFiniteValues",
    "NonPositiveLoss",
    "ConstantLoss",
    "UnknownMethod",
    "FitFailed",
]


class AnalysisError(Exception):
    """Base class of every error raised by :mod:`loss_slope.analysis`."""


class InvalidCurve(AnalysisError, ValueError):
    """The (steps, loss) arrays cannot be analysed as given."""


class NotEnoughPoints(InvalidCurve):
    """Fewer usable points than the requested analysis needs.

    Parameters
    ----------
    needed : int
        Minimum number of points.
    got : int
        Number of usable points.
    what : str
        What was being counted, e.g. ``"points in the window"``.
    """

    def __init__(self, needed: int, got: int, what: str = "points") -> None:
        self.needed = int(needed)
        self.got = int(got)
        self.what = what
        super().__init__(f"need at least {self.needed} {what}, got {self.got}")


class InvalidSteps(InvalidCurve):
    """Steps are not finite, not >= 0, or not strictly increasing."""


class NonFiniteValues(InvalidCurve):
    """The loss contains NaN or infinite values (and masking was not requested)."""


class NonPositiveLoss(InvalidCurve):
    """The loss has zero or negative values, so its logarithm is undefined."""


class ConstantLoss(InvalidCurve):
    """The loss is constant: no slope, knee or power law can be estimated."""


class UnknownMethod(AnalysisError, ValueError):
    """A method name that is not in the explicit registry."""

    def __init__(self, kind: str, name: str, known) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(f"unknown {kind} method {name!r}; known: {', '.join(self.known)}")


class FitFailed(AnalysisError, RuntimeError):
    """A numerical fit did not converge to a usable optimum."""
