"""The resource probe's step time at k = 1 against a real run's, on the same CPU.

For each variant of the config (default: the demo's ``config/config.yaml``) this takes the run the
probe trains (the variant's first run: its overrides less LR, weight decay, seed and the data's
location, :func:`loss_slope.study.runs.variant_overrides`) and measures, alternating, ``--repeats``
times:

* **the probe at k = 1**: :func:`loss_slope.probe.capacity.run_level`, the probe's own level (one
  worker process on the CPUs of a pack of one run), with the config's ``probe_steps`` and
  ``probe_warmup_steps``; its ``step_ms`` is the training loop's time per step
  (:func:`loss_slope.probe.worker.loop_time`: validations, checkpoints and curvature at the
  training's cadence), ``window_step_ms`` the raw window (its events at the probe's cadence);
* **a real run**: ``python -m loss_slope.train`` with the run's overrides for ``--epochs`` epochs,
  pinned to the same CPUs; its step time is the mean interval of its step table's ``time`` from
  step 20 on (the probe's warm-up is left out the same way), so validations, checkpoints, the
  recorder's flushes and the curvature events are in it. The step table shows the events that fell
  between two of its steps only (the last one comes after the last step: 10 epochs of 44 steps have
  one event in the span, not two), so the probe's curvature share is rescaled to the events in the
  span (``gpu_check.probe_against_run``).

The figure is steps/s of the probe over steps/s of the run (1.00: the probe predicts the run's
speed); the target is within 10 %. No timing is asserted anywhere: this prints the ratio.

    python bench/bench_probe_vs_run.py [--config config/config.yaml] [--variants S-core ...]
        [--epochs 10] [--repeats 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check import PROBE_COMPARE_FROM, probe_against_run, run_loop_step  # bench/ is the script's folder

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.10


def probe_k1(overrides: list[str], *, steps: int, warmup: int) -> dict:
    """The probe's level k = 1, as ``probe_capacity`` runs it: the worker's step times."""
    from loss_slope.probe.capacity import run_level

    level, workers = run_level(overrides, 1, steps=steps, warmup=warmup, timeout=900)
    if not workers or level.errors or level.oom:
        raise RuntimeError(f"the probe's level k = 1 failed: {level.errors or 'out of memory'}")
    w = workers[0]
    return {"step_ms": w["step_ms"], "window_step_ms": w.get("window_step_ms", w["step_ms"]), "loop": w.get("loop")}


def real_run(overrides: list[str], run_dir: Path, *, epochs: int, cpus: list[int] | None) -> dict:
    """One run of ``epochs`` epochs on ``cpus``; its mean step interval from step 20 on and the
    curvature events in that span (:func:`gpu_check.run_loop_step`)."""
    cmd = [sys.executable, "-m", "loss_slope.train", *overrides, f"trainer.epochs={epochs}", f"run_dir={run_dir}"]
    pin = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus and hasattr(os, "sched_setaffinity") else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, preexec_fn=pin)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"the run exited {proc.returncode}: " + " | ".join(tail))
    span = run_loop_step(run_dir)
    if span["loop_step_ms"] is None:
        raise RuntimeError("the run logged too few steps to time")
    return {**span, "step_ms": span["loop_step_ms"], "wall_s": time.perf_counter() - t0}


def measure_variant(spec, config: dict, *, epochs: int, repeats: int, scratch: Path) -> dict:
    from loss_slope.probe.capacity import pack_cpu_set
    from loss_slope.study.runs import data_location_overrides, variant_overrides

    packing = config["packing"]
    probe_overrides = [*variant_overrides(spec), *data_location_overrides(config)]
    cpus = pack_cpu_set(1, probe_overrides)
    probes, runs = [], []
    for i in range(repeats):
        # alternate the order, so a drift of the machine's speed does not favour one of them
        order = ("probe", "run") if i % 2 == 0 else ("run", "probe")
        for what in order:
            if what == "probe":
                probes.append(
                    probe_k1(probe_overrides, steps=packing["probe_steps"], warmup=packing["probe_warmup_steps"])
                )
            else:
                run_dir = scratch / f"{spec.variant}-{i}"
                runs.append(real_run(list(spec.overrides), run_dir, epochs=epochs, cpus=cpus))
            last = probes[-1] if what == "probe" else runs[-1]
            print(f"  {spec.variant} {what} {i + 1}: {last['step_ms']:.1f} ms per step", file=sys.stderr)
    # the probe's prediction for the span timed: its curvature share rescaled to the events in it
    compared = [probe_against_run(r, p["loop"]) or {"probe_ms": p["step_ms"]} for p, r in zip(probes, runs)]
    ratios = [r["step_ms"] / c["probe_ms"] for c, r in zip(compared, runs)]
    window = [r["step_ms"] / p["window_step_ms"] for p, r in zip(probes, runs)]
    return {
        "variant": spec.variant,
        "run": spec.run,
        "probe_ms": statistics.median(c["probe_ms"] for c in compared),
        "window_ms": statistics.median(p["window_step_ms"] for p in probes),
        "run_ms": statistics.median(r["step_ms"] for r in runs),
        "ratios": ratios,
        "window_ratios": window,
    }


def render(rows: list[dict], *, config_path: Path, config: dict, epochs: int, repeats: int) -> str:
    p = config["packing"]
    lines = [
        f"Config `{config_path.name}`; probe: {p['probe_steps']} timed steps after {p['probe_warmup_steps']} "
        f"warm-up steps, k = 1; real runs: {epochs} epochs, steps {PROBE_COMPARE_FROM} on; both on the CPUs "
        f"of a pack of one run; {repeats} repeat(s), alternating. Ratio = steps/s of the probe / of the run "
        f"(median, with the range); target within {TARGET:.0%}.",
        "",
        "| variant | probe ms/step (training loop) | run ms/step | steps/s probe / run | within 10 % | "
        "raw window ms/step | window / run |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        med = statistics.median(r["ratios"])
        ok = all(abs(x - 1) <= TARGET for x in r["ratios"])
        rng = f" ({min(r['ratios']):.2f}–{max(r['ratios']):.2f})" if len(r["ratios"]) > 1 else ""
        lines.append(
            f"| {r['variant']} | {r['probe_ms']:.1f} | {r['run_ms']:.1f} | {med:.2f}{rng} | "
            f"{'yes' if ok else 'no'} | {r['window_ms']:.1f} | {statistics.median(r['window_ratios']):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from loss_slope.study.config import load_config
    from loss_slope.study.runs import build_runs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--variants", nargs="*", help="default: every variant of the config")
    ap.add_argument("--epochs", type=int, default=10, help="of each real run (the demo: 44 steps per epoch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extra", nargs="*", default=[], help="Hydra overrides added to probe and run (tests)")
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    config = load_config(a.config)
    first = {}
    for spec in build_runs(config):
        first.setdefault(spec.variant, spec)  # the run the probe trains (the workflow's probe_overrides)
    wanted = a.variants or list(first)
    unknown = [v for v in wanted if v not in first]
    if unknown:
        ap.error(f"no variant {', '.join(unknown)} in {a.config} (it has {', '.join(first)})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="probe-vs-run-") as tmp:
        for v in wanted:
            spec = first[v]
            if a.extra:
                spec = dataclasses.replace(spec, overrides=(*spec.overrides, *a.extra))
            print(f"{v}: probe k = 1 and a real run, {a.repeats} time(s)", file=sys.stderr)
            rows.append(measure_variant(spec, config, epochs=a.epochs, repeats=a.repeats, scratch=Path(tmp)))
    text = render(rows, config_path=a.config, config=config, epochs=a.epochs, repeats=a.repeats)
    print(text)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
