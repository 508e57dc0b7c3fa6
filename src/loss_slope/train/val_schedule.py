"""Where a run's validations fall: steps per epoch, the validation interval, the validation steps.

Validations come after every ``val_interval = steps_per_epoch // val_per_epoch``
batches of an epoch (Lightning's integer ``val_check_interval``), so at steps
``e * steps_per_epoch + k * val_interval``, k = 1..val_per_epoch. One home for the
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
    """Batches between two validations of an epoch; ``ValueError`` if an epoch is too short for them."""
    interval = int(steps_per_epoch) // int(val_per_epoch)
    if interval < 1:
        raise ValueError(f"trainer.val_per_epoch={val_per_epoch} exceeds the {steps_per_epoch} steps of an epoch")
    return interval


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
