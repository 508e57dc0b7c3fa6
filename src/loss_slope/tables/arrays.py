"""A run's Parquet table as numpy arrays, without pandas.

The per-run jobs (``validate_run``, ``fit_run``) need a few columns of small
tables as numpy arrays. ``pyarrow``'s ``to_numpy``/``to_pandas`` import pandas
(its C++ conversion loads pandas' static data), which costs a job about 0.3 s of
CPU at start-up, more than its checks take; 216 runs pay it again for every
stage. :func:`read_columns` converts through Python lists instead and gives the
arrays ``Table.to_pandas()[name].to_numpy()`` gives for the project's schemas
(:mod:`loss_slope.tables.schema`): int64 (float64 with NaN when a column holds
nulls), float64 (NaN for null), bool, and object arrays of ``str`` (``None``
for null) for strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


class Columns:
    """Named, equally long 1-D arrays (a read-only table): ``t["step"]``, ``"status" in t``, ``len(t)``."""

    def __init__(self, arrays: dict[str, np.ndarray], n_rows: int):
        self._arrays = arrays
        self._n = int(n_rows)

    @property
    def names(self) -> list[str]:
        return list(self._arrays)

    def __contains__(self, name) -> bool:
        return name in self._arrays

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def matrix(self, names) -> np.ndarray:
        """The columns ``names`` side by side, shape (rows, len(names)), as ``df[names].to_numpy()``."""
        if not names:
            return np.empty((self._n, 0))
        return (
            np.column_stack([self._arrays[n] for n in names])
            if self._n
            else np.empty((0, len(names)), dtype=np.result_type(*(self._arrays[n] for n in names)))
        )

    def rows(self, mask) -> Columns:
        """The rows where ``mask`` is true (a boolean array), in order."""
        mask = np.asarray(mask, dtype=bool)
        return Columns({k: v[mask] for k, v in self._arrays.items()}, int(mask.sum()))


def column_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """One Arrow column as the numpy array pandas would give it (see the module docstring)."""
    values = column.to_pylist()
    t = column.type
    if pa.types.is_integer(t):
        if column.null_count:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.array(values, dtype=np.int64)
    if pa.types.is_floating(t):
        return np.array(values, dtype=np.float64)  # None -> nan
    if pa.types.is_boolean(t) and not column.null_count:
        return np.array(values, dtype=bool)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def read_columns(path: str | Path) -> Columns:
    """Every column of one Parquet file (a single file, no hive partition columns)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read()
    return Columns({name: column_array(table.column(name)) for name in table.column_names}, table.num_rows)
