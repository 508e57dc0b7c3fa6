"""False knees of the calibrated knee test in the study's regime.

Knee-free curves of the study's length (19,550 steps = 50 epochs x 391), with
log-noise whose s.d. grows x3-x10 along the run (iid or AR(1) wander), and:

* ``step``: a power law (with or without a floor) in the optimizer step, tested on
  the step axis;
* ``cosine``: a power law in the summed learning rate of a 5-epoch linear warm-up +
  cosine schedule (the study's), tested on the cumulative-LR axis -- the axis on
  which that curve has no knee.

Prints the false-positive rate of ``broken_power_lrt`` at the configured threshold
(``LRT_THRESHOLD``) with its Wilson 95 % upper bound, per class.  Usage::

    python bench/bench_calibration_study.py [--n 100] [--seed 2026]
"""

from __future__ import annotations

import os

# "one core": pin BLAS/OpenMP to one thread before numpy loads (the timings are CPU time of one thread)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

from loss_slope.analysis import cumulative_lr, detect_knee  # noqa: E402
from loss_slope.analysis.search import LRT_THRESHOLD  # noqa: E402
from loss_slope.analysis.stats import wilson_interval  # noqa: E402

N_STEPS, SPE, WARMUP_EPOCHS = 19_550, 391, 5


def schedule() -> np.ndarray:
    steps = np.arange(N_STEPS, dtype=float)
    warm = WARMUP_EPOCHS * SPE
    lr = np.where(
        steps < warm,
        (steps + 1) / warm,
        0.5 * (1 + np.cos(np.pi * (steps - warm) / (N_STEPS - warm))),
    )
    return np.maximum(lr, 1e-6)


def curve(rng: np.random.Generator, kind: str, t_cos: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    steps = np.arange(N_STEPS, dtype=float)
    t = steps if kind == "step" else t_cos
    shift = float(math.exp(rng.uniform(math.log(5), math.log(300))))
    alpha = float(rng.uniform(0.3, 1.2))
    clean = (t + shift) ** -alpha
    clean = math.log(10) * clean / clean[0]
    if rng.random() < 0.5:
        share = float(rng.uniform(0.15, 0.5))
        clean = clean + share / (1 - share) * clean[-1]
    growth = float(rng.uniform(3, 10))
    fac = growth ** (steps / steps[-1])
    sigma = float(rng.uniform(0.01, 0.08))
    noise = sigma * fac * rng.standard_normal(N_STEPS)
    if rng.random() < 0.5:
        phi = float(rng.uniform(0.9, 0.99))
        ar_sd = float(rng.uniform(0.01, 0.04))
        e = ar_sd * math.sqrt(1 - phi**2) * rng.standard_normal(N_STEPS)
        noise = noise + fac * signal.lfilter([1.0], [1.0, -phi], e)
    return steps, clean * np.exp(noise)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="curves per class")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threshold", type=float, default=LRT_THRESHOLD)
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    rng = np.random.default_rng(args.seed)
    lr = schedule()
    t_cos = cumulative_lr(lr)
    emit(f"knee-free curves of {N_STEPS} steps, noise growing x3-x10, threshold {args.threshold:g}")
    emit("")
    emit("| class | curves | false knees | rate | Wilson 95 % upper | max statistic | s per curve |")
    emit("|---|---|---|---|---|---|---|")
    for kind in ("step", "cosine"):
        k, stats, times = 0, [], []
        for _ in range(args.n):
            steps, loss = curve(rng, kind, t_cos)
            x = steps if kind == "step" else t_cos
            t0 = time.perf_counter()
            res = detect_knee(x, loss, threshold=args.threshold)
            times.append(time.perf_counter() - t0)
            stats.append(res.statistic)
            k += bool(res.found)
        lo, hi = wilson_interval(k, args.n)
        emit(f"| {kind} | {args.n} | {k} | {k / args.n:.3f} | {hi:.3f} | {max(stats):.3g} | {np.median(times):.2f} |")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
