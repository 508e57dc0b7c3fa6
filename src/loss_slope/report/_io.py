"""Shared by the fit and report stages: strict-JSON reading and writing, the run
statuses, and how percentages and p-values are printed (figures and summary.md alike)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

#: Every status a run can have in the per-run table, in display order.
STATUSES = ("ok", "too_short", "invalid", "diverged", "missing")

#: Statuses whose runs enter no statistic (the table says why).
EXCLUDED_STATUSES = tuple(s for s in STATUSES if s != "ok")


def fmt_pct(x) -> str:
    """A share as a whole percentage (``"n/a"`` when missing or not finite)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def fmt_num(x, fmt: str = ".2f") -> str:
    """A number in ``fmt`` (``"n/a"`` when missing or not finite)."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def fmt_p(p) -> str:
    """A p-value: two significant digits, scientific below 0.001 (``"n/a"`` when missing)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def jsonable(value: Any) -> Any:
    """Plain Python values for strict JSON: NaN/inf become None, numpy becomes Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json(data: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def one_thread():
    """Single-threaded BLAS for a stage: jobs already run one per core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)
