"""Overhead of the curvature and noise monitors at the study cadence.

Trains a CIFAR-shaped ResNet (random 3×32×32 images; CPU by default,
``--device cuda`` on a GPU), measures

* the median time of one training step without monitors,
* the per-step cost of the monitor hooks (``observe_gradients`` + ``on_train_step``),
* the cost of one curvature event (Hutch++ + power iteration) and of one noise event,

and extrapolates to the study cadence (curvature every 500 steps, noise every
2 epochs of 391 steps) as a ratio to training time without monitors.

    .venv/bin/python bench/bench_monitors.py [--markdown bench/out/monitors.md]
    .venv/bin/python bench/bench_monitors.py --device cuda --base-width 64 --batch-size 128   # the study, on a GPU

On CUDA every time is wall time after ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from loss_slope.metrics.monitors import MonitorConfig, Monitors
from loss_slope.models.resnet import CifarResNet18

try:  # the first power iteration reuses Hutch++'s H Q products (curvature.curvature)
    from loss_slope.metrics.curvature import affine_batchnorm as _new_code  # noqa: F401

    FREE_FIRST_PRODUCT = 1
except ImportError:  # an older package on PYTHONPATH (before/after comparisons)
    FREE_FIRST_PRODUCT = 0
CURVATURE_BUDGET = 0.10  # DESIGN §1: curvature under 10 % of training time
TOTAL_BUDGET = 0.15  # all monitors under 15 %


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (images)")
    p.add_argument("--curvature-batch-size", type=int, default=None, help="held-out batch size (default: --batch-size)")
    p.add_argument("--curvature-batches", type=int, default=1)
    p.add_argument("--base-width", type=int, default=8, help="channels of the first ResNet stage")
    p.add_argument("--steps", type=int, default=45, help="timed training steps per variant")
    p.add_argument("--curvature-events", type=int, default=3)
    p.add_argument("--curvature-every-steps", type=int, default=500)
    p.add_argument("--steps-per-epoch", type=int, default=391)
    p.add_argument("--noise-every-epochs", type=int, default=2)
    p.add_argument("--hutch-matvecs", type=int, default=50)
    p.add_argument("--matvec-block", type=int, default=1, help="Hessian-vector products per vmapped backward")
    p.add_argument("--threads", type=int, default=1, help="torch threads (DESIGN §4: one per process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = MonitorConfig(
        curvature_every_steps=args.curvature_every_steps,
        hutch_matvecs=args.hutch_matvecs,
        curvature_batches=args.curvature_batches,
        curvature_matvec_block=args.matvec_block,
        noise_every_epochs=args.noise_every_epochs,
        seed=args.seed,
    )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_monitors: --device cuda but no CUDA device is visible")
    model = CifarResNet18(base_width=args.base_width, blocks=(2, 2, 2, 2)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.functional.cross_entropy
    n_params = sum(p.numel() for p in model.parameters())
    b = args.batch_size
    data = [(torch.randn(b, 3, 32, 32, device=device), torch.randint(0, 10, (b,), device=device)) for _ in range(8)]
    cb = args.curvature_batch_size or b
    held_out = [(torch.randn(cb, 3, 32, 32, device=device), torch.randint(0, 10, (cb,), device=device))
                for _ in range(args.curvature_batches)]
    monitors = Monitors(config)

    # With one thread, CPU time of this process is immune to other jobs queueing on the shared
    # cores; wall time is not. Several threads: fall back to wall time.
    clock = time.process_time if args.threads == 1 else time.perf_counter
    if device.type == "cuda":
        def clock() -> float:  # kernels are asynchronous: wait for them, then read the wall clock
            torch.cuda.synchronize(device)
            return time.perf_counter()

    def step(i: int, with_monitors: bool) -> tuple[float, float]:
        """Run one training step; return (seconds without the hooks, seconds in the hooks)."""
        x, y = data[i % len(data)]
        hooks = 0.0
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        if with_monitors:
            h = clock()
            monitors.observe_gradients(model)
            hooks += clock() - h
        opt.step()
        if with_monitors:
            h = clock()
            monitors.on_train_step(i, loss.detach())
            hooks += clock() - h
        return clock() - t0 - hooks, hooks

    model.train()
    for i in range(10):  # warm-up: allocator, first-call overheads
        step(i, True)
    for i in range(config.psd_window):  # a full residual window, as at a real noise event
        monitors.on_train_step(100 + i, torch.tensor(2.0 * (101 + i) ** -0.5, device=device))

    # Blocks of interleaved steps, each followed by one noise and one curvature event, so that
    # drift in machine speed hits the baseline and the events alike.
    plain, with_hooks, hook_cost, noise_times, curv_times, matvec_counts = [], [], [], [], [], []
    per_block = max(1, args.steps // args.curvature_events)
    for k in range(args.curvature_events):
        for i in range(k * per_block, (k + 1) * per_block):
            plain.append(step(i, False)[0])
            train_s, hook_s = step(i, True)
            with_hooks.append(train_s + hook_s)
            hook_cost.append(hook_s)
        t0 = clock()
        monitors.measure_noise(782 * (k + 1), 2.0 * (k + 1))
        noise_times.append(clock() - t0)
        t0 = clock()
        row = monitors.measure_curvature(model, loss_fn, held_out, step=500 * (k + 1), epoch=0.0)
        curv_times.append(clock() - t0)
        # products computed: Hutch++'s, plus power iteration's less the free first one (H u from H Q)
        matvec_counts.append(row["hutch_matvecs"] + row["lambda_iters"] - FREE_FIRST_PRODUCT)
    t_step, t_hooks = statistics.median(plain), statistics.median(hook_cost)
    t_noise, t_curv = statistics.median(noise_times), statistics.median(curv_times)
    matvecs = statistics.median(matvec_counts)
    t_matvec = t_curv / matvecs

    every_c = args.curvature_every_steps
    every_n = args.noise_every_epochs * args.steps_per_epoch
    r_curv = t_curv / (every_c * t_step)
    r_noise = (every_n * t_hooks + t_noise) / (every_n * t_step)
    r_total = r_curv + r_noise
    every_for_budget = t_curv / (CURVATURE_BUDGET * t_step)
    matvecs_for_budget = CURVATURE_BUDGET * every_c * t_step / t_matvec
    batch_for_budget = cb * CURVATURE_BUDGET / r_curv  # assumes cost ∝ held-out samples (true on CPU)

    def ok(r: float, budget: float) -> str:
        return "yes" if r <= budget else "**no**"

    lines = [
        f"Monitor overhead: CifarResNet18(base_width={args.base_width}, blocks=(2,2,2,2)), {n_params:,} params, "
        f"batch {b}, held-out {args.curvature_batches}×{cb}, matvec block {args.matvec_block}, "
        f"{args.threads} thread(s), torch {torch.__version__}, "
        + (f"{torch.cuda.get_device_name(device)}; times are synchronized wall time" if device.type == "cuda"
           else "CPU; times are " + ("process CPU time" if args.threads == 1 else "wall time")),
        "",
        "| measured | value |",
        "|---|---|",
        f"| training step, no monitors (median of {len(plain)}) | {1e3 * t_step:.1f} ms |",
        f"| training step, with per-step hooks (median) | {1e3 * statistics.median(with_hooks):.1f} ms |",
        f"| per-step hooks: observe_gradients + on_train_step (median) | {1e3 * t_hooks:.3f} ms |",
        f"| curvature event (median of {args.curvature_events}) | {t_curv:.2f} s = {t_curv / t_step:.0f} steps |",
        f"| Hessian-vector products per curvature event | {matvecs:g} (Hutch++ {config.hutch_matvecs} "
        f"+ power iteration {matvecs - config.hutch_matvecs:g}"
        + (", its first product free" if FREE_FIRST_PRODUCT else "") + ") |",
        f"| one Hessian-vector product | {1e3 * t_matvec:.1f} ms = {t_matvec / t_step:.2f} steps |",
        f"| noise event (PSD of {config.psd_window} residuals + grad_var) | {1e3 * t_noise:.2f} ms |",
        "",
        f"| extrapolated to the cadence | overhead | budget | within |",
        "|---|---|---|---|",
        f"| curvature every {every_c} steps | {100 * r_curv:.1f} % | {100 * CURVATURE_BUDGET:.0f} % "
        f"| {ok(r_curv, CURVATURE_BUDGET)} |",
        f"| noise every {args.noise_every_epochs} epochs ({every_n} steps), incl. per-step hooks "
        f"| {100 * r_noise:.2f} % | — | — |",
        f"| all monitors | {100 * r_total:.1f} % | {100 * TOTAL_BUDGET:.0f} % | {ok(r_total, TOTAL_BUDGET)} |",
        "",
        f"Curvature within {100 * CURVATURE_BUDGET:.0f} % needs one of: curvature_every_steps ≥ {every_for_budget:.0f}; "
        f"≤ {matvecs_for_budget:.0f} Hessian-vector products per event; "
        f"or a held-out set of ≤ {batch_for_budget:.0f} samples = {batch_for_budget / b:.2f} × the training batch "
        "(cost ∝ samples on CPU; not so on a GPU).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
