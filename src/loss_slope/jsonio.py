"""The one JSON file writer (atomic) and reader of the package.

Every JSON file the pipeline writes goes through :func:`write_json`: the text is
written to a sibling temporary file and renamed over the target, so a reader (or
Snakemake, after a kill) never sees half a file. Two flavours, one function:

* ``strict=True`` (the fit and report stages): NaN/inf become ``null`` and numpy
  values plain Python (:func:`jsonable`), and the text is strict JSON;
* ``strict=False`` (training state, tables reports): the data is written as given
  (``default`` converts what ``json`` cannot).

JSON-lines logs (``attempts.jsonl``, ``launcher.jsonl``, the lock log) are appended
record by record, not written here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["jsonable", "write_json", "read_json", "fsync_dir"]


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


def write_json(
    data: Any,
    path: str | Path,
    *,
    indent: int = 1,
    sort_keys: bool = False,
    strict: bool = True,
    default: Callable[[Any], Any] | None = None,
    durable: bool = False,
) -> None:
    """Write ``data`` to ``path`` atomically (parents created), with a final newline.

    Parameters
    ----------
    indent, sort_keys, default
        As :func:`json.dumps`.
    strict : bool
        Convert with :func:`jsonable` and refuse NaN/inf (strict JSON); otherwise
        write ``data`` as given.
    durable : bool
        ``fsync`` the text before the rename (state that a resume relies on after a crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        jsonable(data) if strict else data, indent=indent, sort_keys=sort_keys, allow_nan=not strict, default=default
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text + "\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path)


def fsync_dir(path: str | Path) -> None:
    """``fsync`` the folder holding ``path``, so that a rename into it survives a crash of the
    machine (POSIX; where a folder cannot be opened or synced, nothing happens)."""
    try:
        fd = os.open(Path(path).parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
