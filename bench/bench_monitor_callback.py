"""Overhead of the wired monitors (MonitorCallback) on a real demo training run.

Runs ``python -m loss_slope.train`` with the demo's settings (config/config.yaml:
digits, width-8 ResNet-18, batch 32, 44 steps per epoch, one torch thread),
alternating three monitor settings:

* ``off``    trainer.monitors.enabled=false
* ``noise``  noise every 2 epochs + checkpoint sizes, no curvature
* ``demo``   the demo's monitor overrides (config/config.yaml)

and reports two measurements per setting (medians over ``--reps``):

1. the CPU time (user + sys) of the whole training process. On shared cores this
   varies by several per cent from run to run, so small differences between the
   settings are not resolved;
2. the CPU time spent inside the callback's own hooks (the per-step hooks, the
   curvature and noise events, the checkpoint-size rows), timed with
   ``time.process_time`` in the training process itself, as a share of the rest
   of the process. This is the direct cost; it excludes the indirect one of
   larger checkpoints (the monitor state, ~1 ms per checkpoint here).

    .venv/bin/python bench/bench_monitor_callback.py [--epochs 30] [--reps 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Runs inside the training process: wraps the callback's hooks with CPU timers.
_TIMED_MAIN = r"""
import atexit, json, runpy, sys, time
from loss_slope.train import monitor_callback as mc

acc = {"per_step": 0.0, "batch_end": 0.0, "checkpoint_rows": 0.0}

def timed(fn, key):
    def wrapper(*args, **kwargs):
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += time.process_time() - t
    return wrapper

C = mc.MonitorCallback
C.on_before_optimizer_step = timed(C.on_before_optimizer_step, "per_step")
C.on_train_batch_end = timed(C.on_train_batch_end, "batch_end")  # per-step feed + curvature/noise events
C._checkpoint_written = timed(C._checkpoint_written, "checkpoint_rows")
atexit.register(lambda: print("MONITOR_CPU " + json.dumps({**acc, "process": time.process_time()}), flush=True))
sys.argv = ["loss_slope.train", *sys.argv[1:]]
runpy.run_module("loss_slope.train", run_name="__main__")
"""


def demo_overrides(variant: str) -> list[str]:
    from loss_slope.study.config import validate_config
    from loss_slope.study.runs import build_runs

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(config)  # the packaged schema
    run = next(r for r in build_runs(config) if r.variant == variant)
    return list(run.overrides)


def run_once(overrides: list[str], run_dir: Path) -> tuple[float, dict, str]:
    """(CPU seconds of the process, the callback's timers, log) of one training process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-c", _TIMED_MAIN, *overrides, f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timers = json.loads(proc.stdout.split("MONITOR_CPU ", 1)[1].splitlines()[0])
    return cpu, timers, proc.stdout + proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="S-core")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the demo's warm-up of 1 epoch must be shorter than training")

    demo = demo_overrides(args.variant) + [f"trainer.epochs={args.epochs}"]
    base = [o for o in demo if not o.startswith("trainer.monitors.")]
    settings = {
        "off": base + ["trainer.monitors.enabled=false"],
        "noise": base + ["trainer.monitors.curvature_every_steps=null"],
        "demo": demo,
    }
    cpu: dict[str, list[float]] = {k: [] for k in settings}
    share: dict[str, list[float]] = {k: [] for k in settings}
    parts: dict[str, list[dict]] = {k: [] for k in settings}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, overrides in settings.items():
                c, timers, _ = run_once(overrides, Path(tmp) / f"{name}-{rep}")
                own = timers["per_step"] + timers["batch_end"] + timers["checkpoint_rows"]
                cpu[name].append(c)
                share[name].append(own / (timers["process"] - own))
                parts[name].append(timers)
                print(
                    f"rep {rep} {name:6s}: process {c:5.1f} s CPU; callback {own:5.2f} s "
                    f"({share[name][-1]:+.1%} of the rest): {timers}",
                    flush=True,
                )
    steps = 44 * args.epochs
    off = statistics.median(cpu["off"])
    lines = [
        f"Demo run ({args.variant}, {args.epochs} epochs x 44 = {steps} steps, 1 thread); medians of {args.reps} "
        f"runs per setting, run alternately ({time.perf_counter() - t0:.0f} s in all).",
        "",
        "| monitors | process CPU s | vs off | callback CPU s | callback / rest of the process | "
        "gradient hook per step | events |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in settings:
        med = statistics.median(cpu[name])
        own = statistics.median(p["per_step"] + p["batch_end"] + p["checkpoint_rows"] for p in parts[name])
        feed = statistics.median(p["per_step"] for p in parts[name]) / steps * 1e3
        lines.append(
            f"| {name} | {med:.1f} (range {min(cpu[name]):.1f}–{max(cpu[name]):.1f}) | "
            f"{(med - off) / off:+.1%} | {own:.2f} | {statistics.median(share[name]):.1%} | "
            f"{feed:.2f} ms | {'curvature + noise' if name == 'demo' else name} |"
        )
    lines.append("")
    lines.append("demo overrides: " + " ".join(o for o in demo if o.startswith("trainer.monitors.")))
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
