"""Test-only fault injection, switched on from the Hydra config (trainer.fault.*).

Used by the SLURM and fault tests to make one run of a pack fail once, for
real, in the middle of training (``fail_run``/``fail_at_step``), and to make a
run run out of GPU memory (``oom_run``/``oom_at_step``/``oom_fits``): the real
``torch.cuda.OutOfMemoryError`` is raised, so the recovery path is the one a
GPU takes, even on a CPU), and to make a curvature event run out of memory
(``curvature_oom_run``/``curvature_oom_at_step``), to slow every step down
(``step_sleep_s``) so that a time budget binds whatever the machine's speed, and
to send the process a real SIGTERM after a step (``sigterm_at_step``), in the
middle of a validation (``sigterm_in_validation_at_step``) or after a time-budget-like stop
(``stop_then_sigterm_at_step``).
Off unless the keys are set.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from pytorch_lightning import Callback


class InjectedFault(RuntimeError):
    """Raised on purpose by :class:`FailOnce`."""


class FailOnce(Callback):
    def __init__(self, *, step: int, marker: str | Path) -> None:
        self.step, self.marker = int(step), Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and not self.marker.exists():
            self.marker.write_text(f"failed once at step {trainer.global_step}\n")
            raise InjectedFault(f"injected fault at step {trainer.global_step} (trainer.fault)")


class SlowSteps(Callback):
    """Sleeps after every optimizer step (a slower machine, for time-budget tests)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


class SigtermAtStep(Callback):
    """Sends this process SIGTERM after optimizer step ``step`` (once: ``marker``); Lightning's handler
    stops the training at the end of that batch."""

    def __init__(self, *, step: int, marker: str | Path) -> None:
        self.step, self.marker = int(step), Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"SIGTERM after step {self.step}\n")
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermInValidation(Callback):
    """Sends this process SIGTERM after the first batch of the validation at optimizer step ``step``
    (once: ``marker``); Lightning's handler then stops the validation before its next batch."""

    def __init__(self, *, step: int, marker: str | Path) -> None:
        self.step, self.marker = int(step), Path(marker)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or trainer.global_step != self.step or batch_idx != 0 or self.marker.exists():
            return
        self.marker.write_text(f"SIGTERM inside the validation at step {self.step}\n")
        os.kill(os.getpid(), signal.SIGTERM)


class StopThenSigterm(Callback):
    """Stops training after optimizer step ``step`` as Lightning's ``Timer`` does when the time budget is
    spent (``should_stop``: a stop validation and a stop checkpoint follow), then sends this process
    SIGTERM while Lightning finishes the epoch (``on_train_epoch_end``), after that checkpoint (once:
    ``marker``)."""

    def __init__(self, *, step: int, marker: str | Path) -> None:
        self.step, self.marker = int(step), Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.marker.exists():
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.should_stop and trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"stopped after step {self.step}, then SIGTERM at the epoch's end\n")
            os.kill(os.getpid(), signal.SIGTERM)


def fault_callbacks(cfg, run_dir) -> list[Callback]:
    f = cfg.trainer.get("fault")
    if not f:
        return []
    out: list[Callback] = []
    if f.get("step_sleep_s"):
        out.append(SlowSteps(f.step_sleep_s))
    if f.fail_run is not None and f.fail_at_step is not None and f.fail_run == cfg.run:
        out.append(FailOnce(step=f.fail_at_step, marker=Path(run_dir) / "fault.once"))
    if f.get("sigterm_at_step") is not None:
        out.append(SigtermAtStep(step=f.sigterm_at_step, marker=Path(run_dir) / "sigterm.once"))
    if f.get("sigterm_in_validation_at_step") is not None:
        out.append(SigtermInValidation(step=f.sigterm_in_validation_at_step, marker=Path(run_dir) / "sigterm.once"))
    if f.get("stop_then_sigterm_at_step") is not None:
        out.append(StopThenSigterm(step=f.stop_then_sigterm_at_step, marker=Path(run_dir) / "sigterm.once"))
    return out


class InjectedOOM:
    """Raises ``torch.cuda.OutOfMemoryError`` before a forward pass on a
    micro-batch larger than ``fits`` images, from optimizer step ``at_step`` on
    (``fits=0``: nothing fits)."""

    def __init__(self, *, at_step: int, fits: int) -> None:
        self.at_step, self.fits = int(at_step), int(fits)

    def __call__(self, step: int, micro_batch: int) -> None:
        if step >= self.at_step and micro_batch > self.fits:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate a micro-batch of {micro_batch} images at step {step} "
                f"(injected by trainer.fault.oom_*: only {self.fits} fit)"
            )


def oom_injector(cfg) -> InjectedOOM | None:
    f = cfg.trainer.get("fault")
    if not f or f.get("oom_run") is None or f.oom_run != cfg.run:
        return None
    return InjectedOOM(at_step=f.oom_at_step or 0, fits=f.oom_fits or 0)


class InjectedCurvatureOOM:
    """Raises ``torch.cuda.OutOfMemoryError`` inside the curvature event at optimizer step ``at_step``
    (called by the monitor callback after the event's first forward pass)."""

    def __init__(self, *, at_step: int) -> None:
        self.at_step = int(at_step)

    def __call__(self, step: int) -> None:
        if step == self.at_step:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB in the curvature event at step {step} "
                "(injected by trainer.fault.curvature_oom_*)"
            )


def curvature_oom_injector(cfg) -> InjectedCurvatureOOM | None:
    f = cfg.trainer.get("fault")
    if not f or f.get("curvature_oom_run") is None or f.curvature_oom_run != cfg.run:
        return None
    return InjectedCurvatureOOM(at_step=f.get("curvature_oom_at_step") or 0)
