"""Overhead of the curvature and noise monitors at the study cadence.

Trains a CIFAR-shaped ResNet (random 3×32×32 images; CPU by default,
``--device cuda`` on a GPU), measures

* the median time of one training step without monitors,
* the per-step cost of the monitor hooks (``observe_gradients`` + ``on_train_step``),
* the cost of one curvature event (Hutch++ + Lanczos) and of one noise event,

and extrapolates to the study cadence (curvature every 500 steps, noise every
2 epochs of 391 steps) as a ratio to training time without monitors.

    .venv/bin/python bench/bench_monitors.py [--markdown bench/out/monitors.md]
    .venv/bin/python bench/bench_monitors.py --device cuda --base-width 64 --batch-size 128   # the study, on a GPU

On CUDA every time is wall time after ``torch.cuda.synchronize()``.

Two other measurements (docs/monitors.md §2)::

    .venv/bin/python bench/bench_monitors.py --reference      # lambda_max / trace vs a full Lanczos reference
    .venv/bin/python bench/bench_monitors.py --event-memory --base-width 64 --curvature-batch-size 8

``--reference``: the width-``--base-width`` ResNet-18 on the digits data (16×16), with and
without BatchNorm, at initialisation and after 100 SGD steps; ``curvature(..., matvecs=50)``
against a ``--reference-vectors``-vector Lanczos of a float64 copy (top and bottom eigenvalue)
and a Hutchinson trace with ``--reference-probes`` probes. ``--event-memory``: the peak bytes
of the tensors created during one event (a dispatch mode that follows every CPU tensor the
event creates until it is freed), after one training step; in vectors of ``n_params`` floats.
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

try:  # the first Lanczos vector (before: power iteration) reuses Hutch++'s H Q products (curvature.curvature)
    from loss_slope.metrics.curvature import affine_batchnorm as _new_code  # noqa: F401

    FREE_FIRST_PRODUCT = 1
except ImportError:  # an older package on PYTHONPATH (before/after comparisons)
    FREE_FIRST_PRODUCT = 0
CURVATURE_BUDGET = 0.10  # the protocol's budget: curvature under 10 % of training time
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
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (one per process: more threads than cores slow packed runs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    p.add_argument("--reference", action="store_true", help="lambda_max / trace against a full Lanczos reference")
    p.add_argument("--reference-vectors", type=int, default=60)
    p.add_argument("--reference-probes", type=int, default=200)
    p.add_argument("--event-memory", action="store_true", help="peak extra memory of one curvature event (CPU)")
    return p.parse_args()


def reference(args) -> None:
    """lambda_max, its residual and the trace of ``curvature(matvecs=50)`` against references."""
    import copy

    import torch.nn.functional as F

    from loss_slope.data.datasets import build_data
    from loss_slope.metrics import curvature as C
    from loss_slope.train.compose import compose_train_config

    torch.set_num_threads(args.threads)
    n_img = args.curvature_batch_size or args.batch_size
    lines = [
        f"width-{args.base_width} ResNet-18, digits, {n_img} held-out images, matvecs=50, "
        f"seeds 0-2; reference: {args.reference_vectors}-vector Lanczos (float64), "
        f"Hutchinson trace with {args.reference_probes} probes",
        "",
        "| case | ref. top | ref. bottom | lambda_max (seeds) | max rel. error | residual | bottom Ritz | "
        "vectors | products | trace (± s.e.) | ref. trace (± s.e.) | |z| max |",
        "|---|" * 12,
    ]
    for bn in (True, False):
        cfg = compose_train_config(
            [f"model.base_width={args.base_width}", f"model.batchnorm={str(bn).lower()}", "run_dir=/nonexistent"]
        )
        data = build_data(cfg.data, seed=0, device=torch.device("cpu"))
        torch.manual_seed(args.seed)
        net = CifarResNet18(
            num_classes=data.num_classes, in_channels=data.in_channels, base_width=args.base_width, batchnorm=bn
        )
        held = [
            (data.train.normalize(x), y)
            for x, y in C.fixed_batches(data.train.images, data.train.labels, n_batches=1, batch_size=n_img, seed=0)
        ]
        for stage in ("initialisation", "100 SGD steps"):
            if stage != "initialisation":
                opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
                net.train()
                it = iter(data.train)
                for _ in range(100):
                    try:
                        x, y = next(it)
                    except StopIteration:
                        it = iter(data.train)
                        x, y = next(it)
                    opt.zero_grad()
                    F.cross_entropy(net(x), y).backward()
                    if not bn:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                for p in net.parameters():
                    p.grad = None
            ref_net = copy.deepcopy(net).double()
            with C._probe(ref_net) as m:
                op = C._HessianOperator(m, F.cross_entropy, held, C._trainable(m), keep_graphs=True)
                g = torch.Generator().manual_seed(10_000)
                top, _, bottom, _, _ = C._lanczos(
                    op,
                    C._rademacher((op.dim,), op, g),
                    iters=args.reference_vectors,
                    tol=0.0,
                    min_iters=args.reference_vectors,
                )
                z = []
                for _ in range(args.reference_probes):
                    v = C._rademacher((1, op.dim), op, g)
                    z.append(float((v * op.matmat(v)).sum()))
                op.close()
            z = torch.tensor(z, dtype=torch.float64)
            ref_trace, ref_se = float(z.mean()), float(z.std() / len(z) ** 0.5)
            runs = [
                C.curvature(net, F.cross_entropy, held, matvecs=50, generator=torch.Generator().manual_seed(s))
                for s in range(3)
            ]
            lam = [r.lambda_max for r in runs]
            err = max(abs(v.value - top) / abs(top) for v in lam)
            zs = [abs(r.trace.value - ref_trace) / (r.trace.std_error**2 + ref_se**2) ** 0.5 for r in runs]
            lines.append(
                f"| {'BatchNorm' if bn else 'no BatchNorm'}, {stage} | {top:.6g} | {bottom:.4g} | "
                f"{min(v.value for v in lam):.6g} … {max(v.value for v in lam):.6g} | {err:.1e} | "
                f"≤ {max(v.residual for v in lam):.1e} | {min(v.bottom for v in lam):.4g} … "
                f"{max(v.bottom for v in lam):.4g} | "
                f"{min(v.iterations for v in lam)}–{max(v.iterations for v in lam)} | "
                f"{min(r.trace.matvecs + v.matvecs for r, v in zip(runs, lam))}–"
                f"{max(r.trace.matvecs + v.matvecs for r, v in zip(runs, lam))} | "
                + ", ".join(f"{r.trace.value:.4g} ± {r.trace.std_error:.2g}" for r in runs)
                + f" | {ref_trace:.4g} ± {ref_se:.2g} | {max(zs):.2f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


def event_memory(args) -> None:
    """Peak bytes of the CPU tensors created during one curvature event (after a training step)."""
    import weakref

    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from loss_slope.metrics.curvature import curvature

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.seen: dict[int, int] = {}
            self.refs: list = []

        def _free(self, key: int) -> None:
            self.live -= self.seen.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    st = t.untyped_storage()
                    key, n = st.data_ptr(), st.nbytes()
                    if n and key not in self.seen:
                        self.seen[key] = n
                        self.live += n
                        self.peak = max(self.peak, self.live)
                        self.refs.append(weakref.ref(t, lambda _r, key=key: self._free(key)))
            return out

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = CifarResNet18(num_classes=10, in_channels=3, base_width=args.base_width)
    n = sum(p.numel() for p in net.parameters())
    b = args.curvature_batch_size or args.batch_size
    x, y = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
    F.cross_entropy(net(x), y).backward()
    for p in net.parameters():
        p.grad = None
    mode = LiveBytes()
    with mode:
        r = curvature(
            net,
            F.cross_entropy,
            [(x, y)],
            matvecs=args.hutch_matvecs,
            generator=torch.Generator().manual_seed(args.seed),
            matvec_block=args.matvec_block,
        )
    vec = 4 * n
    print(
        f"width {args.base_width}, {n:,} parameters ({vec / 2**20:.1f} MiB per vector), {b} held-out images, "
        f"hutch_matvecs={args.hutch_matvecs}: peak of the event's tensors {mode.peak / 2**20:.0f} MiB "
        f"= {mode.peak / vec:.1f} vectors; Lanczos vectors {getattr(r.lambda_max, 'iterations', '?')}"
    )


def main() -> None:
    args = parse_args()
    if args.reference:
        return reference(args)
    if args.event_memory:
        return event_memory(args)
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training sets it (CurveModule)
    model = CifarResNet18(base_width=args.base_width, blocks=(2, 2, 2, 2)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.functional.cross_entropy
    n_params = sum(p.numel() for p in model.parameters())
    b = args.batch_size
    data = [(torch.randn(b, 3, 32, 32, device=device), torch.randint(0, 10, (b,), device=device)) for _ in range(8)]
    cb = args.curvature_batch_size or b
    held_out = [
        (torch.randn(cb, 3, 32, 32, device=device), torch.randint(0, 10, (cb,), device=device))
        for _ in range(args.curvature_batches)
    ]
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
        + (
            f"{torch.cuda.get_device_name(device)}; times are synchronized wall time"
            if device.type == "cuda"
            else "CPU; times are " + ("process CPU time" if args.threads == 1 else "wall time")
        ),
        "",
        "| measured | value |",
        "|---|---|",
        f"| training step, no monitors (median of {len(plain)}) | {1e3 * t_step:.1f} ms |",
        f"| training step, with per-step hooks (median) | {1e3 * statistics.median(with_hooks):.1f} ms |",
        f"| per-step hooks: observe_gradients + on_train_step (median) | {1e3 * t_hooks:.3f} ms |",
        f"| curvature event (median of {args.curvature_events}) | {t_curv:.2f} s = {t_curv / t_step:.0f} steps |",
        f"| Hessian-vector products per curvature event | {matvecs:g} (Hutch++ {config.hutch_matvecs} "
        f"+ Lanczos {matvecs - config.hutch_matvecs:g}"
        + (", its first product free" if FREE_FIRST_PRODUCT else "")
        + ") |",
        f"| one Hessian-vector product | {1e3 * t_matvec:.1f} ms = {t_matvec / t_step:.2f} steps |",
        f"| noise event (PSD of {config.psd_window} residuals + grad_var) | {1e3 * t_noise:.2f} ms |",
        "",
        "| extrapolated to the cadence | overhead | budget | within |",
        "|---|---|---|---|",
        f"| curvature every {every_c} steps | {100 * r_curv:.1f} % | {100 * CURVATURE_BUDGET:.0f} % "
        f"| {ok(r_curv, CURVATURE_BUDGET)} |",
        f"| noise every {args.noise_every_epochs} epochs ({every_n} steps), incl. per-step hooks "
        f"| {100 * r_noise:.2f} % | — | — |",
        f"| all monitors | {100 * r_total:.1f} % | {100 * TOTAL_BUDGET:.0f} % | {ok(r_total, TOTAL_BUDGET)} |",
        "",
        f"Curvature within {100 * CURVATURE_BUDGET:.0f} % needs one of: curvature_every_steps ≥ "
        f"{every_for_budget:.0f}; "
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
