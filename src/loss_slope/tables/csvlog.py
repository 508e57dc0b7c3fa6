"""Append-only CSV tables in a run's work tree, and their truncation on resume.

Rows are appended in blocks (one host transfer every K steps), each handed to
the OS at once (the file shows every appended row: ``loss-slope status``,
``tail -f``), and fsync'ed when a checkpoint is written, so a checkpoint at
step ``s`` always finds the tables complete up to ``s``. After a crash the
tails beyond the checkpoint are cut off again by :func:`truncate_table`, so
every step appears once.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from loss_slope.tables.schema import KEEP_ON_RESUME, columns


def _fmt(v) -> str:
    t = type(v)
    if t is float:
        return repr(v)
    if t is int:
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))  # shortest repr that round-trips float64 exactly
    return str(v)


class CsvTable:
    """One CSV file with a fixed header; rows are appended, never rewritten."""

    def __init__(self, path: str | Path, table: str) -> None:
        self.path = Path(path)
        self.table = table
        self.header = columns(table)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w") as fh:
                fh.write(",".join(self.header) + "\n")
        self._fh = open(self.path, "a")

    def append(self, rows: Iterable[Sequence]) -> None:
        """Write ``rows`` to the file now (one write, no fsync: a kill may leave a torn last line,
        which :func:`truncate_table` drops)."""
        lines = [",".join(_fmt(v) for v in row) + "\n" for row in rows]
        if lines:
            self._fh.write("".join(lines))
            self._fh.flush()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()


def truncate_table(path: str | Path, table: str, checkpoint_step: int) -> tuple[int, int]:
    """Keep only the rows a checkpoint taken after ``checkpoint_step`` steps covers.

    Also drops a partial last line left by a kill in the middle of a write.
    Rewrites the file atomically (temp file + rename). Returns
    ``(rows_kept, rows_dropped)``.
    """
    path = Path(path)
    if not path.exists():
        return 0, 0
    keep = KEEP_ON_RESUME[table]
    header = ",".join(columns(table))
    kept, dropped = [], 0
    with open(path) as fh:
        text = fh.read()
    lines = text.split("\n")
    complete = lines[:-1]
    if not text.endswith("\n") and lines[-1]:
        dropped += 1  # a torn final line
    if complete and complete[0].rstrip("\r") != header:
        # rows of another layout would be kept under this header, or dropped and never written again
        raise ValueError(
            f"{path}: its header is {complete[0]!r}, not the {table} table's {header!r}: it was written by "
            "another version of this code; set the run's work tree aside (rename it) to train the run again"
        )
    ncol = len(columns(table))
    for line in complete[1:]:
        if not line:
            continue
        parts = line.split(",")
        try:
            step = int(parts[0])
        except ValueError:
            dropped += 1
            continue
        if len(parts) == ncol and keep(step, checkpoint_step):
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(header + "\n")
        fh.write("".join(line + "\n" for line in kept))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(kept), dropped
