"""Size of a saved checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

BYTES_PER_MB = 1_000_000  # decimal megabytes, as `ls --si` and most dashboards show


def checkpoint_size_mb(path: str | os.PathLike[str]) -> float:
    """Size of a checkpoint in MB (10⁶ bytes).

    A directory (sharded checkpoints) counts every regular file below it;
    symbolic links are not followed.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / BYTES_PER_MB
    if path.is_dir():
        total = sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        return total / BYTES_PER_MB
    raise FileNotFoundError(path)
