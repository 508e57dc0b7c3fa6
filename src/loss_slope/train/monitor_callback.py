"""MonitorCallback: curvature, noise and checkpoint-size tables, exactly once.

Drives :class:`loss_slope.metrics.monitors.Monitors` from a Lightning run and
writes three tables next to ``steps.csv`` and ``val.csv``::

    {run_dir}/tables/curvature.csv    lambda_max, hutch_trace   every curvature_every_steps steps
    {run_dir}/tables/noise.csv        psd_tail, resid_power, grad_var   every noise_every_epochs epochs
    {run_dir}/tables/checkpoints.csv  checkpoint_size_mb of every checkpoint file written

Step conventions (docs/monitors.md §1): a curvature or noise row at ``step = s``
is measured in ``on_train_batch_end`` when ``trainer.global_step == s``, i.e.
before the validation and the checkpoint taken at ``s``; on resume from a
checkpoint at ``s`` the tables keep rows with ``step <= s`` (``steps.prepare_run`` truncates
them, :data:`loss_slope.tables.schema.KEEP_ON_RESUME`). The monitors' running
state (loss predictor, residual window, gradient moments) is saved in the
checkpoint through :meth:`state_dict` (plain tensors and numbers: it loads with
``torch.load(weights_only=True)``), so a resumed run writes the rows an
uninterrupted one would.

Per step there is no host synchronisation: the loss and the gradients are
folded into device tensors. A curvature or noise event syncs once and its row
is appended and fsync'ed at once (events are rare).

A checkpoint row is written by :class:`~loss_slope.train.checkpoint_io.AtomicCheckpointIO`'s
``after_save`` hook, once the file is in place (in the checkpoint writer thread
when the write is in the background; a lock guards that table), and fsync'ed at once. A row is
identified by ``(step, kind)``; a second write of the same kind at the same step
(an interrupt checkpoint right after a validation) is not recorded again. The
only row a kill can lose is the latest checkpoint's own (killed between the
rename and the fsync of its row); on resume from that checkpoint the row is
restored from the file (its size and modification time).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import Callback

from loss_slope.metrics.checkpoint import checkpoint_size_mb
from loss_slope.metrics.curvature import fixed_batches
from loss_slope.metrics.errors import MonitorError
from loss_slope.metrics.monitors import CURVATURE_KEYS, NOISE_KEYS, MonitorConfig, Monitors
from loss_slope.tables.csvlog import CsvTable
from loss_slope.train.faults import curvature_oom_injector
from loss_slope.train.module import out_of_memory_error, release_memory

log = logging.getLogger("loss_slope.train")

_STATE_VERSION = 1

# trainer.monitors keys passed to MonitorConfig unchanged (when present)
_PASSTHROUGH = (
    "lambda_iters",
    "lambda_min_iters",
    "lambda_tol",
    "hutch_matvecs",
    "curvature_batches",
    "curvature_keep_graphs",
    "curvature_matvec_block",
    "psd_window",
    "psd_tail_fraction",
    "psd_min_points",
    "predictor_min_points",
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def monitor_failure(exc: BaseException) -> tuple[bool, str] | None:
    """A monitor event's exception that must not stop the training: ``(True, reason)`` for out of
    memory (the event's graphs and vectors on top of a full training process), ``(False, reason)``
    for a failed measurement (e.g. the non-finite weights of a diverging run); None for anything
    else (a bug: re-raise it)."""
    oom = out_of_memory_error(exc)
    if oom is not None:
        return True, f"out of memory: {_first_line(oom)}"
    if isinstance(exc, (MonitorError, RuntimeError, ValueError)):
        return False, f"failed: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _with_fault(loss_fn, fault, step: int):
    def faulty(logits, targets):
        fault(step)  # inside the event: after the forward pass, while its graph is alive
        return loss_fn(logits, targets)

    return faulty


def monitor_settings(mcfg, *, seed: int, batch_size: int, steps_per_epoch: int) -> tuple[MonitorConfig, dict]:
    """``trainer.monitors`` (a mapping, or None) → (MonitorConfig, the settings recorded in run_info.json).

    ``enabled: false`` turns every monitor off; a cadence of ``null`` or 0 turns
    that monitor off. ``curvature_batch_size: null`` means the training batch size.
    """
    mcfg = dict(mcfg or {})
    enabled = bool(mcfg.get("enabled", False))
    curvature_every = int(mcfg.get("curvature_every_steps") or 0) if enabled else 0
    noise_every = int(mcfg.get("noise_every_epochs") or 0) if enabled else 0
    kwargs: dict[str, Any] = {k: mcfg[k] for k in _PASSTHROUGH if mcfg.get(k) is not None}
    if "resid_band" in mcfg and mcfg["resid_band"] is not None:
        kwargs["resid_band"] = tuple(float(x) for x in mcfg["resid_band"])
    if "predictor_halflife_steps" in mcfg:  # null is meaningful here: no exponential forgetting
        kwargs["predictor_halflife_steps"] = mcfg["predictor_halflife_steps"]
    config = MonitorConfig(
        curvature_every_steps=curvature_every, noise_every_epochs=noise_every, seed=int(seed), **kwargs
    )
    settings = asdict(config)
    settings["resid_band"] = list(config.resid_band)
    settings.update(
        enabled=enabled,
        curvature_batch_size=int(mcfg.get("curvature_batch_size") or batch_size),
        curvature_data_seed=int(mcfg.get("curvature_data_seed") or 0),
        noise_every_steps=noise_every * steps_per_epoch,
        checkpoint_size=enabled and bool(mcfg.get("checkpoint_size", True)),
    )
    return config, settings


def held_out_batches(train, *, n_batches: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of un-augmented, normalised training batches on the training device.

    ``train`` is the run's :class:`~loss_slope.data.loader.DeviceBatches`. The
    images depend only on ``seed`` (not on the run's seed), so every run of a
    study probes the same loss.
    """
    raw = fixed_batches(train.images, train.labels, n_batches=n_batches, batch_size=batch_size, seed=seed)
    return [(train.normalize(x), y) for x, y in raw]


class MonitorCallback(Callback):
    """Feeds the monitors every step and writes their tables (see the module docstring).

    Parameters
    ----------
    tables_dir : path
        The run's tables folder (the three CSVs are created there, header only, at once).
    config : MonitorConfig
    batches : list of (inputs, targets)
        The fixed held-out batches of the curvature monitor (on the device).
    steps_per_epoch : int
    checkpoint_dirs : dict kind → folder
        ``{"latest": ..., "best": ...}``; a checkpoint elsewhere is of kind ``other``.
    record_checkpoints : bool
        Write ``checkpoints.csv`` rows (needs ``AtomicCheckpointIO`` as the checkpoint plugin).
    """

    def __init__(
        self,
        *,
        tables_dir,
        config: MonitorConfig,
        batches,
        steps_per_epoch: int,
        checkpoint_dirs: dict[str, Any] | None = None,
        record_checkpoints: bool = True,
        loss_fn=F.cross_entropy,
        settings: dict | None = None,
        fault=None,
    ) -> None:
        self.config, self.batches, self.spe, self.loss_fn = config, list(batches), int(steps_per_epoch), loss_fn
        self.fault = fault  # test-only: fault(step) is called inside each curvature event (trainer.fault)
        self.settings = settings or {}
        self.monitors = Monitors(config)
        tables_dir = Path(tables_dir)
        self.curvature = CsvTable(tables_dir / "curvature.csv", "curvature")
        self.noise = CsvTable(tables_dir / "noise.csv", "noise")
        self.checkpoints = CsvTable(tables_dir / "checkpoints.csv", "checkpoints")
        self.record_checkpoints = record_checkpoints
        self.checkpoint_dirs = {kind: Path(d).resolve() for kind, d in (checkpoint_dirs or {}).items()}
        self._seen = self._checkpoint_keys(tables_dir / "checkpoints.csv")
        self._lock = threading.Lock()  # checkpoint rows may come from the checkpoint writer thread
        self._io = None
        self._last_step = -1
        self.curvature_events = self.noise_events = 0
        self.curvature_seconds = self.noise_seconds = 0.0

    # ---- per step (no host sync) ------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.monitors.observe_gradients(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        s = trainer.global_step
        if s == self._last_step or outputs is None:  # no optimizer step (accumulation, a skipped batch)
            return
        self._last_step = s
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.monitors.on_train_step(s - 1, loss.detach())
        if self.monitors.curvature_due(s):
            self._curvature(pl_module, s)
        if self.monitors.noise_due(s, self.spe):
            t0 = time.perf_counter()
            row = self.monitors.measure_noise(step=s, epoch=s / self.spe)
            self.noise.append([tuple(row[k] for k in NOISE_KEYS)])
            self.noise.sync()
            self.noise_events += 1
            self.noise_seconds += time.perf_counter() - t0
            log.info(
                "noise at step %d: psd_tail %.4g, resid_power %.4g, grad_var %.4g (%d residuals, %d steps)",
                s,
                row["psd_tail"],
                row["resid_power"],
                row["grad_var"],
                row["psd_points"],
                row["grad_var_steps"],
            )

    def _curvature(self, pl_module, s: int) -> None:
        t0 = time.perf_counter()
        loss_fn = self.loss_fn if self.fault is None else _with_fault(self.loss_fn, self.fault, s)
        reason = None
        try:
            with torch.enable_grad():
                row = self.monitors.measure_curvature(pl_module, loss_fn, self.batches, step=s, epoch=s / self.spe)
        except Exception as exc:
            # Only the reason is kept: the exception (and its traceback's frames, which hold the
            # event's tensors) is dropped when this block ends, before the memory is released.
            failure = monitor_failure(exc)
            if failure is None:
                raise
            reason = failure[1]
        if reason is not None:
            release_memory(pl_module.device)
            log.warning("curvature at step %d: %s; writing a NaN row and training on", s, reason)
            row = dict.fromkeys(CURVATURE_KEYS, math.nan)
            row.update(
                step=s,
                epoch=s / self.spe,
                lambda_iters=0,
                hutch_matvecs=0,
                seconds=time.perf_counter() - t0,
                lambda_converged=False,
                status=reason.replace(",", ";").replace("\n", " ")[:200],
            )
        self.curvature.append([tuple(row[k] for k in CURVATURE_KEYS)])
        self.curvature.sync()
        self.curvature_events += 1
        self.curvature_seconds += time.perf_counter() - t0
        log.info(
            "curvature at step %d: lambda_max %.4g (%d Lanczos vectors, residual %.2g, smallest Ritz value "
            "%.4g), hutch_trace %.4g ± %.2g (%.1f s)",
            s,
            row["lambda_max"],
            row["lambda_iters"],
            row["lambda_residual"],
            row["lambda_min_ritz"],
            row["hutch_trace"],
            row["hutch_trace_se"],
            row["seconds"],
        )

    # ---- checkpoint sizes -------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        if self._io is not None:
            return
        io = trainer.strategy.checkpoint_io
        if not hasattr(io, "after_save"):
            if self.record_checkpoints:
                log.warning(
                    "checkpoint plugin %s has no after_save hook: checkpoint sizes are not recorded", type(io).__name__
                )
            return
        io.before_save.append(self._leave_state_out_of_best)
        if self.record_checkpoints:
            io.after_save.append(self._checkpoint_written)
        self._io = io

    def teardown(self, trainer, pl_module, stage):
        if self._io is not None:
            for hooks, fn in (
                (self._io.before_save, self._leave_state_out_of_best),
                (self._io.after_save, self._checkpoint_written),
            ):
                if fn in hooks:
                    hooks.remove(fn)
        self._io = None

    def _leave_state_out_of_best(self, checkpoint: dict, path) -> dict:
        """A ``best`` checkpoint is written without this callback's running state.

        Runs resume only from ``latest``; the state (chiefly the noise monitor's float32
        gradient mean, as large as the weights) would make every ``best`` file up to 1.5×
        larger for nothing. Loading a ``best`` checkpoint to resume still works: the monitors
        then start afresh (Lightning skips a callback whose state is absent).
        """
        states = checkpoint.get("callbacks") or {}
        if self._kind(Path(path)) != "best" or self.state_key not in states:
            return checkpoint
        pruned = dict(checkpoint)
        pruned["callbacks"] = {k: v for k, v in states.items() if k != self.state_key}
        return pruned

    def on_train_start(self, trainer, pl_module):
        # The latest checkpoint's own row is written after its file: a kill in between loses it.
        ckpt = trainer.ckpt_path
        if self.record_checkpoints and ckpt and Path(ckpt).is_file():
            path = Path(ckpt)
            self._record(trainer.global_step, path, when=path.stat().st_mtime)

    def _kind(self, path: Path) -> str:
        parent = path.resolve().parent
        return next((kind for kind, d in self.checkpoint_dirs.items() if d == parent), "other")

    def _checkpoint_written(self, checkpoint: dict, path) -> None:
        try:
            self._record(int(checkpoint["global_step"]), Path(path), when=time.time())
        except OSError as exc:  # never fail a checkpoint over its size row
            log.warning("could not record the size of checkpoint %s: %s", path, exc)

    def _record(self, step: int, path: Path, *, when: float) -> None:
        kind = self._kind(path)
        with self._lock:
            if (step, kind) in self._seen:
                return
            row = (step, step / self.spe, when, kind, path.name.replace(",", "_"), checkpoint_size_mb(path))
            self.checkpoints.append([row])
            self.checkpoints.sync()
            self._seen.add((step, kind))

    @staticmethod
    def _checkpoint_keys(path: Path) -> set[tuple[int, str]]:
        keys = set()
        with open(path) as fh:
            next(fh, None)
            for line in fh:
                parts = line.rstrip("\n").split(",")
                if len(parts) >= 4 and parts[0].lstrip("-").isdigit():
                    keys.add((int(parts[0]), parts[3]))
        return keys

    # ---- persistence ------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": _STATE_VERSION, "monitors": self.monitors.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise MonitorError(f"unknown MonitorCallback state version {state_dict.get('version')}")
        self.monitors.load_state_dict(state_dict["monitors"])

    def sync(self) -> None:
        self.curvature.sync()
        self.noise.sync()
        with self._lock:
            self.checkpoints.sync()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.sync()

    def on_train_end(self, trainer, pl_module):
        self.sync()
        if self.curvature_events or self.noise_events:
            log.info(
                "monitors this attempt: %d curvature events (%.1f s), %d noise events (%.2f s)",
                self.curvature_events,
                self.curvature_seconds,
                self.noise_events,
                self.noise_seconds,
            )

    def on_exception(self, trainer, pl_module, exception):
        self.sync()

    def close(self) -> None:
        self.curvature.close()
        self.noise.close()
        with self._lock:
            self.checkpoints.close()


def build_monitor_callback(cfg, data, *, tables_dir, checkpoint_dirs: dict) -> MonitorCallback:
    """The run's MonitorCallback from the Hydra config ``cfg`` (``cfg.trainer.monitors``) and its data."""
    spe = data.steps_per_epoch
    config, settings = monitor_settings(
        cfg.trainer.get("monitors"), seed=int(cfg.seed), batch_size=int(cfg.data.batch_size), steps_per_epoch=spe
    )
    batches = []
    if config.curvature_every_steps:
        batches = held_out_batches(
            data.train,
            n_batches=config.curvature_batches,
            batch_size=settings["curvature_batch_size"],
            seed=settings["curvature_data_seed"],
        )
    return MonitorCallback(
        tables_dir=tables_dir,
        config=config,
        batches=batches,
        steps_per_epoch=spe,
        checkpoint_dirs=checkpoint_dirs,
        record_checkpoints=settings["checkpoint_size"],
        settings=settings,
        fault=curvature_oom_injector(cfg),
    )
