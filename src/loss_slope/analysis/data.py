"""Input validation and log-spaced binning.

Masking rule (documented in docs/analysis.md): by default any NaN/inf loss raises
:class:`NonFiniteValues`.  With ``nonfinite="drop"`` the non-finite points are removed
and their number is reported on the result (``n_masked``); nothing is ever replaced
by NaN silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from .exceptions import (
    ConstantLoss,
    InvalidCurve,
    InvalidSteps,
    NonFiniteValues,
    NonPositiveLoss,
    NotEnoughPoints,
)

#: Default width of a log-spaced bin, in decades of (step + 1).
DEFAULT_BIN_DECADES = 0.01


@dataclass(frozen=True, eq=False)
class Curve:
    """A validated curve: strictly increasing steps, finite positive loss."""

    steps: np.ndarray  # float64, shape (n,)
    loss: np.ndarray  # float64, shape (n,)
    y: np.ndarray  # log(loss)
    n_masked: int

    @property
    def n(self) -> int:
        return int(self.steps.size)


def prepare_curve(
    steps,
    loss,
    *,
    min_points: int = 3,
    nonfinite: str = "raise",
) -> Curve:
    """Validate (steps, loss) and return a :class:`Curve`.

    Parameters
    ----------
    steps : array_like, shape (n,)
        0-based optimizer steps, finite, >= 0, strictly increasing.
    loss : array_like, shape (n,)
        Loss values (any unit); must be > 0.
    min_points : int
        Minimum number of usable points.
    nonfinite : {"raise", "drop"}
        What to do with NaN/inf loss values.

    Raises
    ------
    InvalidCurve, InvalidSteps, NonFiniteValues, NonPositiveLoss, ConstantLoss,
    NotEnoughPoints
    """
    s = np.asarray(steps, dtype=float).ravel()
    l_ = np.asarray(loss, dtype=float).ravel()
    if s.shape != l_.shape:
        raise InvalidCurve(f"steps and loss differ in length ({s.size} vs {l_.size})")
    if nonfinite not in ("raise", "drop"):
        raise ValueError("nonfinite must be 'raise' or 'drop'")
    if not np.all(np.isfinite(s)):
        raise InvalidSteps("steps contain NaN or inf")
    bad = ~np.isfinite(l_)
    n_masked = int(bad.sum())
    if n_masked:
        if nonfinite == "raise":
            first = int(np.flatnonzero(bad)[0])
            raise NonFiniteValues(
                f"loss has {n_masked} non-finite values (first at step {s[first]:g}); "
                "pass nonfinite='drop' to mask them"
            )
        s, l_ = s[~bad], l_[~bad]
    if s.size < min_points:
        raise NotEnoughPoints(min_points, s.size)
    if np.any(s < 0):
        raise InvalidSteps("steps must be >= 0 (0-based optimizer steps)")
    if np.any(np.diff(s) <= 0):
        raise InvalidSteps("steps must be strictly increasing (sort and de-duplicate first)")
    if np.any(l_ <= 0):
        raise NonPositiveLoss(f"loss has {int(np.sum(l_ <= 0))} values <= 0; a log-scale analysis needs loss > 0")
    y = np.log(l_)
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.max(np.abs(y)))):
        raise ConstantLoss("loss is constant")
    return Curve(steps=s, loss=l_, y=y, n_masked=n_masked)


def time_on_curve(steps, time, curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Another time axis at a prepared curve's steps: ``(t, keep)``, ``keep`` the first step of
    each run of equal times (steps with zero learning rate add no time), so ``t[keep]`` is
    strictly increasing. ``steps`` and ``time``: the raw arrays ``curve`` was prepared from."""
    raw_steps = np.asarray(steps, dtype=float)
    tt = np.asarray(time, dtype=float)
    if tt.shape != raw_steps.shape:
        raise InvalidCurve("time must have one value per step")
    tt = np.interp(curve.steps, raw_steps, tt)
    return tt, np.concatenate(([True], np.diff(tt) > 0))


@dataclass(frozen=True, eq=False)
class LogBins:
    """Log-spaced bins of consecutive points.

    Attributes
    ----------
    start, stop : ndarray of int, shape (m,)
        Index range ``[start, stop)`` of each bin into the curve.
    count : ndarray of float, shape (m,)
    step : ndarray, shape (m,)
        Mean step in each bin.
    step_sd : ndarray, shape (m,)
        Standard deviation of the steps within each bin (0 for one-point bins).
    y : ndarray, shape (m,)
        Mean log-loss in each bin.
    """

    start: np.ndarray
    stop: np.ndarray
    count: np.ndarray
    step: np.ndarray
    y: np.ndarray
    step_sd: np.ndarray

    @property
    def m(self) -> int:
        return int(self.count.size)


def make_bins(steps: np.ndarray, y: np.ndarray, *, decades: float = DEFAULT_BIN_DECADES) -> LogBins:
    """Average ``y`` in bins of equal width in log10(step + 1).

    Parameters
    ----------
    steps : ndarray, shape (n,)
        Strictly increasing steps (>= 0).
    y : ndarray, shape (n,)
        Values to average (log loss).
    decades : float
        Bin width in decades; 0 disables binning (one point per bin).

    Returns
    -------
    LogBins
    """
    n = steps.size
    if decades <= 0:
        idx = np.arange(n)
        one = np.ones(n)
        return LogBins(start=idx, stop=idx + 1, count=one, step=steps.copy(), y=y.copy(), step_sd=np.zeros(n))
    lt = np.log10(steps + 1.0)
    lo = lt[0]
    edges_idx = np.floor((lt - lo) / decades).astype(np.int64)
    # bin starts where the bin id changes; ids are non-decreasing since steps increase
    change = np.flatnonzero(np.diff(edges_idx)) + 1
    start = np.concatenate(([0], change))
    stop = np.concatenate((change, [n]))
    count = (stop - start).astype(float)
    ysum = np.add.reduceat(y, start)
    mean = np.add.reduceat(steps, start) / count
    dev = steps - np.repeat(mean, stop - start)
    sd = np.sqrt(np.add.reduceat(dev * dev, start) / count)
    return LogBins(start=start, stop=stop, count=count, step=mean, y=ysum / count, step_sd=sd)


def min_points_for(n_params: int) -> int:
    """Minimum number of points for a model with ``n_params`` mean parameters."""
    return max(3 * n_params, n_params + 5)


def log_t(steps: np.ndarray) -> np.ndarray:
    """ln(step + 1): the log-log abscissa used by all plain (linear) log-log fits."""
    return np.log(steps + 1.0)


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for a confidence level in (0, 1)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    return float(ndtri(0.5 + confidence / 2.0))


__all__ = [
    "Curve",
    "LogBins",
    "prepare_curve",
    "time_on_curve",
    "make_bins",
    "min_points_for",
    "log_t",
    "z_value",
    "DEFAULT_BIN_DECADES",
]
