"""Where a run's validations fall: steps per epoch, the validation interval, the validation steps.

Validations come after every ``val_interval = steps_per_epoch // val_per_epoch``
batches of an epoch (Lightning's integer ``val_check_interval``), so at steps
``e * steps_per_epoch + k * val_interval``, k = 1..val_per_epoch. Lightning validates
at every multiple of the interval inside an epoch, so a ``val_per_epoch`` for which
that gives more than ``val_per_epoch`` validations (8 steps, 3 per epoch: every 2
steps, 4 times) is refused rather than logged with a row the tables do not expect.
One home for the
real trainer, the resource probe, the simulated backend, the pre-flight check and run
validation (numpy, no torch).
"""

from __future__ import annotations

import numpy as np


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps per epoch of ``n_train`` examples (a short last batch counts unless dropped)."""
    n, b = int(n_train), int(batch_size)
    return n // b if drop_last else -(-n // b)


def val_interval(steps_per_epoch: int, val_per_epoch: int) -> int:
    """Batches between two validations of an epoch.

    ``ValueError`` if an epoch is too short for them, or if Lightning would validate
    more often than ``val_per_epoch`` times an epoch at that interval."""
    spe, vpe = int(steps_per_epoch), int(val_per_epoch)
    interval = spe // vpe
    if interval < 1:
        raise ValueError(f"trainer.val_per_epoch={vpe} exceeds the {spe} steps of an epoch")
    if spe // interval != vpe:
        raise ValueError(
            f"trainer.val_per_epoch={vpe}: with {spe} steps per epoch a validation every {interval} steps "
            f"comes {spe // interval} times an epoch; use one of {exact_val_per_epoch(spe, near=vpe)}"
        )
    return interval


def exact_val_per_epoch(steps_per_epoch: int, *, near: int, count: int = 4) -> list[int]:
    """The ``count`` values of ``val_per_epoch`` nearest ``near`` that an epoch of ``steps_per_epoch`` allows."""
    spe = int(steps_per_epoch)
    ok = [v for v in range(1, spe + 1) if spe // (spe // v) == v]
    return sorted(sorted(ok, key=lambda v: (abs(v - near), v))[:count])


def validation_steps(epochs: int, steps_per_epoch: int, val_per_epoch: int) -> np.ndarray:
    """Every validation's step (optimizer steps done when it runs), in order."""
    per_epoch = np.arange(1, int(val_per_epoch) + 1) * val_interval(steps_per_epoch, val_per_epoch)
    return (np.arange(int(epochs))[:, None] * int(steps_per_epoch) + per_epoch[None, :]).ravel()


def last_validation_step(steps_done: int, *, steps_per_epoch: int, val_interval: int) -> int:
    """The last validation at or before ``steps_done`` optimizer steps (0: none yet)."""
    spe, vi, n = int(steps_per_epoch), int(val_interval), int(steps_done)
    if n <= 0:
        return 0
    epoch = (n - 1) // spe
    within = n - epoch * spe  # 1 .. spe
    if within >= vi:
        return epoch * spe + (within // vi) * vi
    return 0 if epoch == 0 else (epoch - 1) * spe + (spe // vi) * vi


def is_scheduled_validation(step: int, *, steps_per_epoch: int, val_interval: int) -> bool:
    """``step`` optimizer steps done (> 0) is one of the epoch's scheduled validations (not one
    Lightning adds when training stops off the schedule)."""
    spe, n = int(steps_per_epoch), int(step)
    return n > 0 and (n - (n - 1) // spe * spe) % int(val_interval) == 0
