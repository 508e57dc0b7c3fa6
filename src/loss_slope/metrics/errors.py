"""Domain errors raised by the monitors."""

from __future__ import annotations


class MonitorError(Exception):
    """Base class of every error raised by :mod:`loss_slope.metrics`."""


class CurvatureError(MonitorError):
    """The Hessian of the loss cannot be probed (no batches, mixed dtypes, inference mode, ...)."""


class NotEnoughPoints(MonitorError):
    """A statistic was asked of a series that is too short to define it."""
