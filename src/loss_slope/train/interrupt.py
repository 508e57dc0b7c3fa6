"""Save the latest checkpoint when training is interrupted by SIGTERM or Ctrl-C.

Lightning turns SIGTERM (scancel, a preemption, the pack launcher forwarding
a signal) into ``SIGTERMException`` at the end of the current batch, so the
loop state is consistent here and a rerun resumes from exactly this step.
Ctrl-C takes the same path (:func:`sigint_as_sigterm`): a ``KeyboardInterrupt``
can land anywhere inside a step (after the optimizer step, before the LR
scheduler's), and a checkpoint taken there resumes into different steps.

No checkpoint is written, and the rerun resumes from the latest one (the
tables are cut back to its step), where a checkpoint here would resume wrongly:

* after the last batch of an epoch: Lightning has then already counted the
  epoch as finished while its batch counter still says "last batch", and a run
  resumed there skips the whole next epoch. The latest checkpoint
  (``LatestCheckpoint``) is taken at the epoch's last validation, i.e. at this
  very step when the epoch ends with a validation;
* inside a validation (Lightning raises between two validation batches): the
  validation's row and its ``best`` check are not written yet, and a run
  resumed there never repeats that validation, so its row would be missing;
* at the step of the latest checkpoint (a stop checkpoint: the time budget or a
  divergence stopped the run mid-epoch, and the signal lands while Lightning
  finishes that epoch, which it has then counted as done): a checkpoint here
  would resume one epoch too far on, and every rerun would stop short of the end.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from pytorch_lightning import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from loss_slope.train.checkpoint_io import checkpoint_step
from loss_slope.train.latest import LatestCheckpoint

log = logging.getLogger("loss_slope.train")


class CheckpointOnInterrupt(Callback):
    def __init__(self, path) -> None:
        self.path = str(path)
        self.saved_step: int | None = None

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or trainer.global_step <= 0:
            return
        latest = next((c for c in trainer.callbacks if isinstance(c, LatestCheckpoint)), None)
        if trainer.validating:
            where = "inside a validation (a resumed run would not repeat it)"
        elif latest is not None and latest.on_disk_step == trainer.global_step:
            where = "where the latest checkpoint is (a stop checkpoint, or the one this attempt resumed from)"
        elif trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            where = "after the last batch of an epoch (Lightning would resume it into the epoch after the next)"
        else:
            where = None
        if where is not None:
            io = trainer.strategy.checkpoint_io
            if hasattr(io, "wait"):
                io.wait()  # a save in flight (e.g. the epoch's last validation) is renamed first
            self.saved_step = checkpoint_step(self.path) if Path(self.path).exists() else None
            log.warning(
                "%s at step %d, %s: no checkpoint here; the rerun resumes from the latest one (step %s)",
                type(exception).__name__,
                trainer.global_step,
                where,
                self.saved_step,
            )
            return
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step
        log.warning("%s: saved the latest checkpoint at step %d", type(exception).__name__, trainer.global_step)


@contextmanager
def sigint_as_sigterm():
    """While training, the first Ctrl-C (SIGINT) stops the run as SIGTERM does: at the end of the
    current step, with a checkpoint, exit ``EXIT_UNFINISHED``. A second Ctrl-C interrupts at once
    (``KeyboardInterrupt``, no checkpoint: the rerun resumes from the latest one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # Lightning's SIGTERM handler is not installed (not fitting yet)
        log.warning("Ctrl-C: stopping at the end of this step, with a checkpoint (Ctrl-C again: at once)")
        signal.raise_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
