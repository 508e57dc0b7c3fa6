"""Divergence: a non-finite loss, or a loss above a multiple of its start.

Checked on the host copies the recorder already makes every K steps, so it
costs no extra synchronisation; a diverged run stops within K steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class DivergenceGuard:
    """``max_loss_factor``: diverged when loss > factor × the mean of the first
    ``reference_steps`` losses (None = only non-finite losses count)."""

    max_loss_factor: float | None = 10.0
    reference_steps: int = 10
    reference: float | None = None
    _ref_sum: float = 0.0
    _ref_n: int = 0

    def update(self, steps: list[int], losses: list[float]) -> tuple[int, str] | None:
        """Feed host losses in step order; return ``(step, reason)`` at the first divergence."""
        for step, loss in zip(steps, losses):
            if not math.isfinite(loss):
                return step, f"non-finite training loss ({loss}) at step {step}"
            if self.reference is None:
                self._ref_sum += loss
                self._ref_n += 1
                if self._ref_n >= self.reference_steps:
                    self.reference = self._ref_sum / self._ref_n
            elif self.max_loss_factor is not None and loss > self.max_loss_factor * self.reference:
                return step, (
                    f"training loss {loss:.4g} at step {step} exceeds {self.max_loss_factor:g} x its start "
                    f"({self.reference:.4g})"
                )
        return None

    def state_dict(self) -> dict:
        return {"reference": self.reference, "ref_sum": self._ref_sum, "ref_n": self._ref_n}

    def load_state_dict(self, state: dict) -> None:
        self.reference, self._ref_sum, self._ref_n = state["reference"], state["ref_sum"], state["ref_n"]
