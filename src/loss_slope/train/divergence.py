"""When a run counts as diverged: the one rule, used while training and after it.

A training-loss curve has diverged when

1. any loss is non-finite (NaN or inf), or
2. any loss exceeds ``explode_factor`` × its *initial* loss (the loss exploded), or
3. (a whole curve only) its *final* loss exceeds ``final_factor`` × its initial loss
   (the run did not learn).

The parameters, stated once:

``explode_factor``
    the multiple of the initial loss that no single step's loss may exceed
    (config: ``analysis.divergence.explode_factor`` for the fit stage,
    ``trainer.divergence.max_loss_factor`` for the training guard; ``None`` in the
    guard: only non-finite losses count).
``final_factor``
    the multiple of the initial loss the final loss may not exceed
    (``analysis.divergence.final_factor``).
``edge_fraction``
    a whole curve's initial (final) loss is the median of its first (last)
    ``edge_fraction`` of the steps (``analysis.divergence.edge_fraction``).

While training (:class:`DivergenceGuard`) the losses arrive a few at a time, so
the initial loss is the mean of the first ``reference_steps`` losses and only
rules 1 and 2 apply; it is checked on the host copies the recorder already makes
every K steps, so it costs no extra synchronisation, and a diverged run stops
at the first flush after it (:mod:`loss_slope.train.flush_cadence`: the same step
in a resumed run).
After training, the fit stage applies :func:`check_divergence` to the whole curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Divergence", "DivergenceGuard", "check_divergence", "explodes", "non_finite_reason", "explode_reason"]


def explodes(loss: float, initial: float, explode_factor: float | None) -> bool:
    """Rule 2: ``loss`` exceeds ``explode_factor`` × ``initial`` (never when the factor is ``None``)."""
    return explode_factor is not None and loss > explode_factor * initial


def non_finite_reason(step, count: int = 1) -> str:
    """Why rule 1 fired: ``count`` non-finite losses, the first at ``step``."""
    return f"non-finite training loss ({count} steps) from step {step:g}"


def explode_reason(loss: float, step, explode_factor: float, initial: float) -> str:
    """Why rule 2 fired."""
    return f"training loss {loss:.4g} at step {step:g} exceeds {explode_factor:g} x its initial {initial:.4g}"


@dataclass(frozen=True)
class Divergence:
    """Whether a training curve diverged.

    Attributes
    ----------
    diverged : bool
    step : float or None
        First optimizer step that shows it (``None`` when not diverged).
    reason : str or None
    """

    diverged: bool
    step: float | None
    reason: str | None


def check_divergence(
    steps, loss, *, explode_factor: float = 10.0, final_factor: float = 1.0, edge_fraction: float = 0.02
) -> Divergence:
    """Rules 1-3 on a whole curve (the parameters: module docstring).

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
        Optimizer steps and per-step training loss (any unit).
    explode_factor, final_factor, edge_fraction : float

    Returns
    -------
    Divergence
        With the first step that shows it.
    """
    import numpy as np

    s = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    if s.size == 0:
        return Divergence(False, None, None)
    bad = ~np.isfinite(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return Divergence(True, float(s[i]), non_finite_reason(s[i], int(bad.sum())))
    k = max(1, int(round(edge_fraction * y.size)))
    head, tail = float(np.median(y[:k])), float(np.median(y[-k:]))
    over = np.flatnonzero(y > explode_factor * head)  # explodes(), vectorised
    if over.size:
        i = int(over[0])
        return Divergence(True, float(s[i]), explode_reason(y[i], s[i], explode_factor, head))
    if tail > final_factor * head:
        i = y.size - k
        return Divergence(
            True,
            float(s[i]),
            f"final training loss {tail:.4g} (steps {s[i]:g}-{s[-1]:g}) is above {final_factor:g} x "
            f"its initial {head:.4g}: the run did not learn",
        )
    return Divergence(False, None, None)


@dataclass
class DivergenceGuard:
    """Rules 1 and 2 while training, on losses fed in step order.

    ``explode_factor``: see the module docstring (``None``: only non-finite losses
    count); the initial loss is the mean of the first ``reference_steps`` losses.
    """

    explode_factor: float | None = 10.0
    reference_steps: int = 10
    reference: float | None = None
    _ref_sum: float = 0.0
    _ref_n: int = 0

    def update(self, steps: list[int], losses: list[float]) -> tuple[int, str] | None:
        """Feed host losses in step order; return ``(step, reason)`` at the first divergence."""
        for step, loss in zip(steps, losses):
            if not math.isfinite(loss):
                return step, non_finite_reason(step)
            if self.reference is None:
                self._ref_sum += loss
                self._ref_n += 1
                if self._ref_n >= self.reference_steps:
                    self.reference = self._ref_sum / self._ref_n
            elif explodes(loss, self.reference, self.explode_factor):
                return step, explode_reason(loss, step, self.explode_factor, self.reference)
        return None

    def state_dict(self) -> dict:
        return {"reference": self.reference, "ref_sum": self._ref_sum, "ref_n": self._ref_n}

    def load_state_dict(self, state: dict) -> None:
        self.reference, self._ref_sum, self._ref_n = state["reference"], state["ref_sum"], state["ref_n"]
