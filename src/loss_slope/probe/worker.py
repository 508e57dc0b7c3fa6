"""One probe process: time a short training of a variant on the shared device.

    python -m loss_slope.probe.worker --out W.json --barrier DIR --index I --k K --steps S -- [hydra overrides]

After building the model and data and a few warm-up steps, the worker waits
until all K workers are ready (files in DIR), so the timed steps really run
concurrently. A CUDA out-of-memory error is reported, not raised.

Monitors: when ``trainer.monitors`` turns them on (as in training), every step
also feeds them (the gradient moments hold one more copy of the parameters plus
a scratch copy), and after the timed steps the worker runs **one curvature
event** with the configured settings on the configured held-out batches. Its
double-backward graphs and Hutch++ blocks raise the peak memory above a plain
training step, and ``peak_mem_mb`` includes that peak, so N per GPU is not
over-estimated. The event is outside the timed window (it happens once every
``curvature_every_steps`` in training); its seconds are reported as
``curvature_seconds``, the peak before it as ``peak_mem_train_mb``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _barrier(folder: Path, index: int, k: int, timeout: float = 600) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready.{index}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready.*"))) < k:
        if time.monotonic() > deadline:
            raise TimeoutError(f"probe barrier: only {len(list(folder.glob('ready.*')))} of {k} workers ready")
        time.sleep(0.01)


def measure(overrides: list[str], *, steps: int, warmup: int, barrier: Path | None, index: int, k: int) -> dict:
    import hydra.utils
    import torch
    import torch.nn.functional as F

    from loss_slope.data.datasets import build_data
    from loss_slope.metrics.monitors import Monitors
    from loss_slope.train.compose import compose_train_config
    from loss_slope.train.monitor_callback import held_out_batches, monitor_settings

    cfg = compose_train_config([*overrides, "run_dir=/nonexistent"])
    torch.set_num_threads(int(cfg.trainer.threads))
    use_cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "cuda", "gpu")
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    out = {"index": index, "device": str(device), "oom": False, "batch_size": int(cfg.data.batch_size)}
    if use_cuda:
        out["gpu_name"] = torch.cuda.get_device_name(device)
        out["gpu_total_mb"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    try:
        data = build_data(cfg.data, seed=int(cfg.seed), device=device)
        net = hydra.utils.instantiate(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
        opt = hydra.utils.instantiate(cfg.optimizer)(net.parameters())
        mconfig, msettings = monitor_settings(cfg.trainer.get("monitors"), seed=int(cfg.seed),
                                              batch_size=int(cfg.data.batch_size),
                                              steps_per_epoch=data.steps_per_epoch)
        monitors = Monitors(mconfig)
        held_out = []
        if mconfig.curvature_every_steps:
            held_out = held_out_batches(data.train, n_batches=mconfig.curvature_batches,
                                        batch_size=msettings["curvature_batch_size"],
                                        seed=msettings["curvature_data_seed"])
        out["monitors"] = {"noise": bool(mconfig.noise_every_epochs), "curvature": bool(held_out)}
        it = iter(data.train)
        done = 0

        def step():
            nonlocal it, done
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(data.train)
                x, y = next(it)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            monitors.observe_gradients(net)  # as MonitorCallback.on_before_optimizer_step
            opt.step()
            monitors.on_train_step(done, loss.detach())
            done += 1
            return loss

        for _ in range(warmup):
            step()
        if use_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        if barrier is not None:
            _barrier(barrier, index, k)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss.detach())  # one sync at the end, as in training
        if use_cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out.update(step_ms=1e3 * dt / steps, samples_per_s=steps * int(cfg.data.batch_size) / dt, seconds=dt)
        if held_out:  # one curvature event, inside the peak-memory window, outside the timed one
            if use_cuda:
                out["peak_mem_train_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                out["peak_mem_train_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t1 = time.perf_counter()
            row = monitors.measure_curvature(net, F.cross_entropy, held_out, step=done, epoch=0.0)
            if use_cuda:
                torch.cuda.synchronize()
            out["curvature_seconds"] = time.perf_counter() - t1
            out["curvature_matvecs"] = row["hutch_matvecs"] + row["lambda_iters"]
        if use_cuda:
            out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            out["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    except torch.cuda.OutOfMemoryError as exc:
        out.update(oom=True, error=str(exc).splitlines()[0])
        if use_cuda:  # GPU memory reached before the OOM: the same unit as the other workers'
            out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if barrier is not None:
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
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    res = measure(a.overrides, steps=a.steps, warmup=a.warmup, barrier=Path(a.barrier) if a.barrier else None,
                  index=a.index, k=a.k)
    Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
