"""Per-curve H1 decision (``analyze_curve(...).to_dict()["h1_single_power_law"]``) on known truths.

Classes (2k-20k steps, multiplicative log-noise s.d. 0.02-0.3, iid or AR(1), constant
or growing x3-x10 along the run):

* ``single``: a sharp knee (or none) followed by one power law, with or without a
  floor -- the answer is True;
* ``two_breaks``: a knee, then a second break at 4-10x the knee with an exponent
  change of 0.3-0.6 -- the answer is False.

Targets: True in >= 90 % of ``single``, False in >= 80 % of ``two_breaks``, None in
<= 5 % of all, analyze_curve <= 1 s at 20k points.  Usage::

    python bench/bench_h1_shape.py [--n 100] [--seed 7]
"""

from __future__ import annotations

import os

# "one core": pin BLAS/OpenMP to one thread before numpy loads (the timings are CPU time of one thread)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from loss_slope.analysis import analyze_curve  # noqa: E402
from loss_slope.analysis.stats import wilson_interval  # noqa: E402
from loss_slope.analysis.synthetic import CurveSpec, make_curve, true_loss  # noqa: E402


def sample(rng: np.random.Generator, *, two_breaks: bool) -> CurveSpec:
    n = int(round(math.exp(rng.uniform(math.log(2000), math.log(20000)))))
    knee = rng.random() < (1.0 if two_breaks else 0.7)
    plateau = rng.random() < 0.5
    shift = float(math.exp(rng.uniform(math.log(10), math.log(min(200, n / 40))))) if plateau else 1.0
    sigma = float(rng.uniform(0.02, 0.3))
    ar = rng.random() < 0.5
    phi = float(rng.uniform(0.9, 0.99)) if ar else 0.0
    ar_sigma = float(rng.uniform(0.02, 0.08)) if ar else 0.0
    growth = float(rng.uniform(3, 10)) if rng.random() < 0.5 else 1.0
    common = dict(
        n_steps=n,
        shift=shift,
        noise_sigma=sigma / (growth**0.5 if growth > 1 else 1.0),
        ar_phi=phi,
        ar_sigma=ar_sigma,
        noise_growth=growth,
    )
    if not knee:
        spec = CurveSpec(alpha=float(rng.uniform(0.3, 1.2)), **common)
    else:
        k_hi = n / (10.0 if two_breaks else 5.0) / (1.0 if not two_breaks else 1.0)
        k_lo = max(20.0, 3 * shift)
        if two_breaks:
            k_hi = n / 20.0
        k = float(math.exp(rng.uniform(math.log(k_lo), math.log(max(k_hi, k_lo * 1.5)))))
        a0 = float(rng.uniform(0.0, 0.3))  # a slow start (plateau-like) before the knee
        a1 = float(rng.uniform(0.5, 1.0))
        kw = dict(alpha=a0, knee_step=k, alpha_after=a1)
        if two_breaks:
            k2 = k * float(rng.uniform(4, 10))
            d = float(rng.uniform(0.3, 0.6)) * (1 if rng.random() < 0.5 else -1)
            kw.update(knee2_step=k2, alpha_after2=max(a1 + d, 0.1))
        spec = CurveSpec(**kw, **common)
    if rng.random() < 0.5:
        end = true_loss(np.array([n - 1.0]), spec)[0]
        share = float(rng.uniform(0.15, 0.5))
        spec = dataclasses.replace(spec, floor=min(share / (1 - share) * end, 0.5 * spec.initial_loss))
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="curves per class")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    rng = np.random.default_rng(args.seed)
    rows = []
    emit(
        f"{args.n} curves per class, seed {args.seed}; targets: single True >= 0.90, two_breaks False >= 0.80, "
        "None <= 0.05, <= 1 s per 20k-point curve"
    )
    emit("")
    emit("| class | right | rate [Wilson 95 %] | None | max CPU s per curve | median CPU s, > 15k points |")
    emit("|---|---|---|---|---|---|")
    for cls in ("single", "two_breaks"):
        counts = {True: 0, False: 0, None: 0}
        times = []
        for i in range(args.n):
            spec = sample(rng, two_breaks=cls == "two_breaks")
            c = make_curve(spec, seed=int(rng.integers(2**31)))
            t0 = time.process_time()  # CPU time: wall time on a shared machine measures the neighbours
            d = analyze_curve(c.steps, c.loss, steps_per_epoch=spec.n_steps / 50).to_dict()
            dt = time.process_time() - t0
            times.append((spec.n_steps, dt))
            dec = d.get("h1_single_power_law")
            counts[dec] += 1
            want = cls == "single"
            if args.verbose and dec is not want:
                print(cls, i, dec, d.get("h1_reason"), spec)
        n = args.n
        want = True if cls == "single" else False
        k = counts[want]
        lo, hi = wilson_interval(k, n)
        t20 = [t for m, t in times if m > 15000]
        rows.append(
            (
                cls,
                k / n,
                lo,
                hi,
                counts[None] / n,
                max(t for _, t in times),
                float(np.median(t20)) if t20 else float("nan"),
            )
        )
        emit(
            f"| {cls} | {k}/{n} | {k / n:.3f} [{lo:.3f}, {hi:.3f}] | {counts[None]}/{n} | {rows[-1][5]:.2f} | "
            f"{rows[-1][6]:.2f} |"
        )
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
