"""Learning-rate schedules evaluated per optimizer step (no torch import needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up over ``warmup_steps``, then ``kind`` ("cosine" or "constant").

    ``factor(step)`` multiplies the peak LR for optimizer step ``step``
    (0-based). Warm-up starts at 1/warmup_steps, never at 0, so step 0 learns.
    """

    kind: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "constant"):
            raise ValueError(f"schedule: unknown kind {self.kind!r}; allowed: cosine, constant")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"schedule: warm-up ({self.warmup_steps} steps) must be shorter than "
                f"training ({self.total_steps} steps)"
            )

    def factor(self, step: int) -> float:
        """The LR factor of ``step`` (0-based): linear warm-up to 1 at step ``warmup_steps - 1``,
        then 1 at ``warmup_steps`` and a cosine that would reach ``min_lr_ratio`` at step
        ``total_steps`` (so the last step, ``total_steps - 1``, is just above it)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """The warm-up's optimizer steps: ``warmup_epochs`` (may be fractional) rounded to a step."""
    return int(round(float(warmup_epochs) * steps_per_epoch))


def schedule_from_config(cfg, *, steps_per_epoch: int, epochs: int) -> Schedule:
    return Schedule(
        kind=str(cfg.name),
        warmup_steps=warmup_steps(cfg.warmup_epochs, steps_per_epoch),
        total_steps=int(epochs) * steps_per_epoch,
        min_lr_ratio=float(cfg.get("min_lr_ratio", 0.0) or 0.0),
    )
