"""GPU check: how many runs to pack on one GPU, and what the data path is worth.

One command, on a machine with one CUDA GPU (takes about 3-8 minutes)::

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

1. **Runs per GPU.** For S-core and S-narrow (the models of
   ``experiment=s_core`` / ``s_narrow``) and k = 1..``--max-n``, k concurrent
   processes of :mod:`loss_slope.probe.worker` (via
   :func:`loss_slope.probe.capacity.run_level`, the pipeline's probe) train
   for ``--steps`` steps after ``--warmup`` steps: samples/s in total and per
   process, peak GPU memory per process (peak reserved memory + its CUDA context),
   OOM. N is chosen by :func:`loss_slope.probe.capacity.choose_runs_per_gpu`,
   the function the pipeline uses; the packing gain is the total throughput
   at N over that at k = 1.
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
import os
import pickle
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra.utils
import numpy as np
import torch
import torch.nn.functional as F

from loss_slope.data.augment import AugmentConfig, random_resized_crop_flip
from loss_slope.data.cifar10 import FOLDER, MEAN, STD, TEST_FILE, TRAIN_FILES, read_cifar10
from loss_slope.data.datasets import build_data
from loss_slope.probe.capacity import choose_runs_per_gpu, run_level
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


def probe_variant(overrides: list[str], *, max_n: int, steps: int, warmup: int, timeout: float, on_level=None) -> dict:
    """The pipeline's probe (``run_level`` for k = 1.. until OOM, then ``choose_runs_per_gpu``).

    ``on_level(k, level, workers, wall_s)`` may return a new step count for the next levels.
    """
    levels, first, steps_used = [], [], []
    for k in range(1, max_n + 1):
        t0 = time.perf_counter()
        # GPU memory per process: peak reserved + CUDA context (the k = 1 worker's where one could not measure it)
        context = next((w.get("context_mb") for w in first if w.get("context_mb") is not None), None)
        level, workers = run_level(overrides, k, steps=steps, warmup=warmup, timeout=timeout, context_mb=context)
        wall = time.perf_counter() - t0
        levels.append(level)
        steps_used.append(steps)
        first = first or workers
        sps = f"{level.aggregate_samples_per_s:.0f} samples/s" if level.aggregate_samples_per_s else "no figure"
        print(
            f"  k={k}: {sps}, peak MiB {[round(m) for m in level.peak_mem_mb]}, "
            f"{'OOM, ' if level.oom else ''}{wall:.0f} s",
            file=sys.stderr,
        )
        for e in level.errors:
            print(f"    {e}", file=sys.stderr)
        if on_level is not None:
            steps = on_level(k, level, workers, wall) or steps
        if level.oom:
            break
    w0 = first[0] if first else {}
    n, reason = choose_runs_per_gpu(levels, total_mem_mb=w0.get("gpu_total_mb"))
    by_k = {lv.k: lv.aggregate_samples_per_s for lv in levels}
    gain = by_k[n] / by_k[1] if by_k.get(n) and by_k.get(1) else None
    return {
        "levels": [asdict(lv) for lv in levels],
        "steps": steps_used,
        "runs_per_gpu": n,
        "reason": reason,
        "gain": gain,
        "gpu_name": w0.get("gpu_name"),
        "gpu_total_mb": w0.get("gpu_total_mb"),
        "batch_size": w0.get("batch_size"),
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
    ) -> None:
        self.budget_s, self.t_start, self.warmup, self.min_steps = budget_s, t_start, warmup, min_steps
        self.steps = steps  # what later measurements use
        k_sum = max_n * (max_n + 1) // 2
        self.levels_left = (max_n - 1) + max_n * (n_variants - 1)
        # measurements still to run, in units of one k=1 process: level k takes k times as long on a
        # saturated GPU; the DataLoader path counts double (it is often the slower one)
        self.units_left = (k_sum - 1) + k_sum * (n_variants - 1) + repeats * ((len(OPT_IN) if opt_in else 1) + 2)
        self.checked, self.note = False, None

    def __call__(self, k, level, workers, wall_s):
        if self.budget_s <= 0 or self.checked or k != 1 or not workers or "seconds" not in workers[0]:
            return None
        self.checked = True
        w = workers[0]
        per_step = w["step_ms"] / 1e3
        overhead = max(0.0, wall_s - w["seconds"])  # start-up of a level: imports, CUDA, data, warm-up
        elapsed = time.perf_counter() - self.t_start
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
                "training); `cudnn.benchmark` "
                f"{'on' if torch.backends.cudnn.benchmark else 'off'}",
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


def render_markdown(
    *,
    args,
    device_kind: str,
    env_rows,
    probes: dict[str, dict],
    paths: dict[str, Timing],
    budget_note: str | None,
    wall_s: float,
) -> str:
    cpu = device_kind == "cpu"
    mem_label = "peak MiB per process (host RSS)" if cpu else "peak MiB per process (max_memory_allocated)"
    lines = ["# GPU check", ""]
    if cpu:
        lines += [
            "> **CPU smoke run**: this run used `--device cpu` to check the script. Its figures say nothing "
            "about a GPU; run `bench/gpu_check.sh` on a GPU node for those.",
            "",
        ]
    lines += [
        f"Produced by `bench/gpu_check.sh {shlex.join(args.argv)}`".rstrip() + f" in {wall_s:.0f} s. "
        "To measure a GPU, run `bench/gpu_check.sh` on a node with one (about 3-8 min; `--help` lists the "
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
        "k concurrent training processes (`loss_slope.probe.worker`), started together after warm-up.",
        "",
        f"| variant | k | samples/s total | samples/s per process | {mem_label} | gain vs k=1 | GPU util % | OOM |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, p in probes.items():
        bs = p["batch_size"] or args.batch_size
        base = p["levels"][0]["aggregate_samples_per_s"] if p["levels"] else None
        for lv in p["levels"]:
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
                f"| {label} | {lv['k']} | {_f(agg)} | {per} | {mem} | {gain} | {util} | "
                f"{'yes' if lv['oom'] else 'no'}{err} |"
            )
    lines += [
        "",
        "| variant | chosen N | packing gain (samples/s at N / at k=1) | why (`choose_runs_per_gpu`) |",
        "|---|---:|---:|---|",
    ]
    for label, p in probes.items():
        lines.append(f"| {label} | {p['runs_per_gpu']} | {_f(p['gain'], '{:.2f}')} | {p['reason']} |")

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
    return "\n".join(lines) + "\n"


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
        "--budget-s", type=float, default=420, help="shrink later steps if the check would take longer (0: never)"
    )
    ap.add_argument("--min-steps", type=int, default=30, help="fewest steps the budget may shrink to")
    ap.add_argument("--level-timeout", type=float, default=600, help="seconds before a probe level is killed")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.variant_labels = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variant_labels if v not in VARIANTS]
    if bad or not a.variant_labels:
        ap.error(f"--variants: unknown {bad}; allowed: {', '.join(VARIANTS)}")
    for name in ("steps", "max_n", "batch_size", "repeats", "train_size", "val_size"):
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
    budget = Budget(
        budget_s=a.budget_s,
        t_start=t_start,
        steps=a.steps,
        warmup=a.warmup,
        min_steps=a.min_steps,
        max_n=a.max_n,
        n_variants=len(a.variant_labels),
        repeats=a.repeats,
        opt_in=not a.no_opt_in,
    )
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
                on_level=budget,
            )
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
    p0 = probes[first]
    md = render_markdown(
        args=a,
        device_kind=kind,
        env_rows=environment(kind, p0["gpu_name"], p0["gpu_total_mb"]),
        probes=probes,
        paths=paths,
        budget_note=budget.note or None,
        wall_s=time.perf_counter() - t_start,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
