"""Save the latest checkpoint when training is interrupted by SIGTERM or Ctrl-C.

Lightning turns SIGTERM (scancel, a preemption, the pack launcher forwarding
a signal) into ``SIGTERMException`` at the end of the current batch, so the
loop state is consistent here and a rerun resumes from exactly this step.
Ctrl-C takes the same path (:func:`sigint_as_sigterm`): a ``KeyboardInterrupt``
can land anywhere inside a step (after the optimizer step, before the LR
scheduler's), and a checkpoint taken there resumes into different steps.

Except after the last batch of an epoch: Lightning has then already counted
the epoch as finished while its batch counter still says "last batch", and a
run resumed from a checkpoint taken there skips the whole next epoch. There
no checkpoint is written; the rerun resumes from the latest one, which
(``LatestCheckpoint``) is taken at the epoch's last validation, i.e. at this
very step when the epoch ends with a validation.
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

log = logging.getLogger("loss_slope.train")


class CheckpointOnInterrupt(Callback):
    def __init__(self, path) -> None:
        self.path = str(path)
        self.saved_step: int | None = None

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or trainer.global_step <= 0:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            io = trainer.strategy.checkpoint_io
            if hasattr(io, "wait"):
                io.wait()  # a save in flight (the epoch's last validation) is renamed first
            self.saved_step = checkpoint_step(self.path) if Path(self.path).exists() else None
            log.warning(
                "%s after the last batch of an epoch (step %d): no checkpoint here (Lightning would resume "
                "it into the epoch after the next); the rerun resumes from the latest one (step %s)",
                type(exception).__name__,
                trainer.global_step,
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
