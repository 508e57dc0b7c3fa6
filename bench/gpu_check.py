"""GPU check: the GPU-only tests, how many runs to pack on one GPU (with and without MPS),
what the data path is worth, and the host syncs and checkpoint saves of the real loop.

One command, on a machine with one CUDA GPU (under 10 minutes with the monitor benchmark)::

    bench/gpu_check.sh                              # writes docs/gpu_check.md and prints it
    bench/gpu_check.sh --markdown /tmp/gpu.md       # somewhere else
    CUDA_VISIBLE_DEVICES=1 bench/gpu_check.sh       # another GPU of the node
    srun --gpus=1 --cpus-per-task=8 bench/gpu_check.sh   # on the SLURM cluster

Without a GPU it stops with exit code 2. A CPU smoke run (checks the script,
its figures are no GPU figures; a narrow net keeps it to a few minutes on 2 cores)::

    bench/gpu_check.sh --device cpu --steps 20 --warmup 5 --max-n 2 --batch-size 32 --base-width 16 --repeats 1
    GPU_CHECK_DEVICE=cpu bench/gpu_check.sh --steps 20 ...        # the same switch as an environment variable

What it measures, on CIFAR-10-shaped synthetic data (3x32x32 uint8 images,
10 classes, random pixels: content changes neither speed nor memory), written
in the archive's pickle layout to a temporary folder so that the project's own
reader and probe worker load it unchanged (no download):

0. **GPU-only tests.** ``pytest -m gpu`` (every test that skips without CUDA carries the
   marker; this script's own end-to-end test is left out). Default on a GPU; ``--no-tests``.
1. **Runs per GPU.** For S-core and S-narrow (the models of
   ``experiment=s_core`` / ``s_narrow``) and k = 1..``--max-n``, k concurrent
   processes of :mod:`loss_slope.probe.worker` (via
   :func:`loss_slope.probe.capacity.run_level`, the pipeline's probe) train
   for ``--steps`` steps after ``--warmup`` steps: samples/s in total and per
   process, peak GPU memory per process (peak reserved memory + its CUDA context),
   OOM. N is chosen by :func:`loss_slope.probe.capacity.choose_runs_per_gpu`,
   the function the pipeline uses; the packing gain is the total throughput
   at N over that at k = 1. With ``--mps auto`` (the default) the probe
   (:func:`loss_slope.probe.capacity.probe_capacity`) measures k = 2.. again under an
   MPS daemon of its own and keeps MPS only when faster; the GPU's compute mode is read first.
2. **Data path.** One process, S-core: the project's fast path (dataset and
   RandomResizedCrop + flip on the device, :mod:`loss_slope.data.loader`)
   against a plain ``torch.utils.data.DataLoader`` (uint8 CPU tensors, the
   same augmentation per image in ``--num-workers`` worker processes,
   ``pin_memory``, ``.to(device, non_blocking=True)``), same model and step;
   interleaved repeats, median.
3. **Opt-in variants** on the fast path: ``channels_last``, bf16 autocast and
   both (the CPU smoke run leaves ``channels_last`` out: it is a CUDA option). They change numerics
   (other kernels; bf16 rounding), so training keeps them off unless a user opts in (``trainer.channels_last``,
   ``trainer.precision``).

4. **The real training loop.** One S-core run of ``--real-epochs`` (1) epoch through
   :func:`loss_slope.train.run.run_training` in this process (validations, monitors,
   recorder, checkpoints), under ``torch.cuda.set_sync_debug_mode("warn")``: host syncs per
   quarter-epoch window and part of the run (:class:`SyncCounter`), the median step interval,
   and the run's checkpoint record (files, MB, time on the training thread and in the writer).
5. **The monitors** at the study's model and batch: ``bench/bench_monitors.py --device cuda
   --base-width 64 --batch-size 128`` (its table also goes to ``gpu_monitors.md`` next to the
   report). Default on a GPU; ``--no-monitors``.

The chosen N is what the pipeline's ``probe_capacity`` rule would pick on
this GPU; to fix N for a study without probing, set ``packing.runs_per_gpu``
in the study config or ``WORKERS_PER_GPU=N`` in the environment.

If the first measurement shows that the whole check would overrun
``--budget-s`` (a slow GPU), the later measurements use fewer steps; the
report says so. ``--budget-s 0`` turns that off.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import hydra.utils
import numpy as np
import torch
import torch.nn.functional as F

from loss_slope.data.augment import AugmentConfig, random_resized_crop_flip
from loss_slope.data.cifar10 import FOLDER, MEAN, STD, TEST_FILE, TRAIN_FILES, read_cifar10
from loss_slope.data.datasets import build_data
from loss_slope.probe.capacity import probe_capacity, run_level, sharing_plan
from loss_slope.train.compose import compose_train_config

REPO = Path(__file__).resolve().parents[1]
ENV_DEVICE = "GPU_CHECK_DEVICE"
EXIT_NO_GPU = 2
NO_GPU_MESSAGE = (
    "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False), and this check measures a GPU.\n"
    "  On a GPU node run it there (e.g. `srun --gpus=1 bench/gpu_check.sh`); check CUDA_VISIBLE_DEVICES and\n"
    "  that torch is a CUDA build (torch.version.cuda = {cuda}).\n"
    f"  For a CPU smoke run of the script itself pass --device cpu (or set {ENV_DEVICE}=cpu)."
)
VARIANTS = {"S-core": "s_core", "S-narrow": "s_narrow"}  # label -> Hydra experiment
# in-process measurements on the fast path: label -> (channels_last, bf16 autocast, numerics note)
OPT_IN = {
    "fp32 (as trained)": (False, False, "as in training"),
    "channels_last": (True, False, "changes numerics (other conv kernels; `trainer.channels_last`)"),
    "bf16 autocast": (False, True, "changes numerics (bf16 rounding; `trainer.precision=bf16-mixed`)"),
    "channels_last + bf16 autocast": (True, True, "changes numerics"),
}
CPU_CHANNELS_LAST_NOTE = "left out on the CPU: channels_last is a CUDA option"
FAST_LABEL = "fast path: device-resident data + augmentation (`loss_slope.data.loader`)"


class NoGpu(RuntimeError):
    pass


# ---------------------------------------------------------------- data


def write_synthetic_cifar10(root: Path, *, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Random CIFAR-10-shaped data in the archive's layout under ``root``; returns ``root``.

    Five ``data_batch_*`` files and ``test_batch``, each a pickled dict with
    ``b"data"`` (n x 3072 uint8) and ``b"labels"`` (list of ints in 0..9), as
    :func:`loss_slope.data.cifar10.read_cifar10` expects.
    """
    rng = np.random.default_rng(seed)
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, n: int) -> None:
        d = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n).tolist(),
        }
        with open(path, "wb") as fh:
            pickle.dump(d, fh, protocol=4)

    for name, n in zip(TRAIN_FILES, np.array_split(np.arange(n_train), len(TRAIN_FILES))):
        dump(folder / name, len(n))
    dump(folder / TEST_FILE, n_val)
    return root


class PlainCifar(torch.utils.data.Dataset):
    """torch ``Dataset`` as a torchvision pipeline would be: one uint8 CPU image per item,
    normalised and augmented on the CPU (the project's RandomResizedCrop + flip, applied per image)."""

    def __init__(self, images, labels, *, mean, std, augment, seed: int) -> None:
        self.images, self.labels, self.augment, self.seed = images, labels, augment, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._gen, self._pid = None, None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self._pid != os.getpid():  # one generator per worker process
            info = torch.utils.data.get_worker_info()
            self._gen = torch.Generator().manual_seed(self.seed + (info.id + 1 if info else 0))
            self._pid = os.getpid()
        x = (self.images[i].float() / 255.0 - self.mean) / self.std
        return random_resized_crop_flip(x[None], self.augment, self._gen)[0], self.labels[i]


def plain_loader(root: Path, cfg_data, *, seed: int, num_workers: int, pin_memory: bool):
    a = read_cifar10(root)
    aug = cfg_data.augment
    augment = AugmentConfig(
        crop=bool(aug.crop), scale=tuple(aug.scale), ratio=tuple(aug.ratio), flip_p=float(aug.flip_p)
    )
    ds = PlainCifar(
        torch.from_numpy(a["train_x"]), torch.from_numpy(a["train_y"]), mean=MEAN, std=STD, augment=augment, seed=seed
    )
    return torch.utils.data.DataLoader(
        ds,
        batch_size=int(cfg_data.batch_size),
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Timing:
    """One in-process training measurement."""

    samples_per_s: float | None  # None: out of memory or not supported
    peak_mem_mb: float | None  # torch.cuda.max_memory_allocated, MiB (None on the CPU)
    note: str = ""


def _cycle(batches):
    while True:
        yield from batches


def train_timed(
    cfg, batches, device, *, steps: int, warmup: int, channels_last: bool = False, bf16: bool = False
) -> Timing:
    """Train a fresh ``cfg.model`` (same init every call) on ``batches`` and time ``steps`` steps.

    One host sync at the end, as in training. Batches not yet on ``device``
    are copied with ``non_blocking=True``.
    """
    cuda = device.type == "cuda"
    if channels_last and not cuda:
        # as in training (`loss_slope.train.module.use_channels_last`): NHWC is a CUDA option; oneDNN's
        # NHWC backward of a narrow 1x1 stride-2 convolution corrupts the heap on some x86 CPUs
        return Timing(None, None, CPU_CHANNELS_LAST_NOTE)
    if bf16 and cuda and not torch.cuda.is_bf16_supported():
        return Timing(None, None, "bf16 not supported on this GPU")
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model, num_classes=10, in_channels=3).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = hydra.utils.instantiate(cfg.optimizer)(net.parameters())
    it = _cycle(batches)

    def step():
        x, y = next(it)
        if x.device != device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    try:
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        final = float(loss.detach())
        if cuda:
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError as exc:
        return Timing(None, None, f"out of memory: {str(exc).splitlines()[0]}")
    finally:
        it = None  # drops the last reference to the iterator: stops DataLoader workers
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    note = "" if np.isfinite(final) else f"non-finite loss {final}"
    return Timing(steps * int(cfg.data.batch_size) / dt, peak, note)


def compare_paths(
    overrides: list[str],
    root: Path,
    *,
    device_kind: str,
    steps: int,
    warmup: int,
    repeats: int,
    num_workers: int,
    opt_in: bool,
) -> dict[str, Timing]:
    """Fast path (each opt-in variant) and the plain DataLoader path, interleaved ``repeats`` times; medians."""
    cfg = compose_train_config([*overrides, "run_dir=/nonexistent"])
    torch.set_num_threads(int(cfg.trainer.threads))  # as the probe worker and training do
    device = torch.device("cuda", 0) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training sets it (CurveModule)
    fast = OPT_IN if opt_in else {k: v for k, v in list(OPT_IN.items())[:1]}
    runs: dict[str, list[Timing]] = {}
    for _ in range(repeats):
        data = build_data(cfg.data, seed=int(cfg.seed), device=device)
        for label, (cl, bf16, _) in fast.items():
            runs.setdefault(label, []).append(
                train_timed(cfg, data.train, device, steps=steps, warmup=warmup, channels_last=cl, bf16=bf16)
            )
        del data  # the plain path must not pay for (or be charged) the resident dataset
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        loader = plain_loader(
            root, cfg.data, seed=int(cfg.seed), num_workers=num_workers, pin_memory=device.type == "cuda"
        )
        runs.setdefault("dataloader", []).append(train_timed(cfg, loader, device, steps=steps, warmup=warmup))
        del loader
    out = {}
    for label, ts in runs.items():
        ok = [t for t in ts if t.samples_per_s is not None]
        if not ok:
            out[label] = ts[0]
            continue
        peaks = [t.peak_mem_mb for t in ok if t.peak_mem_mb is not None]
        out[label] = Timing(
            statistics.median(t.samples_per_s for t in ok),
            max(peaks) if peaks else None,
            "; ".join(sorted({t.note for t in ts if t.note})),
        )
    return out


def probe_variant(
    overrides: list[str], *, max_n: int, steps: int, warmup: int, timeout: float, mps: str = "off", on_level=None
) -> dict:
    """The pipeline's probe (:func:`loss_slope.probe.capacity.probe_capacity`: k = 1.. until OOM, with
    and without an MPS daemon as ``mps`` says, then ``choose_runs_per_gpu``).

    ``on_level(k, level, workers, wall_s)`` may return a new step count for the next levels.
    """
    current = {"steps": steps}
    measured = []  # (k, under an MPS daemon) of every level, in the order run

    def level(ovr, k, *, steps, warmup, timeout, env=None, context_mb=None):
        t0 = time.perf_counter()
        lv, workers = run_level(
            ovr, k, steps=current["steps"], warmup=warmup, timeout=timeout, env=env, context_mb=context_mb
        )
        wall = time.perf_counter() - t0
        under = bool(env and "CUDA_MPS_PIPE_DIRECTORY" in env)
        measured.append((k, under))
        shared = " under MPS" if under else ""
        sps = f"{lv.aggregate_samples_per_s:.0f} samples/s" if lv.aggregate_samples_per_s else "no figure"
        print(
            f"  k={k}{shared}: {sps}, peak MiB {[round(m) for m in lv.peak_mem_mb]}, "
            f"{'OOM, ' if lv.oom else ''}{wall:.0f} s",
            file=sys.stderr,
        )
        for e in lv.errors:
            print(f"    {e}", file=sys.stderr)
        if on_level is not None:
            current["steps"] = on_level(k, lv, workers, wall) or current["steps"]
        return lv, workers

    result = probe_capacity(
        overrides, variant="gpu-check", k_max=max_n, steps=steps, warmup=warmup, timeout=timeout, mps=mps, level=level
    )
    levels = result["levels"]
    by_k = {lv["k"]: lv["aggregate_samples_per_s"] for lv in levels}
    n = result["runs_per_gpu"]
    base = (result["mps_compared"] or {}).get("without", {}).get("levels", levels)
    k1 = next((lv["aggregate_samples_per_s"] for lv in base if lv["k"] == 1), None)
    return {
        **result,
        "gain": by_k[n] / k1 if by_k.get(n) and k1 else None,
        # per level of the chosen set: measured under a daemon? (k = 1 of an `auto` comparison: never)
        "under_mps": {k: under for k, under in measured if not (result["mps_compared"] and k == 1)},
    }


class Budget:
    """Shrinks the step count once, after the first level, if the projected total overruns ``budget_s``."""

    def __init__(
        self,
        *,
        budget_s: float,
        t_start: float,
        steps: int,
        warmup: int,
        min_steps: int,
        max_n: int,
        n_variants: int,
        repeats: int,
        opt_in: bool,
        mps_levels: bool = False,
        real_steps: int = 0,
        after_s: float = 0.0,
    ) -> None:
        self.budget_s, self.t_start, self.warmup, self.min_steps = budget_s, t_start, warmup, min_steps
        self.steps = steps  # what later measurements use
        self.real_steps = real_steps  # steps of the real-loop run after the measurements (it does not shrink)
        self.after_s = after_s  # what else comes after the measurements (the monitor benchmark)
        k_sum = max_n * (max_n + 1) // 2
        # levels of one variant: k = 1..max_n, and k = 2..max_n again under MPS
        levels, units = max_n + (max_n - 1) * mps_levels, k_sum + (k_sum - 1) * mps_levels
        self.levels_per_variant, self.units_per_variant = levels, units
        self.levels_left = levels * n_variants
        # measurements still to run, in units of one k=1 process: level k takes k times as long on a
        # saturated GPU; the DataLoader path counts double (it is often the slower one)
        self.units_left = units * n_variants + repeats * ((len(OPT_IN) if opt_in else 1) + 2)
        self.ran_levels = self.ran_units = 0  # of the variant being probed
        self.checked, self.note = False, None

    def end_variant(self) -> None:
        """A variant's probe ended: the levels it did not run (it stops at the first OOM) are not to come."""
        self.levels_left -= self.levels_per_variant - self.ran_levels
        self.units_left -= self.units_per_variant - self.ran_units
        self.ran_levels = self.ran_units = 0

    def __call__(self, k, level, workers, wall_s):
        self.levels_left, self.units_left = self.levels_left - 1, self.units_left - k
        self.ran_levels, self.ran_units = self.ran_levels + 1, self.ran_units + k
        if self.budget_s <= 0 or self.checked or k != 1 or not workers or "seconds" not in workers[0]:
            return None
        self.checked = True
        w = workers[0]
        per_step = w.get("window_step_ms", w["step_ms"]) / 1e3  # a probe window's step
        overhead = max(0.0, wall_s - w["seconds"])  # start-up of a level: imports, CUDA, data, warm-up
        # the real-loop run: the training loop's steps (the probe's step_ms: validations, checkpoints and
        # curvature at the training's cadence) and a start-up
        fixed = (self.real_steps * w["step_ms"] / 1e3 + overhead if self.real_steps else 0.0) + self.after_s
        elapsed = time.perf_counter() - self.t_start + fixed
        projected = elapsed + self.levels_left * overhead + self.units_left * (self.steps + self.warmup) * per_step
        if projected <= self.budget_s:
            return None
        left = self.budget_s - elapsed - self.levels_left * overhead
        new = max(self.min_steps, int(left / (self.units_left * per_step)) - self.warmup)
        if new >= self.steps:
            return None
        self.note = (
            f"projected {projected:.0f} s > budget {self.budget_s:.0f} s: measurements after the first "
            f"use {new} steps instead of {self.steps}"
        )
        print(f"  {self.note}", file=sys.stderr)
        self.steps = new
        return new


# ---------------------------------------------------------------- the real training loop, host syncs


SYNC_MESSAGE = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")
SYNC_PHASES = ("step", "monitors", "recorder", "data", "checkpoint", "validation", "other", "outside", "unattributed")


def sync_phase(frames: list[tuple[str, str]]) -> str:
    """Which part of a run a host sync came from, given its stack ``(file, function)``, innermost first.

    The first frame that names a part decides: Lightning's evaluation loop or ``validation_step``
    → validation; checkpoint code (the project's writer, ``latest``, Lightning's checkpoint
    connector and ``ModelCheckpoint``) → checkpoint; the project's monitors → monitors; the step
    recorder → recorder; the project's data code → data; ``training_step`` → step.
    """
    for fname, func in frames:
        f = fname.replace(os.sep, "/")
        if func == "validation_step" or f.endswith("/loops/evaluation_loop.py"):
            return "validation"
        if f.endswith(
            ("/train/checkpoint_io.py", "/train/latest.py", "/checkpoint_connector.py", "/model_checkpoint.py")
        ):
            return "checkpoint"
        if "/loss_slope/metrics/" in f or f.endswith("/train/monitor_callback.py"):
            return "monitors"
        if f.endswith("/train/recorder.py"):
            return "recorder"
        if "/loss_slope/data/" in f:
            return "data"
        if func == "training_step":
            return "step"
    return "other"


def _global_step(frame) -> int | None:
    """The optimizer steps done, from the first frame (innermost first) that holds a Lightning trainer."""
    while frame is not None:
        loc = frame.f_locals
        for obj in (loc.get("trainer"), loc.get("self")):
            candidates = [obj]
            try:  # a LightningModule not attached to a trainer raises on .trainer
                candidates.append(getattr(obj, "trainer", None))
            except Exception:
                pass
            for c in candidates:
                step = getattr(c, "global_step", None) if c is not None else None
                if isinstance(step, int) and hasattr(c, "fit_loop"):
                    return step
        frame = frame.f_back
    return None


def _in_training_loop(frames: list[tuple[str, str]]) -> bool:
    """Inside Lightning's loops (training epochs, validations, their callbacks), not in the set-up
    before them (the model and optimizer moved to the device) or the teardown after them."""
    return any("/pytorch_lightning/loops/" in f.replace(os.sep, "/") for f, _ in frames)


@dataclass
class SyncCounter:
    """Counts host syncs by part of the run and optimizer step (``with counter: ...``).

    Under ``torch.cuda.set_sync_debug_mode("warn")`` every synchronizing CUDA call issues a warning
    while its caller's Python frames are still live; this records where it came from. ``enabled=False``
    (the CPU: no CUDA sync exists) counts nothing.
    """

    enabled: bool
    set_mode: object = None  # torch.cuda.set_sync_debug_mode unless given (tests)
    counts: Counter = field(default_factory=Counter)  # (steps done or None, phase) -> syncs
    places: Counter = field(default_factory=Counter)  # "file:line function" of the caller -> syncs

    def record(self, frame) -> None:
        """Count one sync from the caller ``frame``. Never raises: an error here would surface in the
        synchronizing torch call itself (torch turns a failing warning into an exception)."""
        try:
            frames = [(f.f_code.co_filename, f.f_code.co_name) for f in _frames(frame)]
            step = _global_step(frame) if _in_training_loop(frames) else None
            self.counts[(step, sync_phase(frames) if step is not None else "outside")] += 1
            caller = next((f for f in _frames(frame) if not _library_frame(f.f_code.co_filename)), frame)
            self.places[f"{_short(caller.f_code.co_filename)}:{caller.f_lineno} {caller.f_code.co_name}"] += 1
        except Exception:
            self.counts[(None, "unattributed")] += 1

    def __enter__(self):
        self._show = warnings.showwarning
        self._filters = warnings.catch_warnings()
        self._filters.__enter__()
        if not self.enabled:
            return self
        warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}")
        shown = self._show

        def show(message, category, filename, lineno, file=None, line=None):
            if SYNC_MESSAGE in str(message):
                self.record(sys._getframe(1))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        (self.set_mode or torch.cuda.set_sync_debug_mode)("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            (self.set_mode or torch.cuda.set_sync_debug_mode)("default")
        warnings.showwarning = self._show
        self._filters.__exit__(*exc)

    def by_window(self, val_interval: int) -> dict:
        """Quarter-epoch window (``val_interval`` steps) -> {phase: syncs}; ``"outside"``: outside the
        training loop (set-up before it: the model and optimizer moved to the device; teardown after
        it: moved back) or not attributable. A training step taken with ``g`` steps done is in window
        ``g // val_interval``; what runs after it (monitors, recorder, validation, checkpoint: ``g``
        already counts it) in window ``(g - 1) // val_interval``."""
        out: dict = {}
        for (step, phase), n in self.counts.items():
            if step is None:
                window = "outside"
            else:
                window = (step if phase in ("step", "data") else max(step - 1, 0)) // val_interval
            out.setdefault(window, Counter())[phase] += n
        return dict(sorted(out.items(), key=lambda kv: -1 if kv[0] == "outside" else kv[0]))


def _library_frame(filename: str) -> bool:
    f = filename.replace(os.sep, "/")
    return "/torch/" in f or f.endswith("/warnings.py")


def _frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def _short(path: str) -> str:
    p = path.replace(os.sep, "/")
    for mark in ("/loss_slope/", "/pytorch_lightning/", "/lightning_fabric/", "/torch/"):
        if mark in p:
            return mark.strip("/") + "/" + p.split(mark, 1)[1]
    return Path(p).name


PROBE_COMPARE_FROM = 20  # the real run's steps before this one (a quarter of a short run's) are left out of its mean


def probe_against_run(real: dict, loop: dict | None) -> dict | None:
    """The probe's k = 1 step time (``loop``: :func:`loss_slope.probe.worker.loop_time`) against the
    real run's mean step after its warm-up, as the ratio of steps/s (probe / run). The probe's
    curvature share is rescaled to the events the run had (a one-epoch run may have none)."""
    if not loop or not real.get("loop_step_ms"):
        return None
    probe_ms = loop["step_ms"]
    if loop.get("curvature_every") and real.get("loop_span_steps"):
        had = real.get("curvature_events", 0) * loop["curvature_every"] / real["loop_span_steps"]
        probe_ms -= loop["curvature_ms"] * (1.0 - had)
    return {
        "probe_ms": probe_ms,
        "run_ms": real["loop_step_ms"],
        "from_step": real.get("loop_from_step", PROBE_COMPARE_FROM),
        "ratio": real["loop_step_ms"] / probe_ms,
    }


def run_loop_step(run_dir: Path) -> dict:
    """A finished run's mean time per step, events included, from its step table after its first
    ``PROBE_COMPARE_FROM`` steps (a quarter of a short run's; the probe's warm-up is left out the same
    way): ``loop_step_ms`` over ``loop_span_steps`` steps, and the ``curvature_events`` that fell in
    that span (an event after optimizer step s runs between the table's steps s - 1 and s)."""
    rows = [(int(r["step"]), float(r["time"])) for r in csv_rows(run_dir / "tables" / "steps.csv")]
    skip = min(PROBE_COMPARE_FROM, len(rows) // 4)
    settled = rows[skip:]
    if len(settled) < 2:
        return {"loop_step_ms": None, "loop_from_step": skip, "loop_span_steps": 0, "curvature_events": 0}
    (first, t0), (last, t1) = settled[0], settled[-1]
    events = [int(r["step"]) for r in csv_rows(run_dir / "tables" / "curvature.csv")]
    return {
        "loop_step_ms": 1e3 * (t1 - t0) / (last - first),
        "loop_from_step": first,
        "loop_span_steps": last - first,
        "curvature_events": sum(first + 1 <= s <= last for s in events),
    }


def real_loop_run(overrides: list[str], run_dir: Path, *, device_kind: str, epochs: int = 1) -> dict:
    """One real run (:func:`loss_slope.train.run.run_training`, in this process) for ``epochs``
    epochs with its validations, monitors and checkpoints, counting host syncs on CUDA.

    Returns the exit code, the run's shape (steps, validation interval), the syncs per window
    and part, where they came from, the median step time from the step table, and the
    run's checkpoint record (files, MB, seconds) with the ``latest`` file size.
    """
    from loss_slope.train.run import run_training  # Lightning: imported only for this part

    counter = SyncCounter(enabled=device_kind == "cuda")
    t0 = time.perf_counter()
    error = None
    try:
        # the study's 5 warm-up epochs would outlast a short run: a tenth of it warms up (speed is the same)
        cfg = compose_train_config(
            [
                *overrides,
                f"trainer.epochs={epochs}",
                f"schedule.warmup_epochs={epochs / 10}",
                f"run_dir={run_dir}",
                "variant=gpu-check",
                "run=real-loop",
            ]
        )
        with counter:
            code = run_training(cfg)
    except Exception as exc:  # the report of everything measured before must still be written
        code, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    wall = time.perf_counter() - t0
    info_path = run_dir / "run_info.json"
    if error is not None or code != 0 or not info_path.exists():
        return {"exit_code": code, "error": error or f"the run exited {code}", "wall_s": wall}
    info = json.loads(info_path.read_text())
    vi = int(info["val_interval"])
    steps = _csv_column(run_dir / "tables" / "steps.csv", "time")
    step_ms = statistics.median(1e3 * (b - a) for a, b in zip(steps, steps[1:])) if len(steps) > 1 else None
    ck = csv_rows(run_dir / "tables" / "checkpoints.csv")
    latest = [float(r["checkpoint_size_mb"]) for r in ck if r.get("kind") == "latest"]
    return {
        "exit_code": code,
        "error": None,
        "total_steps": int(info["total_steps"]),
        "steps_per_epoch": int(info["steps_per_epoch"]),
        "val_interval": vi,
        "n_val": int(info["n_val"]),
        "wall_s": wall,
        "median_step_ms": step_ms,
        **run_loop_step(run_dir),
        "syncs_counted": counter.enabled,
        "syncs": {w: dict(c) for w, c in counter.by_window(vi).items()},
        "sync_places": counter.places.most_common(8),
        "checkpoints": (info.get("outcome") or {}).get("checkpoints"),
        "latest_mb": statistics.median(latest) if latest else None,
    }


def csv_rows(path: Path) -> list[dict]:
    """The rows of a run table (``tables/*.csv``) as dicts of strings; none when it is missing."""
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _csv_column(path: Path, name: str) -> list[float]:
    return [float(r[name]) for r in csv_rows(path) if r.get(name) not in (None, "")]


# ---------------------------------------------------------------- the GPU-only tests

#: this script's own end-to-end GPU test runs the whole check again: left out of the check
SELF_TEST = "tests/unit/test_gpu_check.py::test_short_gpu_run_writes_the_table"


def gpu_tests_command(python: str = sys.executable) -> list[str]:
    """pytest on every test marked ``gpu`` (they skip without CUDA), this script's own test left out."""
    return [
        python,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "--deselect",
        SELF_TEST,
        "tests",
    ]


def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped, 700 deselected in 9.1s``)."""
    line = next((x for x in reversed(text.strip().splitlines()) if re.search(r"\bin [\d.]+s\b", x)), "")
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped", "deselected")}
    for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", line):
        counts["errors" if word.startswith("error") else word] += int(n)
    return counts


def run_gpu_tests(timeout: float = 300) -> dict:
    """``pytest -m gpu`` in its own process group: on a timeout the whole group is killed (tests start
    probe workers and training processes that must not stay on the GPU for the measurements)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        gpu_tests_command(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        raw, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raw, _ = proc.communicate()
        raw += f"\ntimed out after {timeout:.0f} s\n".encode()
        code = None
    out = raw.decode(errors="replace")
    counts = parse_pytest_summary(out)
    failed = [x.split(" ", 1)[1] for x in out.splitlines() if x.startswith(("FAILED ", "ERROR "))]
    skipped = [x for x in out.splitlines() if x.startswith("SKIPPED ")]
    print(f"  GPU-only tests: {counts} (exit {code})", file=sys.stderr)
    return {
        "exit_code": code,
        "counts": counts,
        "failed": failed,
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- the monitors at the study's size

#: bench/bench_monitors.py at the study's model (width 64) and batch (128)
MONITOR_ARGS = ["--base-width", "64", "--batch-size", "128", "--steps", "30", "--curvature-events", "3"]
MONITOR_BENCH_S = 90.0  # what the budget sets aside for it


def monitor_bench_command(device_kind: str, markdown: Path, extra=(), python: str = sys.executable) -> list[str]:
    return [
        python,
        str(REPO / "bench" / "bench_monitors.py"),
        "--device",
        device_kind,
        *MONITOR_ARGS,
        *extra,  # later options win (tests shrink the model)
        "--markdown",
        str(markdown),
    ]


def run_monitor_bench(device_kind: str, markdown: Path, *, extra=(), timeout: float = 300) -> dict:
    """The curvature / noise monitors' cost (``bench/bench_monitors.py``), its table written to ``markdown``."""
    t0 = time.perf_counter()
    markdown.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            monitor_bench_command(device_kind, markdown, extra), capture_output=True, text=True, timeout=timeout
        )
        code, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout:.0f} s"
    text = markdown.read_text() if code == 0 and markdown.exists() else None
    print(f"  monitors: exit {code}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"exit_code": code, "text": text, "error": None if text else tail, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- report


def environment(device_kind: str, probe_gpu: str | None, probe_total_mb: float | None) -> list[tuple[str, str]]:
    rows = []
    if device_kind == "cuda":
        name = probe_gpu or torch.cuda.get_device_name(0)
        total = probe_total_mb or torch.cuda.get_device_properties(0).total_memory / 2**20
        cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
        rows.append(
            (
                "GPU",
                f"{name} ({total / 1024:.1f} GiB, compute capability {cap}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
            )
        )
        rows.append(("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}"))
        rows.append(
            (
                "TF32",
                f"convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul "
                f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} (torch defaults, as in "
                "training); `cudnn.benchmark` on in every measurement, as training sets it",
            )
        )
    else:
        rows.append(("GPU", "none: **CPU smoke run, these are not GPU figures**"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows.append(("CPU", f"{platform.processor() or platform.machine()}, {cores} cores available"))
    rows.append(("torch", f"{torch.__version__} (Python {platform.python_version()})"))
    rows.append(("date", time.strftime("%Y-%m-%d %H:%M %Z")))
    return rows


def _f(x, fmt="{:.0f}", none="—"):
    return none if x is None else fmt.format(x)


def probe_rows(p: dict) -> list[tuple[dict, bool]]:
    """Every level a probe measured, with whether it ran under an MPS daemon: both sets of an ``auto``
    comparison (k = 1 once), else the levels with what :func:`probe_variant` saw them run under."""
    compared = p.get("mps_compared")
    if compared:
        rows = [(lv, False) for lv in compared["without"]["levels"]]
        return rows + [(lv, True) for lv in compared["with"]["levels"] if lv["k"] > 1]
    return [(lv, bool(p.get("under_mps", {}).get(lv["k"]))) for lv in p["levels"]]


def render_markdown(
    *,
    args,
    device_kind: str,
    env_rows,
    probes: dict[str, dict],
    paths: dict[str, Timing],
    budget_note: str | None,
    wall_s: float,
    tests: dict | None = None,
    real: dict | None = None,
    monitors: dict | None = None,
) -> str:
    cpu = device_kind == "cpu"
    mem_label = "peak MiB per process (host RSS)" if cpu else "peak MiB per process (peak reserved + CUDA context)"
    lines = ["# GPU check", ""]
    if cpu:
        lines += [
            "> **CPU smoke run**: this run used `--device cpu` to check the script. Its figures say nothing "
            "about a GPU; run `bench/gpu_check.sh` on a GPU node for those.",
            "",
        ]
    lines += [
        f"Produced by `bench/gpu_check.sh {shlex.join(args.argv)}`".rstrip() + f" in {wall_s:.0f} s. "
        "To measure a GPU, run `bench/gpu_check.sh` on a node with one (under 10 min; `--help` lists the "
        "options); it rewrites this file (`--markdown PATH` writes elsewhere). Without a GPU it exits 2; "
        "`--device cpu` (or `GPU_CHECK_DEVICE=cpu`) is a smoke run of the script only.",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in env_rows]
    lines += [
        f"| data | synthetic CIFAR-10 shape: {args.train_size} train + {args.val_size} val images, "
        "3x32x32 uint8, 10 classes, RandomResizedCrop + flip |",
        f"| batch size | {args.batch_size} |",
        f"| steps | {args.steps} timed after {args.warmup} warm-up, per process and measurement |",
    ]
    if args.base_width:
        lines.append(f"| model width | `model.base_width={args.base_width}` (not the study's 64) |")
    if budget_note:
        lines.append(f"| budget | {budget_note} |")
    lines += [
        "",
        "## Runs per GPU (the pipeline's probe)",
        "",
        "k concurrent training processes (`loss_slope.probe.worker`), started together after warm-up; "
        f"`packing.mps: {args.mps}` (`auto`: k = 2.. measured again under a CUDA MPS daemon of the check's own).",
        "",
        f"| variant | k | MPS | samples/s total | samples/s per process | {mem_label} | gain vs k=1 | GPU util % "
        "| OOM |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, p in probes.items():
        bs = args.batch_size
        measured = probe_rows(p)
        base = next((lv["aggregate_samples_per_s"] for lv, _ in measured if lv["k"] == 1), None)
        for lv, mps in measured:
            each = [bs * 1e3 / ms for ms in lv["step_ms"] if ms]
            per = (
                f"{statistics.mean(each):.0f} ({min(each):.0f}–{max(each):.0f})"
                if len(each) > 1
                else _f(each[0] if each else None)
            )
            agg = lv["aggregate_samples_per_s"]
            gain = _f(agg / base if agg and base else None, "{:.2f}")
            mem = ", ".join(f"{m:.0f}" for m in lv["peak_mem_mb"]) or "—"
            err = f" ({'; '.join(lv['errors'])})" if lv["errors"] else ""
            util = _f(lv["gpu_util_percent"], none="n/a")
            lines.append(
                f"| {label} | {lv['k']} | {'yes' if mps else 'no'} | {_f(agg)} | {per} | {mem} | {gain} | {util} | "
                f"{'yes' if lv['oom'] else 'no'}{err} |"
            )
    lines += [
        "",
        "| variant | chosen N | MPS | packing gain (samples/s at N / at k=1) | why (`choose_runs_per_gpu`) |",
        "|---|---:|---|---:|---|",
    ]
    for label, p in probes.items():
        lines.append(
            f"| {label} | {p['runs_per_gpu']} | {'yes' if p['mps'] else 'no'} | {_f(p['gain'], '{:.2f}')} | "
            f"{p['reason']} |"
        )
    if any(p.get("mps_compared") for p in probes.values()):
        lines += [
            "",
            "With and without MPS (what `packing.mps: auto` compares; MPS is kept only when faster):",
            "",
            "| variant | N without | samples/s without | N with MPS | samples/s with MPS | kept |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for label, p in probes.items():
            c = p.get("mps_compared")
            if c:
                w, m = c["without"], c["with"]
                lines.append(
                    f"| {label} | {w['runs_per_gpu']} | {_f(w['samples_per_s'])} | {m['runs_per_gpu']} | "
                    f"{_f(m['samples_per_s'])} | {'MPS' if p['mps'] else 'time-slicing'} |"
                )

    first = next(iter(probes))
    fast, dl = paths.get("fp32 (as trained)"), paths.get("dataloader")
    ratio = fast.samples_per_s / dl.samples_per_s if fast and dl and fast.samples_per_s and dl.samples_per_s else None
    mem_col = "peak MiB" if not cpu else "peak MiB (n/a on CPU)"
    lines += [
        "",
        f"## Data path ({first}, one process)",
        "",
        f"Median of {args.repeats} interleaved repeat(s); the same model, optimizer step and augmentation. "
        "Peak memory on the fast path includes the resident dataset (uint8: 3 KiB per image).",
        "",
        f"| path | samples/s | ratio fast / this | {mem_col} | note |",
        "|---|---:|---:|---:|---|",
    ]
    pin = "pin_memory" if not cpu else "no pin_memory (CPU)"
    for label, t in (
        (FAST_LABEL, fast),
        (
            f"plain DataLoader: CPU tensors, per-image augmentation, num_workers={args.num_workers}, {pin}, "
            "`.to(device, non_blocking=True)`",
            dl,
        ),
    ):
        if t is None:
            continue
        r = fast.samples_per_s / t.samples_per_s if t.samples_per_s and fast.samples_per_s else None
        lines.append(f"| {label} | {_f(t.samples_per_s)} | {_f(r, '{:.2f}')} | {_f(t.peak_mem_mb)} | {t.note} |")
    lines += ["", f"Fast path / DataLoader throughput ratio: **{_f(ratio, '{:.2f}')}**"]

    if any(k in paths for k in list(OPT_IN)[1:]):
        lines += [
            "",
            f"## Opt-in variants ({first}, fast path, one process)",
            "",
            f"| variant | samples/s | speed-up vs fp32 | {mem_col} | numerics |",
            "|---|---:|---:|---:|---|",
        ]
        for label, (_, _, numerics) in OPT_IN.items():
            t = paths.get(label)
            if t is None:
                continue
            r = t.samples_per_s / fast.samples_per_s if t.samples_per_s and fast and fast.samples_per_s else None
            note = f"{numerics}{'; ' + t.note if t.note else ''}"
            lines.append(f"| {label} | {_f(t.samples_per_s)} | {_f(r, '{:.2f}')} | {_f(t.peak_mem_mb)} | {note} |")
    lines += _tests_markdown(tests, cpu=cpu)
    k1 = next((lv for lv in probes[first]["levels"] if lv["k"] == 1), {}) if probes.get(first) else {}
    lines += _real_loop_markdown(real, cpu=cpu, first=first, probe_loop=(k1.get("loop") or [None])[0])
    lines += _monitors_markdown(monitors, cpu=cpu)
    return "\n".join(lines) + "\n"


def _tests_markdown(tests: dict | None, *, cpu: bool) -> list[str]:
    lines = ["", "## GPU-only tests", ""]
    if tests is None:
        why = "a CPU smoke run: they would all skip" if cpu else "`--no-tests`"
        return lines + [f"Not run ({why}). `{shlex.join(gpu_tests_command('python'))}` runs them."]
    c = tests["counts"]
    lines += [
        f"`{shlex.join(gpu_tests_command('python'))}` (every test marked `gpu`; this script's own end-to-end "
        f"test is left out): **{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
        f"{c['skipped']} skipped** in {tests['seconds']:.0f} s (exit {tests['exit_code']}).",
    ]
    for name in tests["failed"]:
        lines.append(f"- failed: `{name}`")
    for line in tests["skipped"][:10]:
        lines.append(f"- {line}")
    return lines


def _probe_against_run_lines(cmp: dict | None) -> list[str]:
    if cmp is None:
        return ["The probe's k = 1 step time: not compared (no figure from the probe or the run).", ""]
    return [
        f"The probe's k = 1 training loop against this run (steps {cmp['from_step']} on, events included): "
        f"{cmp['probe_ms']:.1f} ms per step against {cmp['run_ms']:.1f} ms; steps/s probe / run = "
        f"**{cmp['ratio']:.2f}** (the probe is to be within 10 %).",
        "",
    ]


def _monitors_markdown(monitors: dict | None, *, cpu: bool) -> list[str]:
    lines = ["", "## The monitors at the study's model and batch", ""]
    cmd = shlex.join(["python", "bench/bench_monitors.py", "--device", "cuda", *MONITOR_ARGS])
    if monitors is None:
        why = "a CPU smoke run: `docs/benchmarks.md` has the CPU figures" if cpu else "`--no-monitors`"
        return lines + [f"Not run ({why}). `{cmd}` measures them."]
    if monitors["text"] is None:
        return lines + [f"`{cmd}` **failed** (exit {monitors['exit_code']}):", "", "```", monitors["error"], "```"]
    return lines + [f"`{cmd}` ({monitors['seconds']:.0f} s):", "", monitors["text"].rstrip()]


def _real_loop_markdown(real: dict | None, *, cpu: bool, first: str, probe_loop: dict | None = None) -> list[str]:
    lines = ["", f"## The real training loop ({first}, one run, one epoch)", ""]
    if real is None:
        return lines + ["Not run (`--no-real-run`)."]
    if real.get("error"):
        return lines + [f"**Failed** after {real['wall_s']:.0f} s: {real['error']}"]
    vi, total = real["val_interval"], real["total_steps"]
    ck = real["checkpoints"] or {}
    files = int(ck.get("files") or 0)
    per_save_blocking = 1e3 * (ck.get("snapshot_s", 0) + ck.get("wait_s", 0)) / files if files else None
    per_save_write = 1e3 * ck.get("write_s", 0) / files if files else None
    lines += [
        "`loss_slope.train.run.run_training` in this process: the run's Lightning loop with its validations "
        f"({real['n_val']} images, every {vi} steps), monitors at the study's cadence, step recorder and "
        f"checkpoints; {total} steps ({real['steps_per_epoch']} per epoch), exit code "
        f"{real['exit_code']}, {real['wall_s']:.0f} s in all (imports, data and set-up included). Median "
        f"step interval in the step table: {_f(real['median_step_ms'], '{:.1f}')} ms (validation steps included).",
        "",
        *_probe_against_run_lines(probe_against_run(real, probe_loop)),
        "| checkpoints of the run | |",
        "|---|---|",
        f"| files, MB written | {files}, {_f(ck.get('written_mb'), '{:.1f}')} |",
        f"| `latest` file | {_f(real['latest_mb'], '{:.1f}')} MB |",
        "| training thread per save: copy to host memory + wait for the previous write | "
        f"{_f(per_save_blocking, '{:.1f}')} ms |",
        f"| writer thread per save: write + fsync + rename | {_f(per_save_write, '{:.1f}')} ms |",
        "",
    ]
    if not real["syncs_counted"]:
        return lines + ["Host syncs: not counted on the CPU (no CUDA device: nothing to synchronize)."]
    syncs = real["syncs"]
    phases = [ph for ph in SYNC_PHASES if any(ph in c for c in syncs.values())]
    if not phases:
        return lines + ['Host syncs under `torch.cuda.set_sync_debug_mode("warn")`: **none** counted.']
    in_loop = sum(
        n for w, c in syncs.items() if w != "outside" for ph, n in c.items() if ph not in ("validation", "checkpoint")
    )
    lines += [
        'Host syncs under `torch.cuda.set_sync_debug_mode("warn")`, per quarter-epoch window '
        f"({vi} steps and the validation after them) and part of the run; **{in_loop} in the training loop "
        "outside validations and checkpoints** (the recorder moves its device buffers to the host every "
        '`trainer.flush_every_steps`; a monitor event reads its results). The row "outside the training '
        'loop": before it (the model and optimizer moved to the device) and after it (moved back).',
        "",
        "| window | " + " | ".join(phases) + " | total |",
        "|---|" + "---:|" * (len(phases) + 1),
    ]
    for window, c in syncs.items():
        label = (
            "outside the training loop"
            if window == "outside"
            else f"{window} (steps {window * vi}–{min((window + 1) * vi, total) - 1})"
        )
        lines.append(f"| {label} | " + " | ".join(str(c.get(ph, 0)) for ph in phases) + f" | {sum(c.values())} |")
    if real["sync_places"]:
        lines += ["", "Where they come from (the first frame outside torch, most frequent first):", ""]
        lines += [f"- `{place}`: {n}" for place, n in real["sync_places"]]
    return lines


# ---------------------------------------------------------------- main


def resolve_device(requested: str | None, environ=os.environ) -> str:
    """``cuda`` (the default) or ``cpu``; raises :class:`NoGpu` when CUDA is asked for and absent."""
    kind = (requested or environ.get(ENV_DEVICE) or "cuda").strip().lower()
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device {kind!r}: allowed cuda, cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise NoGpu(NO_GPU_MESSAGE.format(cuda=torch.version.cuda))
    return kind


def parse_args(argv):
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help=f"default: ${ENV_DEVICE}, else cuda (which must be there)",
    )
    ap.add_argument("--markdown", default=str(REPO / "docs" / "gpu_check.md"), help="report file (Markdown)")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per process and measurement")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (cuDNN, allocator, workers)")
    ap.add_argument("--max-n", type=int, default=4, help="largest number of concurrent processes")
    ap.add_argument("--batch-size", type=int, default=128, help="as in the study (data.batch_size)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument(
        "--base-width",
        type=int,
        default=None,
        help="override model.base_width (tests use a tiny net); default: the experiment's",
    )
    ap.add_argument("--num-workers", type=int, default=min(4, usable), help="DataLoader workers of the plain path")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the one-process comparisons")
    ap.add_argument("--no-opt-in", action="store_true", help="skip channels_last / bf16")
    ap.add_argument("--train-size", type=int, default=50_000, help="synthetic training images (CIFAR-10: 50,000)")
    ap.add_argument("--val-size", type=int, default=10_000, help="synthetic validation images (resident, unused)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=360,
        help="shrink later steps if the tests and measurements would take longer (0: never); "
        "the real-loop run and the monitor benchmark come after",
    )
    ap.add_argument("--min-steps", type=int, default=30, help="fewest steps the budget may shrink to")
    ap.add_argument("--level-timeout", type=float, default=600, help="seconds before a probe level is killed")
    ap.add_argument(
        "--mps",
        choices=["off", "on", "auto"],
        default="auto",
        help="packing.mps for the probe: auto measures k = 2.. with and without an MPS daemon (ignored on the CPU)",
    )
    ap.add_argument(
        "--tests",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the GPU-only tests first (pytest -m gpu); default: on a GPU yes, on the CPU no",
    )
    ap.add_argument("--no-real-run", action="store_true", help="skip the real training loop (syncs, checkpoints)")
    ap.add_argument(
        "--monitors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the monitors' cost at the study's model and batch (bench/bench_monitors.py; also written to "
        "gpu_monitors.md next to the report); default: on a GPU yes, on the CPU no",
    )
    ap.add_argument("--real-epochs", type=int, default=1, help="epochs of the real training loop run")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.variant_labels = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variant_labels if v not in VARIANTS]
    if bad or not a.variant_labels:
        ap.error(f"--variants: unknown {bad}; allowed: {', '.join(VARIANTS)}")
    for name in ("steps", "max_n", "batch_size", "repeats", "train_size", "val_size", "real_epochs"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.batch_size > a.train_size:
        ap.error("--batch-size must not exceed --train-size")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        kind = resolve_device(a.device)
    except NoGpu as exc:
        print(exc, file=sys.stderr)
        return EXIT_NO_GPU
    except ValueError as exc:
        print(f"gpu_check: {exc} (from ${ENV_DEVICE})", file=sys.stderr)
        return EXIT_NO_GPU
    t_start = time.perf_counter()
    run_monitors = (kind == "cuda") if a.monitors is None else a.monitors
    # what the probe will measure (k_max 1 on an exclusive-process GPU, MPS or not): the budget plans for it
    plan = sharing_plan([f"trainer.accelerator={kind}"], a.max_n, a.mps)
    budget = Budget(
        budget_s=a.budget_s,
        t_start=t_start,
        steps=a.steps,
        warmup=a.warmup,
        min_steps=a.min_steps,
        max_n=plan["k_max"],
        n_variants=len(a.variant_labels),
        repeats=a.repeats,
        opt_in=not a.no_opt_in,
        mps_levels=plan["mps"] == "auto",
        real_steps=0 if a.no_real_run else (a.train_size // a.batch_size) * a.real_epochs,
        after_s=MONITOR_BENCH_S if run_monitors else 0.0,
    )
    run_tests = (kind == "cuda") if a.tests is None else a.tests
    tests = None
    if run_tests:
        print("GPU-only tests (pytest -m gpu)", file=sys.stderr)
        tests = run_gpu_tests()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = write_synthetic_cifar10(Path(tmp), n_train=a.train_size, n_val=a.val_size)
        common = [
            "data=cifar10",
            f"data.root={root}",
            f"data.batch_size={a.batch_size}",
            f"trainer.accelerator={kind}",
            *([f"model.base_width={a.base_width}"] if a.base_width else []),
        ]
        probes = {}
        for label in a.variant_labels:
            print(f"{label}: probe k = 1..{a.max_n}, {budget.steps} steps", file=sys.stderr)
            probes[label] = probe_variant(
                [f"experiment={VARIANTS[label]}", *common],
                max_n=a.max_n,
                steps=budget.steps,
                warmup=a.warmup,
                timeout=a.level_timeout,
                mps=a.mps,
                on_level=budget,
            )
            budget.end_variant()
        first = a.variant_labels[0]
        print(
            f"{first}: fast path vs DataLoader{'' if a.no_opt_in else ', opt-in variants'}, {a.repeats} repeat(s), "
            f"{budget.steps} steps",
            file=sys.stderr,
        )
        paths = compare_paths(
            [f"experiment={VARIANTS[first]}", *common],
            root,
            device_kind=kind,
            steps=budget.steps,
            warmup=a.warmup,
            repeats=a.repeats,
            num_workers=a.num_workers,
            opt_in=not a.no_opt_in,
        )
        real = None
        if not a.no_real_run:
            # last: a run sets process-wide state (threads, cudnn.benchmark) the measurements above must not see
            print(f"{first}: the real training loop, {a.real_epochs} epoch(s)", file=sys.stderr)
            real = real_loop_run(
                [f"experiment={VARIANTS[first]}", *common],
                Path(tmp) / "real-run",
                device_kind=kind,
                epochs=a.real_epochs,
            )
    monitors = None
    if run_monitors:
        print("monitors at the study's model and batch (bench/bench_monitors.py)", file=sys.stderr)
        monitors = run_monitor_bench(kind, Path(a.markdown).with_name("gpu_monitors.md"))
    p0 = probes[first]
    md = render_markdown(
        args=a,
        device_kind=kind,
        env_rows=environment(kind, p0["gpu_name"], p0["gpu_total_mb"])
        + (
            [("compute mode", p0.get("compute_mode") or "not read (see the probe's reasons)")] if kind == "cuda" else []
        ),
        probes=probes,
        paths=paths,
        budget_note=budget.note or None,
        wall_s=time.perf_counter() - t_start,
        tests=tests,
        real=real,
        monitors=monitors,
    )
    out = Path(a.markdown)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)
    print(f"wrote {out}", file=sys.stderr)
    broken = [label for label, p in probes.items() if not p["levels"] or not p["levels"][0]["aggregate_samples_per_s"]]
    if paths["fp32 (as trained)"].samples_per_s is None:
        broken.append("fast path")
    if broken:
        print(f"gpu_check: no figure at k=1 for {', '.join(broken)}; see the errors above", file=sys.stderr)
        return 1
    if real is not None and real["exit_code"] != 0:
        print(f"gpu_check: the real training loop run exited {real['exit_code']}", file=sys.stderr)
        return 1
    if monitors is not None and monitors["text"] is None:
        print(f"gpu_check: the monitor benchmark failed (exit {monitors['exit_code']})", file=sys.stderr)
        return 1
    if tests is not None and (tests["exit_code"] != 0 or tests["counts"]["passed"] == 0):
        print(f"gpu_check: GPU-only tests: {tests['counts']} (exit {tests['exit_code']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
