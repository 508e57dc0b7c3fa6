"""Overhead of the wired monitors (MonitorCallback) on a real demo training run.

Runs ``python -m loss_slope.train`` with the demo's settings (config/config.yaml:
digits, width-8 ResNet-18, batch 32, 44 steps per epoch) once per setting and
repetition, alternating the settings, and compares the CPU time of each
training process (user + sys of the child; one torch thread, so other jobs on
shared cores barely distort it):

* ``off``        trainer.monitors.enabled=false
* ``noise``      noise every 2 epochs + checkpoint sizes, no curvature
* ``demo``       the demo's monitor overrides (config/config.yaml)

    .venv/bin/python bench/bench_monitor_callback.py [--epochs 30] [--reps 2] [--markdown out.md]

The whole process is timed (imports and data loading included), which is
what a user of the demo waits for; the process start-up alone is reported too.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def demo_overrides(variant: str) -> list[str]:
    from loss_slope.study.config import validate_config
    from loss_slope.study.runs import build_runs

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    run = next(r for r in build_runs(config) if r.variant == variant)
    return list(run.overrides)


def strip_monitors(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("trainer.monitors.")]


def run_once(overrides: list[str], run_dir: Path) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, log) of one training process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loss_slope.train", *overrides, f"run_dir={run_dir}"],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.stdout + proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="S-core")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args()

    demo = demo_overrides(args.variant) + [f"trainer.epochs={args.epochs}"]
    base = strip_monitors(demo)
    settings = {
        "off": base + ["trainer.monitors.enabled=false"],
        "noise": base + ["trainer.monitors.curvature_every_steps=null"],
        "demo": demo,
    }
    cpu: dict[str, list[float]] = {k: [] for k in settings}
    events: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, overrides in settings.items():
                c, w, text = run_once(overrides, Path(tmp) / f"{name}-{rep}")
                cpu[name].append(c)
                m = re.findall(r"monitors this attempt: (.*)", text)
                events[name] = m[-1] if m else "no events"
                print(f"rep {rep} {name:6s}: {c:6.1f} s CPU, {w:6.1f} s wall; {events[name]}", flush=True)
        # a completed run exits right after start-up: measures the fixed cost
        startup, _, _ = run_once(settings["off"], Path(tmp) / "off-0")

    off = statistics.median(cpu["off"])
    lines = [
        f"Demo run ({args.variant}, {args.epochs} epochs x 44 steps, 1 thread), CPU seconds per process "
        f"(median of {args.reps}); start-up of a process (imports, config) {startup:.1f} s.",
        "",
        "| monitors | CPU s | overhead (whole run) | overhead (training only) | events |",
        "|---|---|---|---|---|",
    ]
    for name in settings:
        med = statistics.median(cpu[name])
        lines.append(f"| {name} | {med:.1f} | {(med - off) / off:+.1%} | {(med - off) / (off - startup):+.1%} "
                     f"| {events[name]} |")
    lines.append("")
    lines.append("demo overrides: " + " ".join(o for o in demo if o.startswith("trainer.monitors.")))
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
