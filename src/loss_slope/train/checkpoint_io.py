"""Checkpoint writing that never leaves a half-written file under the real name,
and that can keep the write off the training step (a background writer)."""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from loss_slope.jsonio import fsync_dir

log = logging.getLogger("loss_slope.train")


def host_snapshot(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are detached copies in host memory.

    Dicts, lists and tuples are copied (their types kept); other values are
    shared (numbers, strings). After it returns, training may change the
    originals in place: the snapshot keeps the values of this moment.
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone()
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for k, v in obj.items():
            out[k] = host_snapshot(v)
        return out
    if isinstance(obj, list):
        return [host_snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        items = [host_snapshot(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<name>.tmp``, fsync, then ``os.replace``.

    A kill or a full disk during the write leaves the previous checkpoint
    untouched and usable. Loading defaults to ``weights_only=True``.

    ``background=True``: :meth:`save_checkpoint` copies the checkpoint to host
    memory (:func:`host_snapshot`) and returns; a writer thread writes, fsyncs
    and renames it. At most one save is in flight: a new save (and
    :meth:`teardown`, at the end of a fit, also after an exception) first waits
    for the previous one's rename, and re-raises its error if it failed. The
    writer is not a daemon thread, so the interpreter also waits for it.

    Functions in ``before_save`` are called as ``fn(checkpoint, path)`` and
    return the dict to write instead (the monitor callback leaves its running
    state out of the ``best`` checkpoints, which are never resumed from).
    Functions in ``after_save`` are called as ``fn(checkpoint, path)`` once the
    file is in place under its real name (the monitor callback measures
    ``checkpoint_size_mb`` there); with ``background=True`` they run in the
    writer thread.

    ``bytes_written`` and ``saves`` count the files put in place by this object;
    :meth:`stats` sums them up with the time spent on them.
    """

    def __init__(self, *, background: bool = False) -> None:
        super().__init__()
        self.background = bool(background)
        self.before_save: list[Callable[[dict[str, Any], Path], dict[str, Any]]] = []
        self.after_save: list[Callable[[dict[str, Any], Path], None]] = []
        self.bytes_written = 0
        self.saves = 0
        self.snapshot_seconds = 0.0  # time the training thread spent copying to host memory
        self.wait_seconds = 0.0  # time it spent waiting for a previous write
        self.write_seconds = 0.0  # time writing, fsyncing and renaming (the writer thread's, when in the background)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        for fn in self.before_save:
            checkpoint = fn(checkpoint, path)
        if not self.background:
            self._write(checkpoint, path)
            return
        self.wait()
        t0 = time.perf_counter()
        snapshot = host_snapshot(checkpoint)
        self.snapshot_seconds += time.perf_counter() - t0
        self._thread = threading.Thread(
            target=self._write_in_background, args=(snapshot, path), name="checkpoint-writer", daemon=False
        )
        self._thread.start()

    def _write_in_background(self, checkpoint: dict, path: Path) -> None:
        try:
            self._write(checkpoint, path)
        except BaseException as exc:  # re-raised in the training thread by wait()
            self._error = exc

    def _write(self, checkpoint: dict, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        t0 = time.perf_counter()
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            os.replace(tmp, path)
            fsync_dir(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.write_seconds += time.perf_counter() - t0
        self.bytes_written += size
        self.saves += 1
        for fn in self.after_save:
            fn(checkpoint, path)

    def wait(self) -> None:
        """Wait until the save in flight (if any) is renamed; re-raise its error."""
        thread = self._thread
        if thread is not None:
            t0 = time.perf_counter()
            thread.join()
            self.wait_seconds += time.perf_counter() - t0
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def stats(self) -> dict[str, float]:
        """The saves so far: ``files``, ``written_mb`` (10^6 bytes), and seconds: ``snapshot_s``
        and ``wait_s`` on the training thread, ``write_s`` writing (in the writer thread when
        in the background). A save still in flight is not counted."""
        return {
            "files": self.saves,
            "written_mb": self.bytes_written / 1e6,
            "snapshot_s": self.snapshot_seconds,
            "wait_s": self.wait_seconds,
            "write_s": self.write_seconds,
        }

    def teardown(self) -> None:
        self.wait()
        super().teardown()

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        self.wait()
        return super().load_checkpoint(
            path, map_location=map_location, weights_only=True if weights_only is None else weights_only
        )


def checkpoint_step(path: str | Path) -> int:
    """Optimizer steps completed when the checkpoint at ``path`` was taken."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["global_step"])
