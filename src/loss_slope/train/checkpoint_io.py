"""Checkpoint writing that never leaves a half-written file under the real name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<name>.tmp``, fsync, then ``os.replace``.

    A kill or a full disk during the write leaves the previous checkpoint
    untouched and usable. Loading defaults to ``weights_only=True``.

    Functions in ``before_save`` are called as ``fn(checkpoint, path)`` and
    return the dict to write instead (the monitor callback leaves its running
    state out of the ``best`` checkpoints, which are never resumed from).
    Functions in ``after_save`` are called as ``fn(checkpoint, path)`` once the
    file is in place under its real name (the monitor callback measures
    ``checkpoint_size_mb`` there).
    """

    def __init__(self) -> None:
        super().__init__()
        self.before_save: list[Callable[[dict[str, Any], Path], dict[str, Any]]] = []
        self.after_save: list[Callable[[dict[str, Any], Path], None]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        for fn in self.before_save:
            checkpoint = fn(checkpoint, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for fn in self.after_save:
            fn(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)


def checkpoint_step(path: str | Path) -> int:
    """Optimizer steps completed when the checkpoint at ``path`` was taken."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["global_step"])
