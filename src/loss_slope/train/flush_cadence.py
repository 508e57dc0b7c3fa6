"""When the step recorder moves its rows to the host: one schedule for every attempt of a run.

A run's rows are flushed at each validation and, between two validations, every
``flush_every`` steps counted from the last validation. The schedule is a function
of the step alone, so an attempt resumed from a checkpoint taken anywhere (a
SIGTERM between two validations) flushes at the steps an uninterrupted run flushes
at, and the divergence guard, which reads the rows at flushes, stops a diverged run
at the same step (validations: :mod:`loss_slope.train.val_schedule`). Used by the
recorder of a real run and by the simulated backend (no torch here).
"""

from __future__ import annotations


def regular_flush(steps_done: int, last_validation: int, flush_every: int) -> bool:
    """A flush between validations is due after ``steps_done`` steps (the validation's own flush aside)."""
    since = int(steps_done) - int(last_validation)
    return since > 0 and since % int(flush_every) == 0
