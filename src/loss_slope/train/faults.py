"""Test-only fault injection, switched on from the Hydra config (trainer.fault.*).

Used by the SLURM and fault tests to make one run of a pack fail once, for
real, in the middle of training. Off unless both keys are set.
"""

from __future__ import annotations

from pathlib import Path

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


def fault_callbacks(cfg, run_dir) -> list[Callback]:
    f = cfg.trainer.get("fault")
    if not f or f.fail_run is None or f.fail_at_step is None or f.fail_run != cfg.run:
        return []
    return [FailOnce(step=f.fail_at_step, marker=Path(run_dir) / "fault.once")]
