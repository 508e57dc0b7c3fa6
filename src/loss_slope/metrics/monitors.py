"""Integration API: one object a Lightning callback drives.

Step conventions (the same as the per-step and validation tables):

* ``on_train_step(step, loss)`` — ``step`` is the 0-based index of the
  optimizer step whose mini-batch loss this is, i.e. the per-step table row
  (``trainer.global_step - 1`` in ``on_train_batch_end``).
* ``curvature_due / measure_curvature / noise_due / measure_noise`` —
  ``step`` is the number of optimizer steps done (``trainer.global_step`` in
  ``on_train_batch_end``). A curvature row at ``step = s`` measures the weights
  after ``s`` updates; a noise row at ``s`` covers per-step rows ``< s``. Both
  are written before a checkpoint taken at ``s``, so on resume keep rows with
  ``step <= s``.

A minimal callback::

    class MonitorCallback(pl.Callback):
        def __init__(self, config, batches, loss_fn):
            self.monitors, self.batches, self.loss_fn = Monitors(config), batches, loss_fn

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.monitors.observe_gradients(module)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            s = trainer.global_step
            self.monitors.on_train_step(s - 1, outputs["loss"].detach())
            if self.monitors.curvature_due(s):
                rows["curvature"].append(self.monitors.measure_curvature(
                    module, self.loss_fn, self.batches, step=s, epoch=s / trainer.num_training_batches))
            if self.monitors.noise_due(s, trainer.num_training_batches):
                rows["noise"].append(self.monitors.measure_noise(step=s, epoch=...))

        def state_dict(self):
            return self.monitors.state_dict()

        def load_state_dict(self, state):
            self.monitors.load_state_dict(state)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from loss_slope.metrics.curvature import Batch, LossFn, curvature
from loss_slope.metrics.errors import MonitorError
from loss_slope.metrics.noise import (
    GradientMoments,
    LossResidualBuffer,
    OnlinePowerLawPredictor,
    band_has_bin,
    psd_tail,
    resid_power,
    tail_band,
)

__all__ = ["CURVATURE_KEYS", "NOISE_KEYS", "MonitorConfig", "Monitors"]

CURVATURE_KEYS = (
    "step",
    "epoch",
    "lambda_max",
    "hutch_trace",
    "lambda_iters",
    "hutch_matvecs",
    "seconds",
    "lambda_converged",
    "hutch_trace_se",
    "lambda_residual",
    "lambda_min_ritz",
    "status",
)
NOISE_KEYS = ("step", "epoch", "psd_tail", "resid_power", "grad_var", "psd_points", "grad_var_steps")

_STATE_VERSION = 2  # GradientMoments keeps a scalar M2; a version-1 state (per-element M2) loads too
_LOADABLE_VERSIONS = (1, 2)
# Hutch++ spends matvecs // 3 products on the sketch, as many on H Q and the rest on residual
# probes; its standard error needs two residual probes, which 4 is the fewest products to give.
_HUTCH_MIN_MATVECS = 4
_PSD_MIN_POINTS = 16  # the smallest psd_min_points allowed


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of the curvature and noise monitors.

    Attributes
    ----------
    curvature_every_steps : int
        Measure curvature after every this many optimizer steps; 0 disables.
    lambda_iters, lambda_min_iters : int
        Maximum and minimum Lanczos vectors (Hessian-vector products; the first is free
        after Hutch++).
    lambda_tol : float
        Relative residual ``‖H v − λ v‖ / |λ|`` of the top Ritz pair that counts as converged.
    hutch_matvecs : int
        Hessian-vector products of Hutch++; at least 4, the fewest that leave two residual
        probes for the trace's standard error.
    curvature_batches : int
        Number of fixed held-out training batches the caller passes.
    curvature_keep_graphs : bool
        Reuse each batch's gradient graph across products (faster, more memory).
    curvature_matvec_block : int
        Hessian-vector products per vmapped backward in Hutch++ (1 = none;
        more may pay on a GPU, at that many times the memory).
    noise_every_epochs : int
        Report noise after every this many epochs; 0 disables the noise monitors.
    psd_window : int
        Residuals kept for the spectrum (the last ``psd_window`` steps).
    psd_tail_fraction : float
        ``psd_tail`` averages the PSD over ``0.5·(1 − fraction) ≤ f < 0.5`` cycles/step.
    resid_band : (float, float)
        ``resid_power`` integrates the PSD over ``lo ≤ f < hi`` cycles/step.
    psd_min_points : int
        Fewer residuals than this give NaN spectral values in the row. With the noise monitors
        on, both bands (the tail and ``resid_band``) must hold a frequency bin at every number
        of residuals from ``psd_min_points`` to ``psd_window``.
    predictor_halflife_steps : float or None
        Half-life of the power-law predictor's exponential weighting (steps).
    predictor_min_points : int
        Losses seen before the first residual is produced.
    seed : int
        Seeds the curvature probes; each event uses ``SeedSequence([seed, step])``.
    """

    curvature_every_steps: int = 500
    lambda_iters: int = 20
    lambda_min_iters: int = 5
    lambda_tol: float = 1e-3
    hutch_matvecs: int = 50
    curvature_batches: int = 1
    curvature_keep_graphs: bool = True
    curvature_matvec_block: int = 1
    noise_every_epochs: int = 2
    psd_window: int = 512
    psd_tail_fraction: float = 0.25
    resid_band: tuple[float, float] = (1 / 64, 1 / 8)
    psd_min_points: int = 64
    predictor_halflife_steps: float | None = 2000.0
    predictor_min_points: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "curvature_every_steps >= 0": self.curvature_every_steps >= 0,
            "1 <= lambda_min_iters <= lambda_iters": 1 <= self.lambda_min_iters <= self.lambda_iters,
            "lambda_tol > 0": self.lambda_tol > 0,
            f"hutch_matvecs >= {_HUTCH_MIN_MATVECS} (Hutch++ splits them as hutch_matvecs // 3 sketch products, "
            "as many for H Q, the rest residual probes; its standard error needs 2 residual probes)": (
                self.hutch_matvecs >= _HUTCH_MIN_MATVECS
            ),
            "curvature_batches >= 1": self.curvature_batches >= 1,
            "curvature_matvec_block >= 1": self.curvature_matvec_block >= 1,
            "noise_every_epochs >= 0": self.noise_every_epochs >= 0,
            f"psd_window >= psd_min_points >= {_PSD_MIN_POINTS}": (
                self.psd_window >= self.psd_min_points >= _PSD_MIN_POINTS
            ),
            "0 < psd_tail_fraction <= 1": 0 < self.psd_tail_fraction <= 1,
            "0 <= resid_band[0] < resid_band[1] <= 0.5": 0 <= self.resid_band[0] < self.resid_band[1] <= 0.5,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if not failed and self.noise_every_epochs:
            failed = self._empty_noise_bands()
        if failed:
            raise MonitorError(f"invalid MonitorConfig: {', '.join(failed)}")

    def _empty_noise_bands(self) -> list[str]:
        """Why a noise event would find a band without a frequency bin, or nothing.

        A noise event measures the spectrum of n residuals for every n from ``psd_min_points`` to
        ``psd_window``; each band must hold a bin at each such n (bins are k/n, so a narrow band
        can hold one at n and none at n + 1)."""
        tail = tail_band(self.psd_tail_fraction)
        bands = {
            f"psd_tail_fraction = {self.psd_tail_fraction} (band {tail})": tail,
            f"resid_band = {tuple(self.resid_band)}": tuple(self.resid_band),
        }
        sizes = range(self.psd_min_points, self.psd_window + 1)
        empty = {}  # band → the first number of residuals at which it holds no bin
        for name, band in bands.items():
            n = next((n for n in sizes if not band_has_bin(n, band)), None)
            if n is not None:
                empty[name] = n
        if not empty:
            return []
        smallest = None  # the smallest psd_min_points from which every band holds a bin up to psd_window
        for n in range(self.psd_window, _PSD_MIN_POINTS - 1, -1):
            if not all(band_has_bin(n, band) for band in bands.values()):
                break
            smallest = n
        fix = (
            f"the smallest psd_min_points that works with psd_window = {self.psd_window} is {smallest}"
            if smallest is not None
            else f"no psd_min_points works with psd_window = {self.psd_window}: widen the band or raise psd_window"
        )
        return [
            f"{name} holds no frequency bin at n = {n} residuals (psd_min_points = {self.psd_min_points}); {fix}"
            for name, n in empty.items()
        ]


def _probe_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    # Stateless per event: a resumed run draws the same probes as an uninterrupted one.
    state = int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


class Monitors:
    """Curvature and noise monitors with the state a resumed run needs.

    Parameters
    ----------
    config : MonitorConfig
    """

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = config or MonitorConfig()
        self.predictor, self.residuals, self.grad_moments = self._components()

    def _components(self) -> tuple[OnlinePowerLawPredictor, LossResidualBuffer, GradientMoments]:
        predictor = OnlinePowerLawPredictor(
            halflife_steps=self.config.predictor_halflife_steps, min_points=self.config.predictor_min_points
        )
        return predictor, LossResidualBuffer(self.config.psd_window), GradientMoments()

    # --- every step (no host sync) -------------------------------------------------
    def on_train_step(self, step: int, loss: torch.Tensor) -> None:
        """Feed the mini-batch loss of per-step row ``step`` (a detached device scalar)."""
        if not self.config.noise_every_epochs:
            return
        residual = self.predictor.update(step, loss)
        if residual is not None:
            self.residuals.push(residual)

    def observe_gradients(self, model: nn.Module) -> None:
        """Add the current ``.grad`` of the trainable parameters (call in ``on_before_optimizer_step``)."""
        if self.config.noise_every_epochs:
            self.grad_moments.observe_model(model)

    # --- curvature -----------------------------------------------------------------
    def curvature_due(self, step: int) -> bool:
        """True when ``step`` (optimizer steps done) is a positive multiple of ``curvature_every_steps``."""
        every = self.config.curvature_every_steps
        return every > 0 and step > 0 and step % every == 0

    def measure_curvature(
        self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], step: int, epoch: float
    ) -> dict[str, Any]:
        """Hutch++ trace and Lanczos ``lambda_max`` (started from the Hutch++ sketch) on the fixed batches; one row.

        ``lambda_residual`` is the certificate ``‖H v − λ v‖ / |λ|``, ``lambda_min_ritz`` the
        smallest Ritz value, ``status`` ``"ok"`` (a failed event's row says why).
        """
        cfg = self.config
        if len(batches) != cfg.curvature_batches:
            raise MonitorError(f"got {len(batches)} curvature batches, config says {cfg.curvature_batches}")
        device = next(model.parameters()).device
        result = curvature(
            model,
            loss_fn,
            batches,
            iters=cfg.lambda_iters,
            tol=cfg.lambda_tol,
            min_iters=cfg.lambda_min_iters,
            matvecs=cfg.hutch_matvecs,
            generator=_probe_generator(cfg.seed, step, device),
            keep_graphs=cfg.curvature_keep_graphs,
            matvec_block=cfg.curvature_matvec_block,
        )
        return {
            "step": int(step),
            "epoch": float(epoch),
            "lambda_max": result.lambda_max.value,
            "hutch_trace": result.trace.value,
            "lambda_iters": result.lambda_max.iterations,
            "hutch_matvecs": result.trace.matvecs,
            "seconds": result.seconds,
            "lambda_converged": result.lambda_max.converged,
            "hutch_trace_se": result.trace.std_error,
            "lambda_residual": result.lambda_max.residual,
            "lambda_min_ritz": result.lambda_max.bottom,
            "status": "ok",
        }

    # --- noise ---------------------------------------------------------------------
    def noise_due(self, step: int, steps_per_epoch: int) -> bool:
        """True when ``step`` (optimizer steps done) ends every ``noise_every_epochs``-th epoch."""
        every = self.config.noise_every_epochs * steps_per_epoch
        return every > 0 and step > 0 and step % every == 0

    def measure_noise(self, step: int, epoch: float) -> dict[str, Any]:
        """Spectrum of the last ``psd_window`` residuals and the gradient variance since the last report.

        Resets the gradient moments. Spectral values are NaN while fewer than
        ``psd_min_points`` residuals exist; ``grad_var`` is NaN when no gradient
        was observed.
        """
        cfg = self.config
        residuals = self.residuals.values()
        tail = band = math.nan
        if residuals.numel() >= cfg.psd_min_points:
            tail = psd_tail(residuals, tail_fraction=cfg.psd_tail_fraction, min_points=cfg.psd_min_points)
            band = resid_power(residuals, cfg.resid_band, min_points=cfg.psd_min_points)
        steps = self.grad_moments.count
        grad_var = float(self.grad_moments.grad_var()) if steps else math.nan
        self.grad_moments.reset()
        return {
            "step": int(step),
            "epoch": float(epoch),
            "psd_tail": tail,
            "resid_power": band,
            "grad_var": grad_var,
            "psd_points": int(residuals.numel()),
            "grad_var_steps": steps,
        }

    # --- checkpointing -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to produce identical rows (tensors, ints, floats only)."""
        config = asdict(self.config)
        config["resid_band"] = list(config["resid_band"])
        return {
            "version": _STATE_VERSION,
            "config": config,
            "predictor": self.predictor.state_dict(),
            "residuals": self.residuals.state_dict(),
            "grad_moments": self.grad_moments.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") not in _LOADABLE_VERSIONS:
            raise MonitorError(f"unknown monitor state version {state.get('version')}")
        predictor, residuals, grad_moments = self._components()  # all or nothing
        predictor.load_state_dict(state["predictor"])
        residuals.load_state_dict(state["residuals"])
        grad_moments.load_state_dict(state["grad_moments"])
        self.predictor, self.residuals, self.grad_moments = predictor, residuals, grad_moments
