"""MetricRecorder: exactly-once per-step and per-validation tables.

Lightning's ``self.log`` costs ~40 % of a small model's step and its
CSVLogger loses rows on resume, so this callback keeps the per-step values as
device tensors (no ``.item()``, no host sync per step), moves them to the
host at each validation and every ``flush_every`` steps between two (on the run's
schedule, :mod:`loss_slope.train.flush_cadence`, so a resumed attempt flushes, and
a diverged run stops, where an uninterrupted one does), and appends them to CSV.
It also flushes and fsyncs inside ``on_save_checkpoint``, so a checkpoint after
``s`` steps always finds rows ``0..s-1`` on disk.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from pytorch_lightning import Callback

from loss_slope.tables.csvlog import CsvTable
from loss_slope.tables.schema import LN2
from loss_slope.train.divergence import DivergenceGuard
from loss_slope.train.flush_cadence import regular_flush
from loss_slope.train.val_schedule import last_validation_step

log = logging.getLogger("loss_slope.train")


class MetricRecorder(Callback):
    def __init__(
        self,
        *,
        tables_dir,
        steps_per_epoch: int,
        total_steps: int,
        val_interval: int,
        flush_every: int = 100,
        log_every: int | None = None,
        guard: DivergenceGuard | None = None,
    ) -> None:
        self.steps = CsvTable(f"{tables_dir}/steps.csv", "steps")
        self.val = CsvTable(f"{tables_dir}/val.csv", "val")
        self.spe, self.total = steps_per_epoch, total_steps
        self.val_interval, self.flush_every = val_interval, flush_every
        self.log_every = log_every or flush_every
        self._pending: list[tuple[int, float, float, float]] = []  # host: step, time, lr, wd
        self._loss: list[torch.Tensor] = []  # device scalars
        self._correct: list[torch.Tensor] = []
        self._count: list[int] = []
        self._grad_norm: torch.Tensor | None = None
        self._batch_idx = -1
        self._last_val_step = -1
        self._lr = self._wd = math.nan
        self._t_log = time.monotonic()
        self._step_log = 0
        self.last_loss = math.nan
        self.guard = guard or DivergenceGuard()
        self.diverged: tuple[int, str] | None = None  # (step, reason)

    # ---- per step -------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        # the progress line's rate counts this attempt's steps from here, not setup or earlier attempts
        self._t_log, self._step_log = time.monotonic(), trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self._lr, self._wd = float(group["lr"]), float(group["weight_decay"])
        self._batch_idx = batch_idx

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if (self._batch_idx + 1) % self.val_interval == 0:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                self._grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1  # the optimizer step just taken
        self._pending.append((step, time.time(), self._lr, self._wd))
        self._loss.append(outputs["loss"].detach())
        self._correct.append(outputs["correct"])
        self._count.append(int(batch[1].shape[0]))
        # on the run's schedule, not the attempt's: a resumed run flushes where an uninterrupted one does
        last_val = last_validation_step(step + 1, steps_per_epoch=self.spe, val_interval=self.val_interval)
        if regular_flush(step + 1, last_val, self.flush_every):
            self.flush()
        self._stop_if_diverged(trainer)

    def _stop_if_diverged(self, trainer) -> None:
        """A divergence found by a flush stops the run at that flush's step."""
        if self.diverged is not None and not trainer.should_stop:
            log.warning("diverged: %s; stopping this run", self.diverged[1])
            trainer.should_stop = True

    # ---- per validation -------------------------------------------------
    def on_validation_end(self, trainer, pl_module):
        step = trainer.global_step
        at_boundary = (self._batch_idx + 1) % self.val_interval == 0
        # extra validations (e.g. Lightning validating when a time limit stops
        # training) are not part of the quarter-epoch table
        if trainer.sanity_checking or not at_boundary or step == self._last_val_step or step == 0:
            return
        loss, acc = pl_module.val_result
        wn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in pl_module.parameters()])))
        gn = self._grad_norm if self._grad_norm is not None else torch.tensor(math.nan)
        vals = torch.stack([loss.float(), acc.float(), gn.to(loss.device).float(), wn.float()]).double().cpu().tolist()
        self.flush()
        self.val.append([(step, step / self.spe, time.time(), vals[0], vals[0] / LN2, vals[1], vals[2], vals[3])])
        self._last_val_step = step
        self._grad_norm = None
        # a validation step's rows are flushed here, not at the batch's end; the stop checkpoint
        # (LatestCheckpoint, a Checkpoint callback, runs after this one) is then taken at this step
        self._stop_if_diverged(trainer)

    # ---- persistence ----------------------------------------------------
    def flush(self) -> None:
        if not self._pending:
            return
        loss = torch.stack(self._loss).double().cpu().tolist()  # one host sync per flush
        correct = torch.stack(self._correct).double().cpu().tolist()
        rows = []
        for (step, t, lr, wd), nats, c, n in zip(self._pending, loss, correct, self._count):
            rows.append((step, step / self.spe, t, lr, wd, nats, nats / LN2, c / n))
        self.steps.append(rows)
        self.last_loss = loss[-1]
        if self.diverged is None:
            self.diverged = self.guard.update([r[0] for r in rows], loss)
        last_step = self._pending[-1][0]
        self._pending, self._loss, self._correct, self._count = [], [], [], []
        if last_step + 1 - self._step_log >= self.log_every or last_step + 1 == self.total:
            now = time.monotonic()
            rate = (last_step + 1 - self._step_log) / max(now - self._t_log, 1e-9)
            log.info(
                "step %d/%d (%.1f%%) epoch %.2f loss %.4f lr %.4g %.1f steps/s",
                last_step + 1,
                self.total,
                100 * (last_step + 1) / self.total,
                (last_step + 1) / self.spe,
                self.last_loss,
                self._lr,
                rate,
            )
            self._t_log, self._step_log = now, last_step + 1

    def sync(self) -> None:
        self.flush()
        self.steps.sync()
        self.val.sync()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.sync()

    def state_dict(self) -> dict:
        # Lightning asks for the callbacks' state before on_save_checkpoint: the guard must have seen
        # every row the checkpoint's tables will hold, or a resumed run never feeds it the pending ones
        self.flush()
        return {"divergence": self.guard.state_dict(), "diverged": self.diverged}

    def load_state_dict(self, state_dict: dict) -> None:
        # the verdict too: the guard has seen the rows before the checkpoint, and never sees them again
        self.guard.load_state_dict(state_dict["divergence"])
        diverged = state_dict.get("diverged")
        self.diverged = None if diverged is None else (int(diverged[0]), str(diverged[1]))

    def on_train_end(self, trainer, pl_module):
        self.sync()

    def on_exception(self, trainer, pl_module, exception):
        self.sync()

    def close(self) -> None:
        self.sync()
        self.steps.close()
        self.val.close()
