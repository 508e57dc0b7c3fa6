"""When a run saves its ``latest`` checkpoint: the ``trainer.checkpoint`` settings with their
defaults, and the epoch rule, without importing Lightning.

One home for what training (:class:`~loss_slope.train.latest.LatestCheckpoint`), the resource
probe (which charges the saves at a run's cadence) and run validation (which requires a
``latest`` row at every epoch the rule names) must agree on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LatestSettings:
    """``every_epochs``: save at the last validation of every this many epochs (0: off);
    ``every_minutes``: or when this many minutes of training passed since the previous save
    (0: off); ``background_write``: write, fsync and rename in a writer thread."""

    every_epochs: int = 1
    every_minutes: float = 10.0
    background_write: bool = True

    @classmethod
    def from_trainer(cls, trainer: Mapping | None) -> LatestSettings:
        """From a run's ``trainer`` config (a DictConfig or a plain dict); a missing key takes
        its default, an explicit ``null``/0 turns its criterion off."""
        ck = (trainer or {}).get("checkpoint") or {}
        epochs = ck.get("latest_every_epochs", cls.every_epochs)
        minutes = ck.get("latest_every_minutes", cls.every_minutes)
        return cls(
            every_epochs=int(epochs or 0),
            every_minutes=float(minutes or 0.0),
            background_write=bool(ck.get("background_write", cls.background_write)),
        )


def epoch_end_due(step: int, *, steps_per_epoch: int, val_interval: int, every_epochs: int) -> bool:
    """``step`` (optimizer steps done, > 0) is the last validation of an epoch whose number
    (1-based) is a multiple of ``every_epochs`` (0: never)."""
    if not every_epochs or step <= 0:
        return False
    epoch = (step - 1) // steps_per_epoch
    in_epoch = step - epoch * steps_per_epoch
    return in_epoch + val_interval > steps_per_epoch and (epoch + 1) % every_epochs == 0


def cadence_by_attempt(records) -> list[list[int]]:
    """``[[start_step, every_epochs], ...]`` of the attempts whose ``start`` record in
    ``attempts.jsonl`` says the epoch cadence they saved ``latest`` at (``latest_every_epochs``),
    in order: run control may change it between attempts."""
    return [
        [int(r["start_step"]), int(r["latest_every_epochs"])]
        for r in records
        if r.get("event") == "start" and r.get("latest_every_epochs") is not None and r.get("start_step") is not None
    ]


def every_epochs_at(step: int, cadence: list, default: int) -> int:
    """The epoch cadence in force when the validation at ``step`` ran: that of the last attempt
    of ``cadence`` (:func:`cadence_by_attempt`) that started before it (an attempt resumed at a
    step does not save that step again), else ``default``."""
    every = default
    for start, value in cadence:
        if int(start) < step:
            every = int(value)
    return every
