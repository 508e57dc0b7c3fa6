"""The ``best`` checkpoints (weights only, the ``best_top_k`` lowest validation losses), taken
at the scheduled validations only.

When training stops off the validation schedule (a time budget, a divergence found at a regular
flush), Lightning validates once more. That validation is no row of the validation table, so it
is no candidate for ``best`` either: an uninterrupted run never sees it, and a ``best`` row off
the schedule would fail the run's validation (``checkpoints_recorded``).
"""

from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint

from loss_slope.train.val_schedule import is_scheduled_validation

__all__ = ["BestCheckpoint"]


class BestCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` that ignores the validations off the run's schedule."""

    def __init__(self, *, steps_per_epoch: int, val_interval: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self._schedule = {"steps_per_epoch": int(steps_per_epoch), "val_interval": int(val_interval)}

    def on_validation_end(self, trainer, pl_module) -> None:
        if not is_scheduled_validation(trainer.global_step, **self._schedule):
            return
        super().on_validation_end(trainer, pl_module)
