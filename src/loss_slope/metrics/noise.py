"""Noise of the training loss and of the gradient.

* :class:`OnlinePowerLawPredictor` — incremental least-squares line of log loss
  against log(step + 1), O(1) per step, on device.
* :class:`LossResidualBuffer` — ring buffer of the last ``capacity`` residuals
  (log loss minus the one-step-ahead prediction), on device.
* :func:`periodogram`, :func:`psd_tail`, :func:`resid_power` — spectrum of the
  residuals: one-sided periodogram of the mean-removed, Hann-windowed series, in
  residual² per (cycle/step); identical to ``scipy.signal.periodogram(x, fs=1,
  window="hann", detrend="constant", scaling="density")``.
* :class:`GradientMoments` — trace of the covariance of mini-batch gradients
  across the steps since the last report, via Welford updates (per-element
  mean, summed M2) with ``torch._foreach`` ops.

Nothing here moves a value to the host on the per-step path; the definitions
with formulas are in ``docs/monitors.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from loss_slope.metrics.errors import MonitorError, NotEnoughPoints

__all__ = [
    "GradientMoments",
    "LossResidualBuffer",
    "OnlinePowerLawPredictor",
    "Periodogram",
    "PowerLawFit",
    "band_has_bin",
    "band_mean",
    "periodogram",
    "psd_tail",
    "resid_power",
    "tail_band",
]


@dataclass(frozen=True)
class PowerLawFit:
    """Current line ``log L = intercept + slope · log(step + 1)``.

    ``exponent`` is ``−slope``, so ``L ∝ (step + 1)^(−exponent)``.
    """

    intercept: float
    slope: float
    exponent: float
    points: int


class OnlinePowerLawPredictor:
    """Weighted least-squares line of ``log(loss)`` against ``log(step + 1)``, updated in O(1).

    Keeps five running sums on the loss tensor's device in float64,
    ``W = Σ wᵢ, Sx = Σ wᵢxᵢ, Sy = Σ wᵢyᵢ, Sxx = Σ wᵢxᵢ², Sxy = Σ wᵢxᵢyᵢ`` with
    ``xᵢ = log(stepᵢ + 1)``, ``yᵢ = log(lossᵢ)`` and weights decaying by
    ``γ = 2^(−1/halflife_steps)`` per update (``γ = 1`` without a half-life).
    Non-finite or non-positive losses get weight 0 and a NaN residual.

    Parameters
    ----------
    halflife_steps : float or None
        Half-life of the exponential weighting, in updates; None weights all
        points equally.
    min_points : int
        :meth:`update` returns no residual until this many points were seen.
    """

    def __init__(self, *, halflife_steps: float | None = None, min_points: int = 10) -> None:
        if halflife_steps is not None and not halflife_steps > 0:
            raise MonitorError(f"halflife_steps must be positive or None, got {halflife_steps}")
        if min_points < 2:
            raise MonitorError(f"min_points must be >= 2, got {min_points}")
        self.halflife_steps = halflife_steps
        self.decay = 1.0 if halflife_steps is None else 2.0 ** (-1.0 / halflife_steps)
        self.min_points = min_points
        self.count = 0  # host-side: updates seen
        self._sums: Tensor | None = None  # (5,) float64: W, Sx, Sy, Sxx, Sxy

    def _predict(self, x: float) -> Tensor:
        w, sx, sy, sxx, sxy = self._sums.unbind()
        var = w * sxx - sx * sx
        slope = torch.where(var > 0, (w * sxy - sx * sy) / var, torch.zeros_like(var))
        return (sy - slope * sx) / w + slope * x

    def update(self, step: int, loss: Tensor) -> Tensor | None:
        """Add one batch loss; return its residual ``log(loss) − prediction`` (0-d float64 tensor).

        The prediction uses the points *before* this one (one-step-ahead), so
        the residual is not shrunk towards the fit. Returns None while fewer
        than ``min_points`` points have been seen. No host synchronisation.
        """
        loss = loss.detach().reshape(())
        if self._sums is None:
            self._sums = torch.zeros(5, dtype=torch.float64, device=loss.device)
        elif self._sums.device != loss.device:  # state loaded with map_location="cpu"
            self._sums = self._sums.to(loss.device)
        x = math.log(step + 1.0)
        y_raw = loss.to(torch.float64).log()
        ok = torch.isfinite(y_raw)
        y = torch.where(ok, y_raw, torch.zeros_like(y_raw))
        residual = None
        if self.count >= self.min_points:
            residual = torch.where(ok, y - self._predict(x), torch.full_like(y, math.nan))
        w = ok.to(torch.float64)
        terms = torch.stack([w, w * x, w * y, w * (x * x), w * x * y])
        self._sums.mul_(self.decay).add_(terms)
        self.count += 1
        return residual

    def fit(self) -> PowerLawFit:
        """Current fit (synchronises with the device)."""
        if self._sums is None or self.count < 2:
            raise NotEnoughPoints(f"a line needs 2 points, have {self.count}")
        w, sx, sy, sxx, sxy = (float(v) for v in self._sums.cpu())
        var = w * sxx - sx * sx
        if not var > 0:
            raise NotEnoughPoints("all points share one step; the slope is undefined")
        slope = (w * sxy - sx * sy) / var
        return PowerLawFit(intercept=(sy - slope * sx) / w, slope=slope, exponent=-slope, points=self.count)

    def state_dict(self) -> dict[str, Any]:
        return {
            "halflife_steps": self.halflife_steps,
            "min_points": self.min_points,
            "count": self.count,
            "sums": None if self._sums is None else self._sums.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["halflife_steps"] != self.halflife_steps or state["min_points"] != self.min_points:
            raise MonitorError("predictor settings in the checkpoint differ from the current ones")
        self.count = int(state["count"])
        self._sums = None if state["sums"] is None else state["sums"].clone()


class LossResidualBuffer:
    """Ring buffer of the last ``capacity`` residuals, kept on the device.

    :meth:`push` writes a 0-d tensor in place (no host sync); the write index
    and fill level are host integers.
    """

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 2:
            raise MonitorError(f"capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.index = 0  # next slot to write
        self.size = 0
        self._data: Tensor | None = None

    def push(self, value: Tensor) -> None:
        value = value.detach().reshape(1)
        if self._data is None:
            self._data = torch.zeros(self.capacity, dtype=torch.float64, device=value.device)
        elif self._data.device != value.device:  # state loaded with map_location="cpu"
            self._data = self._data.to(value.device)
        self._data[self.index : self.index + 1].copy_(value)
        self.index = (self.index + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def values(self) -> Tensor:
        """The stored residuals, oldest first (shape ``(size,)``, float64, on device)."""
        if self._data is None:
            return torch.zeros(0, dtype=torch.float64)
        if self.size < self.capacity:
            return self._data[: self.size].clone()
        return torch.cat([self._data[self.index :], self._data[: self.index]])

    def __len__(self) -> int:
        return self.size

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "index": self.index,
            "size": self.size,
            "data": None if self._data is None else self._data.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise MonitorError(f"buffer capacity {state['capacity']} in the checkpoint, {self.capacity} configured")
        self.index, self.size = int(state["index"]), int(state["size"])
        self._data = None if state["data"] is None else state["data"].clone()


@dataclass(frozen=True)
class Periodogram:
    """One-sided PSD of a residual series.

    Attributes
    ----------
    freqs : np.ndarray
        ``k / n`` for ``k = 0 … n // 2``, in cycles per step.
    power : np.ndarray
        Density in residual² per (cycle/step); ``Σ power · Δf ≈ variance``.
    n : int
        Length of the series.
    """

    freqs: np.ndarray
    power: np.ndarray
    n: int


def _as_tensor(residuals: Tensor | np.ndarray | Iterable[float]) -> Tensor:
    if isinstance(residuals, Tensor):
        return residuals.detach().to(torch.float64).reshape(-1)
    return torch.as_tensor(np.asarray(residuals, dtype=np.float64)).reshape(-1)


def _density(x: Tensor, min_points: int) -> Tensor:
    n = x.numel()
    if n < min_points:
        raise NotEnoughPoints(f"the spectrum needs at least {min_points} residuals, have {n}")
    window = torch.hann_window(n, periodic=True, dtype=x.dtype, device=x.device)
    spectrum = torch.fft.rfft((x - x.mean()) * window)
    power = spectrum.abs().square() / window.square().sum()  # fs = 1 step⁻¹
    power[1 : (n + 1) // 2] *= 2  # one-sided: fold negative frequencies; DC and Nyquist have no twin
    return power


def periodogram(residuals: Tensor | np.ndarray | Iterable[float], *, min_points: int = 16) -> Periodogram:
    """One-sided periodogram of the mean-removed, Hann-windowed series (see module docstring)."""
    x = _as_tensor(residuals)
    power = _density(x, min_points).cpu().numpy()
    n = x.numel()
    return Periodogram(freqs=np.arange(n // 2 + 1) / n, power=power, n=n)


def _band_bins(n: int, lo: float, hi: float) -> slice:
    if not 0.0 <= lo < hi <= 0.5:
        raise MonitorError(f"band must satisfy 0 <= lo < hi <= 0.5 cycles/step, got ({lo}, {hi})")
    # bins k with lo <= k/n < hi, never DC (removed) nor Nyquist (not folded)
    first = max(1, math.ceil(lo * n - 1e-9))
    last = min(math.ceil(hi * n - 1e-9), (n + 1) // 2)  # exclusive
    if last <= first:
        raise NotEnoughPoints(f"band ({lo}, {hi}) holds no frequency bin at n = {n}")
    return slice(first, last)


def band_mean(
    residuals: Tensor | np.ndarray | Iterable[float], band: tuple[float, float], *, min_points: int = 16
) -> float:
    """Mean PSD over the bins with ``lo ≤ f < hi`` (residual² per cycle/step)."""
    x = _as_tensor(residuals)
    power = _density(x, min_points)
    return float(power[_band_bins(x.numel(), *band)].mean())


def psd_tail(
    residuals: Tensor | np.ndarray | Iterable[float], *, tail_fraction: float = 0.25, min_points: int = 16
) -> float:
    """Mean PSD of the highest-frequency bins, ``0.5·(1 − tail_fraction) ≤ f < 0.5``.

    Units: residual² per (cycle/step). For white residuals of variance σ² the
    one-sided density is flat at ``2σ²``.
    """
    return band_mean(residuals, tail_band(tail_fraction), min_points=min_points)


def tail_band(tail_fraction: float) -> tuple[float, float]:
    """The band ``(0.5·(1 − tail_fraction), 0.5)`` cycles/step that :func:`psd_tail` averages."""
    if not 0.0 < tail_fraction <= 1.0:
        raise MonitorError(f"tail_fraction must be in (0, 1], got {tail_fraction}")
    return 0.5 * (1.0 - tail_fraction), 0.5


def band_has_bin(n: int, band: tuple[float, float]) -> bool:
    """True when ``band`` (``lo ≤ f < hi``) holds at least one frequency bin of a series of ``n`` residuals."""
    try:
        _band_bins(n, *band)
    except NotEnoughPoints:
        return False
    return True


def resid_power(
    residuals: Tensor | np.ndarray | Iterable[float],
    band: tuple[float, float] = (1 / 64, 1 / 8),
    *,
    min_points: int = 16,
) -> float:
    """Power in the band ``lo ≤ f < hi``: ``Σ_k P(f_k) · Δf`` with ``Δf = 1/n``, in residual².

    A sinusoid of amplitude A inside the band contributes ``A²/2``; white noise
    of variance σ² contributes ``2σ²·(hi − lo)``.
    """
    x = _as_tensor(residuals)
    power = _density(x, min_points)
    return float(power[_band_bins(x.numel(), *band)].sum() / x.numel())


class GradientMoments:
    """Per-element running mean of the gradient and the *summed* Welford M2 (a scalar).

    After ``n`` observed gradients ``g₁ … gₙ`` (one per optimizer step),
    :meth:`grad_var` is ``Σ_j [ (1/n)Σ_t g_{t,j}² − ((1/n)Σ_t g_{t,j})² ]``,
    the trace of the (population, 1/n) covariance of the gradient across those
    steps. Only the trace is reported, so only ``M2 = Σ_j M2_j`` is kept: the
    Welford update summed over the elements is ``M2 += (n−1)/n · ‖δ‖²`` with
    ``δ = g − mean_old``, which avoids the cancellation of ``E[g²] − E[g]²`` in
    float32 exactly as the per-element form does. The mean is float32 (float64
    for float64 gradients) on the gradients' device; ``M2`` is a float64 device
    scalar; each tensor's ``‖δ‖`` is computed in the mean's dtype and squared and summed in float64.
    State: one copy of the parameters (the mean) plus a scalar, half of what a per-element M2 needs.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: list[Tensor] | None = None
        self._m2: Tensor | None = None  # 0-d float64: Σ_j M2_j
        self._delta: list[Tensor] | None = None

    def observe(self, grads: list[Tensor]) -> None:
        """Add one gradient (a list of tensors, fixed order and shapes). No host sync."""
        if self._mean is None:
            dtypes = [torch.promote_types(g.dtype, torch.float32) for g in grads]
            self._mean = [torch.zeros_like(g, dtype=d) for g, d in zip(grads, dtypes)]
            self._m2 = torch.zeros((), dtype=torch.float64, device=grads[0].device)
        elif len(grads) != len(self._mean):
            raise MonitorError(f"got {len(grads)} gradient tensors, tracking {len(self._mean)}")
        if self._mean[0].device != grads[0].device:  # state loaded on another device
            self._mean = [m.to(grads[0].device) for m in self._mean]
            self._m2 = self._m2.to(grads[0].device)
        if self._delta is None or self._delta[0].device != self._mean[0].device:
            self._delta = [torch.empty_like(m) for m in self._mean]  # scratch: no allocation per step
        self.count += 1
        delta = self._delta
        torch._foreach_copy_(delta, grads)  # also casts low-precision grads to the accumulator dtype
        torch._foreach_sub_(delta, self._mean)
        torch._foreach_add_(self._mean, delta, alpha=1.0 / self.count)
        if self.count > 1:  # the first step adds (n−1)/n = 0
            # per-tensor norms in the accumulator dtype (a float64 norm of float32 tensors is ~1.5x
            # slower on CPU), squared and summed in float64
            norms = torch.stack(torch._foreach_norm(delta)).to(torch.float64)
            self._m2.add_(norms.square().sum(), alpha=(self.count - 1) / self.count)

    def observe_model(self, model: nn.Module) -> None:
        """Observe ``p.grad`` of every parameter with ``requires_grad`` (a missing grad counts as zero)."""
        params = [p for p in model.parameters() if p.requires_grad]
        self.observe([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])

    def grad_var(self) -> Tensor:
        """``M2 / n`` as a 0-d float64 device tensor (the reader syncs)."""
        if self._m2 is None or self.count == 0:
            raise NotEnoughPoints("no gradient observed since the last reset")
        return self._m2 / self.count

    def mean_sq_norm(self) -> Tensor:
        """``‖E[g]‖²`` of the running mean gradient (0-d float64 device tensor)."""
        if self._mean is None or self.count == 0:
            raise NotEnoughPoints("no gradient observed since the last reset")
        return torch.stack([m.square().sum(dtype=torch.float64) for m in self._mean]).sum()

    def reset(self) -> None:
        """Start a new window; keeps the allocated accumulators."""
        self.count = 0
        if self._mean is not None:
            torch._foreach_zero_(self._mean)
            self._m2.zero_()

    def state_dict(self) -> dict[str, Any]:
        """``count``, the per-element ``mean`` and the scalar ``m2``: all a resumed window needs.

        At a report boundary (``count == 0``) the mean is all zeros and is not saved. The saved
        tensors are host copies: a copy on the GPU would add a parameter-sized block to device
        memory at every checkpoint (the accumulators move back to the gradients' device at the
        first :meth:`observe` after a load).
        """
        live = self._mean is not None and self.count > 0
        return {
            "count": self.count,
            "mean": [m.to("cpu", copy=True) for m in self._mean] if live else None,
            "m2": self._m2.to("cpu", copy=True) if live else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m2 = state["m2"]
        if isinstance(m2, list):  # version-1 state: per-element M2
            m2 = torch.stack([t.sum(dtype=torch.float64) for t in m2]).sum()
        self.count = int(state["count"])
        self._mean = None if state["mean"] is None else [m.clone() for m in state["mean"]]
        self._m2 = None if m2 is None else m2.clone().to(torch.float64)
        if self._mean is None:
            self.count = 0  # nothing observed in this window yet; accumulators are allocated at first use
        self._delta = None
