"""Shared by the fit and report stages: the run statuses, how percentages and
p-values are printed (figures and summary.md alike), and (from :mod:`loss_slope.jsonio`)
strict-JSON reading and writing."""

from __future__ import annotations

import contextlib
import math

from loss_slope.jsonio import jsonable, read_json, write_json

__all__ = [
    "STATUSES",
    "EXCLUDED_STATUSES",
    "fmt_pct",
    "fmt_num",
    "fmt_p",
    "jsonable",
    "read_json",
    "write_json",
    "one_thread",
]

#: Every status a run can have in the per-run table, in display order.
STATUSES = ("ok", "too_short", "invalid", "diverged", "missing")

#: Statuses whose runs enter no statistic (the table says why).
EXCLUDED_STATUSES = tuple(s for s in STATUSES if s != "ok")


def fmt_pct(x, *, targets=()) -> str:
    """A share as a whole percentage (``"n/a"`` when missing or not finite).

    With ``targets`` (shares, or anything whose items ``float()`` reads as shares, such as a
    verdict mapping's keys), as many decimals (up to 3) as keep ``x`` on its side of every
    target (``x >= t`` as printed exactly when ``x >= t``): an interval bound of 0.8996 next to
    a 90 % target prints as ``89.96 %``, not as ``90 %``, and one of 0.8999996 as ``89.999 %``.
    """
    if x is None or not math.isfinite(x):
        return "n/a"
    for decimals in range(4):
        shown = round(100 * x, decimals)
        if all((shown >= 100 * float(t)) == (x >= float(t)) for t in targets):
            break
    else:  # within 5e-7 below a target: rounded down, so that it still prints below it
        shown = math.floor(100_000 * x) / 1000
    return f"{shown:.{decimals}f} %"


def fmt_num(x, fmt: str = ".2f") -> str:
    """A number in ``fmt`` (``"n/a"`` when missing or not finite)."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def fmt_p(p) -> str:
    """A p-value: two significant digits, scientific below 0.001 (``"n/a"`` when missing)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def one_thread():
    """Single-threaded BLAS for a stage: jobs already run one per core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)
