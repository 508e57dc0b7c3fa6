"""The ``latest`` checkpoint, decoupled from validation (``trainer.checkpoint``).

A run resumes only from ``checkpoints/latest/latest.ckpt``. Exactly-once
tables need only that, on resume, every table is cut back to the checkpoint's
step (``steps.prepare_run``), not frequent checkpoints. So ``latest`` is saved at the end
of a validation only when one of these holds:

* it is the last validation of an epoch, every ``latest_every_epochs`` epochs
  (1: once per epoch);
* ``latest_every_minutes`` of training have passed since the attempt's
  training started or since the previous ``latest`` save;
* training is stopping (time budget, divergence): a stop checkpoint; except after
  the last batch of an epoch when that is not a scheduled validation (a run
  resumed from there would replay a batch past the epoch's end), where the
  rerun resumes from the previous ``latest``.

A SIGTERM checkpoint is saved by :class:`~loss_slope.train.interrupt.CheckpointOnInterrupt`.
The checkpoint is taken where Lightning's ``ModelCheckpoint`` takes one
(``on_validation_end``, after the validation and the tables' rows of that
step), so resuming from it is unchanged. ``0``/``null`` turns a criterion off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pytorch_lightning.callbacks import Checkpoint

from loss_slope.train.latest_cadence import LatestSettings, epoch_end_due
from loss_slope.train.val_schedule import is_scheduled_validation

log = logging.getLogger("loss_slope.train")


class LatestCheckpoint(Checkpoint):
    def __init__(
        self,
        path,
        *,
        steps_per_epoch: int,
        val_interval: int,
        every_epochs: int | None = 1,
        every_minutes: float | None = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if steps_per_epoch < 1 or val_interval < 1:
            raise ValueError("steps_per_epoch and val_interval must be >= 1")
        self.path = Path(path)
        self.spe, self.val_interval = int(steps_per_epoch), int(val_interval)
        self.every_epochs = int(every_epochs or 0)
        self.every_s = float(every_minutes or 0) * 60.0
        self.clock = clock
        self._t_last: float | None = None
        self._last_step = -1
        self.saved_steps: list[int] = []

    @property
    def on_disk_step(self) -> int:
        """The step of the ``latest`` checkpoint this attempt saved last, or resumed from (-1: none)."""
        return self._last_step

    @classmethod
    def from_settings(cls, path, settings: LatestSettings, *, steps_per_epoch: int, val_interval: int):
        return cls(
            path,
            steps_per_epoch=steps_per_epoch,
            val_interval=val_interval,
            every_epochs=settings.every_epochs,
            every_minutes=settings.every_minutes,
        )

    def epoch_due(self, step: int) -> bool:
        """``step`` is the last validation of every ``every_epochs``-th epoch (:func:`epoch_end_due`)."""
        return epoch_end_due(
            step, steps_per_epoch=self.spe, val_interval=self.val_interval, every_epochs=self.every_epochs
        )

    def regular(self, step: int) -> bool:
        """``step`` (optimizer steps done, > 0) is one of the epoch's scheduled validations."""
        return is_scheduled_validation(step, steps_per_epoch=self.spe, val_interval=self.val_interval)

    def due(self, step: int, *, stopping: bool, now: float) -> str | None:
        if step <= 0 or step == self._last_step:
            return None
        if stopping:
            return "stop"
        if self.epoch_due(step):
            return "epoch"
        if self.every_s and self._t_last is not None and now - self._t_last >= self.every_s:
            return "time"
        return None

    def on_train_start(self, trainer, pl_module) -> None:
        self._t_last = self.clock()
        self._last_step = trainer.global_step  # the resumed-from checkpoint is this step's

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        why = self.due(step, stopping=bool(trainer.should_stop), now=self.clock())
        if why is None:
            return
        if why == "stop" and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and not self.regular(step):
            # A validation that only the stop caused, after the epoch's last batch: Lightning has counted
            # the epoch as finished while its batch counter still says "last batch", and a run resumed
            # from here replays one batch past the epoch's end (the later validations move by a step).
            # The rerun resumes from the latest checkpoint (at most this epoch's last validation).
            log.warning(
                "stopping after the last batch of an epoch (step %d), off the validation schedule: no stop "
                "checkpoint here; the rerun resumes from the latest one (step %d)",
                step,
                self._last_step,
            )
            return
        trainer.save_checkpoint(self.path)
        self._t_last, self._last_step = self.clock(), step
        self.saved_steps.append(step)
        log.debug("latest checkpoint at step %d (%s)", step, why)
