"""Shared by the fit and report stages: the run statuses, how percentages and
p-values are printed (figures and summary.md alike), and (from :mod:`loss_slope.jsonio`)
strict-JSON reading and writing."""

from __future__ import annotations

import contextlib
import math
import re

from loss_slope.jsonio import jsonable, read_json, write_json

__all__ = [
    "STATUSES",
    "EXCLUDED_STATUSES",
    "fmt_pct",
    "fmt_level",
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


def fmt_level(x) -> str:
    """A target share or a confidence level as an exact percentage (``0.825`` → ``82.5 %``): the
    reader compares printed bounds with it, so it is never rounded to a whole percent."""
    return f"{100 * float(x):.6g} %"


def _keeps_side(x: float, text: str, thresholds) -> bool:
    """Whether ``text`` read back lies above, on or below every threshold as ``x`` does."""
    shown = float(text)
    return all((shown > t) == (x > t) and (shown < t) == (x < t) for t in map(float, thresholds))


def fmt_num(x, fmt: str = ".2f", *, thresholds=()) -> str:
    """A number in ``fmt`` (``"n/a"`` when missing or not finite).

    With ``thresholds`` and a fixed-point ``fmt``, as many more decimals as keep ``x`` above, on or
    below every threshold as printed (an interval bound of −0.6996 next to ρ ≤ −0.7 prints as
    ``-0.6996``, not as ``-0.70``); all 17 significant digits where that takes more than 12.
    """
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    text = format(x, fmt)
    fixed = re.fullmatch(r"\.(\d+)f", fmt)
    if not thresholds or not fixed:
        return text
    for decimals in range(int(fixed.group(1)), 13):
        text = f"{x:.{decimals}f}"
        if _keeps_side(x, text, thresholds):
            return text
    return f"{x:.17g}"


def fmt_p(p, *, max_p=None) -> str:
    """A p-value: two significant digits, scientific below 0.001 (``"n/a"`` when missing).

    With ``max_p``, as many more digits as keep ``p`` below, on or above it as printed
    (p = 0.0099996 next to p < 0.01 prints as ``0.0099996``, not as ``0.01``).
    """
    if p is None or not math.isfinite(p):
        return "n/a"
    for digits in range(2, 18):
        text = f"{p:.{digits}g}" if p >= 0.001 else f"{p:.{digits - 1}e}"
        if max_p is None or _keeps_side(p, text, (max_p,)):
            return text
    return text


def one_thread():
    """Single-threaded BLAS for a stage: jobs already run one per core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)
