"""One probe process: time a short training of a variant on the shared device.

    python -m loss_slope.probe.worker --out W.json --barrier DIR --index I --k K --steps S -- [hydra overrides]

The worker runs the training's own loop: a Lightning ``Trainer`` with the
run's :class:`~loss_slope.train.module.CurveModule` (its ``training_step``, so
the run's precision, channels_last, compile and gradient clipping), the step
recorder, the monitor callback, validations (each with a ``best`` save) and one
``latest`` checkpoint inside the timed window. After the warm-up steps it waits
until all K workers are ready (files in DIR), so the timed steps really run
concurrently. An out-of-memory error (any: the micro-batch fallback is off in
the probe, as a run that needs it does not fit) is reported, not raised.

Step time: the window holds its events at the probe's cadence, not the run's
(two validations and a checkpoint in a few dozen steps; the curvature event
after it), so ``step_ms`` is the training loop's time per step composed by
:func:`loop_time`: the window's steps less its events, plus each event at the
training's cadence (``loop``: the parts; ``window_step_ms``: the raw window).
A configuration whose loss diverges is timed all the same (a run would stop;
the probe measures time), and its curvature event, if it fails, is recorded
(``curvature_error``) and not charged.

Monitors: when ``trainer.monitors`` turns them on (as in training), every step
also feeds them (the gradient moments hold one more copy of the parameters plus
a scratch copy), and after the timed steps the worker runs **the curvature
event** with the configured settings on the configured held-out batches, twice:
the first loads its kernels (as a run's first event does, once), the second is
timed (``curvature_seconds``; the first's: ``curvature_first_seconds``). Its
double-backward graphs and Hutch++ blocks raise the peak memory above a plain
training step, and ``peak_mem_mb`` includes that peak, so N per GPU is not
over-estimated; the peak before it is ``peak_mem_train_mb``.

GPU memory: what a process takes from the device is the caching allocator's
**reserved** memory (allocated bytes plus the cache it keeps) plus its **CUDA
context** (driver, kernels, cuDNN/cuBLAS workspaces: hundreds of MiB that no
allocator statistic shows). ``peak_mem_mb`` is the peak reserved memory plus the
context; the context is the process's own use as NVML reports it minus its
reserved memory (where NVML is available and names this process), else, for a
worker alone on the device (k = 1), the device's used memory minus what was used
before (NVML; without it nothing, an upper bound) and minus the reserved memory;
otherwise it is left to the probe, which
adds the k = 1 worker's context (``context_mb``). CUDA loads kernels and creates
the cuDNN/cuBLAS handles lazily, so the context is measured when it is created
(``context_start_mb``) and again after the timed steps and after the curvature
event; ``context_mb`` is the largest. ``peak_allocated_mb`` is
kept for comparison.

CPUs: ``--cpus`` pins the worker to the CPUs a pack of k runs gets (k x
``training.threads``), before torch starts its threads.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from pytorch_lightning import Callback

from loss_slope.jsonio import write_json
from loss_slope.train import val_schedule
from loss_slope.train.divergence import DivergenceGuard
from loss_slope.train.latest_cadence import LatestSettings
from loss_slope.train.module import out_of_memory_error


class ProbeStopped(Exception):
    """The probe's training ended before its timed window did."""


class _TimesDivergedSteps(DivergenceGuard):
    """The probe's recorder never stops the training: a diverging loss (the variant's default LR
    may be too large for it) takes as long per step, and the probe measures time."""

    def update(self, steps, losses):
        return None


def _barrier(folder: Path, index: int, k: int, timeout: float = 600) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready.{index}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready.*"))) < k:
        if time.monotonic() > deadline:
            raise TimeoutError(f"probe barrier: only {len(list(folder.glob('ready.*')))} of {k} workers ready")
        time.sleep(0.01)


class _Window(Callback):
    """Lightning callback of the probe: the timed window, one checkpoint inside it, curvature events after it.

    At ``global_step == warmup`` it waits for the other workers (barrier) and starts the clock;
    at ``warmup + steps // 2`` it saves one ``latest`` checkpoint and waits for its write; at
    ``warmup + steps`` it stops the clock (one host sync, as in training) and, with the
    curvature monitor on, runs the event twice on the configured held-out batches inside the
    peak-memory window: the first loads its kernels (cuDNN autotunes the double backward's
    shapes), as a run's first event does once; the second is timed. Inside the window it
    times each validation (from :class:`_ValidationStarts`, first among the callbacks, to
    its own ``on_validation_end``, last), a ``best`` save (weights only, as the run's
    ``ModelCheckpoint`` at the end of a validation) included, the ``latest`` checkpoint
    (save and write), and the monitor events that fell inside it, so that :func:`loop_time`
    can charge every event at the training's cadence.
    """

    def __init__(
        self,
        *,
        warmup: int,
        steps: int,
        barrier,
        index: int,
        k: int,
        device,
        checkpoint: str,
        best: str,
        monitor_cb,
        out: dict,
    ) -> None:
        self.warmup, self.steps, self.barrier, self.index, self.k = warmup, steps, barrier, index, k
        self.device, self.checkpoint, self.best, self.monitor_cb, self.out = device, checkpoint, best, monitor_cb, out
        self.clock = time.perf_counter
        self.t0 = None
        self.done = False
        self.validation_seconds: list[float] = []
        self.checkpoint_seconds = 0.0
        self._validation_t0 = None
        self._monitor_s0 = 0.0

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _monitor_seconds(self) -> float:
        return self.monitor_cb.curvature_seconds + self.monitor_cb.noise_seconds

    def on_train_start(self, trainer, pl_module) -> None:
        if self.warmup == 0:
            self._start()

    def _start(self) -> None:
        import torch

        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.barrier is not None:
            _barrier(self.barrier, self.index, self.k)
        self._monitor_s0 = self._monitor_seconds()
        self.t0 = self.clock()

    def validation_starts(self) -> None:
        if self.t0 is not None and not self.done:
            self._sync()
            self._validation_t0 = self.clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation_t0 is not None:
            trainer.save_checkpoint(self.best, weights_only=True)  # a run's best: at most one per validation
            self._sync()
            self.validation_seconds.append(self.clock() - self._validation_t0)
            self._validation_t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        s = trainer.global_step
        if s == self.warmup and self.t0 is None:
            self._start()
        elif s == self.warmup + self.steps // 2 and self.steps > 1:
            # the save and its write (conservative: a run's write overlaps its next steps)
            self._sync()
            t = self.clock()
            trainer.save_checkpoint(self.checkpoint)
            trainer.strategy.checkpoint_io.wait()
            self._sync()
            self.checkpoint_seconds += self.clock() - t
        if s != self.warmup + self.steps:
            return
        float(outputs["loss"])  # one host sync at the end, as in training
        trainer.strategy.checkpoint_io.wait()  # the last best file's write, if still running
        self._sync()
        dt = self.clock() - self.t0
        self.done = True
        monitor_s = self._monitor_seconds() - self._monitor_s0  # the run's own events in the window
        self._measure_context()
        self.out.update(window_step_ms=1e3 * dt / self.steps, seconds=dt)
        if self.monitor_cb.batches:
            self._curvature(pl_module, s)
        self.out["loop"] = loop = loop_time(
            window_s=dt,
            steps=self.steps,
            validation_s=self.validation_seconds,
            checkpoint_s=self.checkpoint_seconds,
            monitor_s=monitor_s,
            curvature_s=self.out.get("curvature_seconds"),
            cadence=self.out["cadence"],
        )
        batch_size = int(self.out["batch_size"])
        self.out.update(
            step_ms=loop["step_ms"],
            samples_per_s=1e3 * batch_size / loop["step_ms"],
            loop_seconds=self.steps * loop["step_ms"] / 1e3,
        )
        if self.device.type == "cuda":
            gpu_footprint(self.device, self.out)

    def _curvature(self, pl_module, s: int) -> None:
        """Two curvature events inside the peak-memory window, outside the timed one; the second is
        timed. An out-of-memory error propagates (the level does not fit); any other failure (e.g.
        the non-finite weights of a diverging configuration) is recorded and leaves the curvature
        uncharged, as a run writes a NaN row and trains on."""
        import torch
        import torch.nn.functional as F

        from loss_slope.train.monitor_callback import monitor_failure

        cb = self.monitor_cb
        if self.device.type == "cuda":
            self.out["peak_mem_train_mb"] = gpu_footprint(self.device, dict(self.out))["peak_mem_mb"]
        else:
            self.out["peak_mem_train_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        seconds = []
        try:
            for _ in range(2):
                t1 = self.clock()
                with torch.enable_grad():
                    row = cb.monitors.measure_curvature(pl_module, F.cross_entropy, cb.batches, step=s, epoch=0.0)
                self._sync()
                seconds.append(self.clock() - t1)
        except Exception as exc:
            failure = monitor_failure(exc)
            if failure is None or failure[0]:  # out of memory: the level does not fit
                raise
            self.out["curvature_error"] = failure[1]
            return
        finally:
            self._measure_context()
        self.out["curvature_first_seconds"], self.out["curvature_seconds"] = seconds
        # Lanczos's first vector is the Hutch++ sketch's: k vectors cost k - 1 products
        self.out["curvature_matvecs"] = row["hutch_matvecs"] + max(row["lambda_iters"] - 1, 0)

    def _measure_context(self) -> None:
        """The context again, now that the steps (and the curvature event) have run: CUDA loads
        kernels and creates the cuDNN/cuBLAS handles lazily, at their first use."""
        if self.device.type == "cuda":
            late = context_mb(self.device, used_before_mb=self.out.get("used_before_mb"), alone=self.k == 1)
            self.out["context_mb"] = largest_context(self.out.get("context_mb"), late)


class _ValidationStarts(Callback):
    """First in the probe's callback list: the window's clock of a validation starts before any
    other callback's ``on_validation_start`` (the window's own ``on_validation_end`` runs last)."""

    def __init__(self, window: _Window) -> None:
        self.window = window

    def on_validation_start(self, trainer, pl_module) -> None:
        self.window.validation_starts()


def loop_time(
    *,
    window_s: float,
    steps: int,
    validation_s: list[float],
    checkpoint_s: float,
    curvature_s: float | None,
    cadence: dict,
    monitor_s: float = 0.0,
) -> dict:
    """The training loop's time per step, every event charged at the training's cadence.

    The window holds ``steps`` steps (each with its per-step monitors, recorder and Lightning
    work), validations (each with a ``best`` save), one ``latest`` checkpoint and any monitor
    event the run's schedule put in it (``monitor_s``), at the probe's cadence, not the run's;
    the timed curvature event ran after it. A step of the run costs the window's time less its
    events, per step, plus a validation every ``cadence["validation"]`` steps (the median of
    those timed, less the first when there are more: a process's first also sets up the loop),
    a ``latest`` checkpoint every :func:`latest_every_steps`, and a curvature event every
    ``cadence["curvature"]`` steps (None: off). Not charged: the noise monitor's event (a
    spectrum of at most ``psd_window`` numbers, every few epochs). Upper bounds: a ``best``
    save at every validation (a run saves one only when the validation loss enters its top
    k), and the ``latest`` write as if it blocked the training (a run's overlaps its next steps).
    """
    plain = max(window_s - sum(validation_s) - checkpoint_s - monitor_s, 0.0) / steps
    out = {"plain_step_ms": 1e3 * plain, "validation_ms": 0.0, "checkpoint_ms": 0.0, "curvature_ms": 0.0}
    if validation_s and cadence.get("validation"):
        steady = validation_s[1:] or validation_s  # a process's first validation also sets up the loop
        out["validation_ms"] = 1e3 * statistics.median(steady) / cadence["validation"]
    if curvature_s and cadence.get("curvature"):
        out["curvature_ms"] = 1e3 * curvature_s / cadence["curvature"]
    every = latest_every_steps(cadence, (out["plain_step_ms"] + out["validation_ms"] + out["curvature_ms"]) / 1e3)
    if checkpoint_s and every:
        out["checkpoint_ms"] = 1e3 * checkpoint_s / every
    out["step_ms"] = out["plain_step_ms"] + out["validation_ms"] + out["checkpoint_ms"] + out["curvature_ms"]
    out["validation_seconds"], out["checkpoint_seconds"] = list(validation_s), checkpoint_s
    out["monitor_seconds"], out["curvature_every"] = monitor_s, cadence.get("curvature")
    return out


def latest_every_steps(cadence: dict, step_s: float) -> float | None:
    """Mean steps between a run's ``latest`` saves (``loss_slope.train.latest``): at the end of
    every ``cadence["latest_steps"]`` steps (whole epochs), and inside such a stretch whenever
    ``cadence["latest_minutes"]`` passed since the previous save, at ``step_s`` seconds a step.
    None: neither criterion is on."""
    epoch = cadence.get("latest_steps")
    minutes = cadence.get("latest_minutes")
    by_time = max(1.0, 60.0 * minutes / step_s) if minutes and step_s > 0 else None
    if epoch and by_time:
        return epoch / (1 + math.floor((epoch - 1) / by_time))
    return epoch or by_time


def _nvml_index(cuda_index: int) -> int:
    """NVML's number of the GPU that CUDA calls ``cuda_index``: NVML numbers every GPU of the node,
    CUDA only the visible ones (``CUDA_VISIBLE_DEVICES``, by number or UUID). Creates no CUDA context."""
    import torch

    try:
        return int(torch.cuda._get_nvml_device_index(cuda_index))
    except Exception:  # a private helper of torch's: without it, assume the numbers agree
        return cuda_index


def _process_gpu_mb(device) -> float | None:
    """This process's GPU memory as NVML reports it (context included), or None (no NVML, or it
    does not name this process: e.g. another PID namespace)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device.index or 0))
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory:
                return proc.usedGpuMemory / 2**20
    except Exception:  # NVML is optional
        return None
    return None


def context_mb(device, *, used_before_mb: float | None, alone: bool) -> float | None:
    """MiB the CUDA context takes on ``device`` beyond the allocator's reserved memory (see the module doc)."""
    import torch

    reserved = torch.cuda.memory_reserved(device) / 2**20
    own = _process_gpu_mb(device)
    if own is not None:
        return max(0.0, own - reserved)
    if alone:
        # without NVML (used_before_mb None) nothing is taken off for other users of the device:
        # an upper bound, which can only make N smaller
        free, total = torch.cuda.mem_get_info(device)
        return max(0.0, (total - free) / 2**20 - (used_before_mb or 0.0) - reserved)
    return None


def largest_context(*measured: float | None) -> float | None:
    """The context of a process measured at several moments: it only grows (lazy loading), so the
    largest measurement; None when none could be made."""
    known = [m for m in measured if m is not None]
    return max(known) if known else None


def gpu_footprint(device, out: dict) -> dict:
    """``out`` with the peak GPU footprint: peak reserved + the context (when known), and the allocated peak."""
    import torch

    out["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    out["peak_mem_mb"] = out["peak_reserved_mb"] + (out.get("context_mb") or 0.0)
    return out


def _device_used_mb() -> float | None:
    """The device's used memory before this process creates its context (NVML; no CUDA call)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(0)))
        return info.used / 2**20
    except Exception:
        return None


def measure(overrides: list[str], *, steps: int, warmup: int, barrier: Path | None, index: int, k: int) -> dict:
    """Train the run's configuration for ``warmup + steps`` steps in the training's own loop and time
    the last ``steps``: the Lightning trainer and :class:`~loss_slope.train.module.CurveModule` of
    ``train_pack`` runs (its ``training_step``, precision, channels_last, compile, gradient
    clipping), the step recorder, the monitor callback, validations (at least two in the window)
    and one checkpoint; ``step_ms`` is the training loop's (:func:`loop_time`)."""
    import tempfile

    import hydra.utils
    import pytorch_lightning as pl
    import torch
    from lightning_fabric.plugins.environments import LightningEnvironment

    from loss_slope.data.datasets import build_data
    from loss_slope.train.checkpoint_io import AtomicCheckpointIO
    from loss_slope.train.compose import compose_train_config
    from loss_slope.train.module import CurveModule, MicroBatcher, MicroBatchTooSmall
    from loss_slope.train.monitor_callback import build_monitor_callback
    from loss_slope.train.recorder import MetricRecorder
    from loss_slope.train.schedule import schedule_from_config
    from loss_slope.train.steps import compile_options

    cfg = compose_train_config([*overrides, "run_dir=/nonexistent"])
    torch.set_num_threads(int(cfg.trainer.threads))
    use_cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "cuda", "gpu")
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    batch = int(cfg.data.batch_size)
    out = {"index": index, "device": str(device), "oom": False, "batch_size": batch}
    if use_cuda:
        used_before = _device_used_mb() if k == 1 else None
        torch.cuda.init()
        torch.zeros(1, device=device)  # the context exists from here on
        # measured again after the timed steps (_Window), once the lazily loaded kernels and handles exist
        out["context_mb"] = out["context_start_mb"] = context_mb(device, used_before_mb=used_before, alone=k == 1)
        out["used_before_mb"] = used_before
        out["gpu_name"] = torch.cuda.get_device_name(device)
        out["gpu_total_mb"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    window = None
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        try:
            pl.seed_everything(int(cfg.seed), workers=False, verbose=False)
            data = build_data(cfg.data, seed=int(cfg.seed), device=device)
            spe = data.steps_per_epoch
            val_interval = val_schedule.val_interval(spe, int(cfg.trainer.val_per_epoch))
            net = hydra.utils.instantiate(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
            module = CurveModule(
                net,
                hydra.utils.instantiate(cfg.optimizer),
                schedule_from_config(cfg.schedule, steps_per_epoch=spe, epochs=int(cfg.trainer.epochs)),
                channels_last=bool(cfg.trainer.channels_last),
                gradient_clip_val=cfg.trainer.gradient_clip_val,
                micro_batcher=MicroBatcher(min_size=batch, floor="the probe's whole batch"),  # any OOM: k does not fit
                compile=compile_options(cfg.trainer.get("compile")),
            )
            monitor_cb = build_monitor_callback(
                cfg, data, tables_dir=Path(tmp) / "tables", checkpoint_dirs={"latest": Path(tmp) / "checkpoints"}
            )
            out["monitors"] = {
                "noise": bool(monitor_cb.config.noise_every_epochs),
                "curvature": bool(monitor_cb.batches),
            }
            # validations in the window: at least two (a process's first also sets up the loop), or the
            # training's cadence where that is more often; loop_time charges them at the training's
            every = min(val_interval, max(1, steps // 2))
            recorder = MetricRecorder(
                tables_dir=Path(tmp) / "tables",
                steps_per_epoch=spe,
                total_steps=warmup + steps,
                val_interval=every,  # its work at each of the probe's validations, as at each of a run's
                flush_every=int(cfg.trainer.flush_every_steps),
                log_every=cfg.trainer.log_every_steps,
                guard=_TimesDivergedSteps(),
            )
            latest = LatestSettings.from_trainer(cfg.trainer)
            out["cadence"] = {
                "validation": spe / (spe // val_interval),  # mean steps between a run's validations
                "latest_steps": latest.every_epochs * spe or None,
                "latest_minutes": latest.every_minutes or None,
                "curvature": monitor_cb.config.curvature_every_steps if monitor_cb.batches else None,
            }
            window = _Window(
                warmup=warmup,
                steps=steps,
                barrier=barrier,
                index=index,
                k=k,
                device=device,
                checkpoint=str(Path(tmp) / "checkpoints" / "latest.ckpt"),
                best=str(Path(tmp) / "checkpoints" / "best.ckpt"),
                monitor_cb=monitor_cb,
                out=out,
            )
            trainer = pl.Trainer(
                accelerator="gpu" if use_cuda else "cpu",
                devices=1,
                precision=cfg.trainer.precision,
                max_steps=warmup + steps,
                max_epochs=-1,
                logger=False,
                val_check_interval=every,
                check_val_every_n_epoch=None,
                num_sanity_val_steps=0,
                callbacks=[_ValidationStarts(window), recorder, monitor_cb, window],
                plugins=[
                    AtomicCheckpointIO(background=latest.background_write),
                    LightningEnvironment(),
                ],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp,
            )
            data.train.step_source = lambda: trainer.global_step
            try:
                trainer.fit(module, train_dataloaders=data.train, val_dataloaders=data.val)
            finally:
                recorder.close()
            if "step_ms" not in out:
                if barrier is not None and window.t0 is None:
                    _barrier(barrier, index, k)  # do not leave the others waiting
                raise ProbeStopped(
                    f"the probe's training stopped at step {trainer.global_step}, before the end of its window "
                    f"(step {warmup + steps})"
                )
        except (MicroBatchTooSmall, torch.OutOfMemoryError, RuntimeError) as exc:
            reported = exc if isinstance(exc, MicroBatchTooSmall) else out_of_memory_error(exc)
            if reported is None:
                raise
            message = str(reported)
            out.update(oom=True, error=message.splitlines()[0] if message else type(reported).__name__)
            if use_cuda:  # GPU memory reached before the OOM: the same unit as the other workers'
                gpu_footprint(device, out)
            if barrier is not None and (window is None or window.t0 is None):
                _barrier(barrier, index, k)  # do not leave the others waiting
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if "peak_mem_mb" not in out:
        out["peak_mem_mb"] = out["peak_rss_mb"]  # CPU: host memory is the constrained resource
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--barrier")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cpus", help="comma-separated CPU ids to run on (a pack's CPUs)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    if a.cpus and hasattr(os, "sched_setaffinity"):  # before torch starts its threads
        os.sched_setaffinity(0, {int(c) for c in a.cpus.split(",")})
    res = measure(
        a.overrides,
        steps=a.steps,
        warmup=a.warmup,
        barrier=Path(a.barrier) if a.barrier else None,
        index=a.index,
        k=a.k,
    )
    write_json(res, a.out, indent=2, strict=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
