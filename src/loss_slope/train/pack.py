"""Launch the N runs of one pack on one GPU and wait for them.

    python -m loss_slope.train.pack --plan results/plan/V/packs.json --pack pack000 --variant V \
        --output results/packs/V/pack000.json --log-dir logs/train/V --attempt 1

Each run is a separate ``python -m loss_slope.train`` process (its own CUDA
context, so one crash cannot take the others down). A complete run skips
itself, a partial one resumes from its latest checkpoint. The launcher exits
non-zero if any run did not complete, so Snakemake's retries resubmit the pack
and only the unfinished runs do work. On attempt a > 1 it first waits
``min(cap, base * 2**(a-2))`` seconds when ``--backoff-base`` is given (on
SLURM the profile delays the resubmission itself with ``sbatch --begin``, so
no GPU is held while waiting).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from loss_slope.probe.plan import read_plan


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Delay before attempt ``attempt`` (1-based): 0 for the first, then base, 2 base, 4 base, ... capped."""
    return 0.0 if attempt <= 1 else min(cap, base * 2 ** (attempt - 2))


def launch_pack(*, plan_path, pack: str, variant: str, output, log_dir, work_root="work", attempt: int = 1,
                backoff_base: float = 0.0, backoff_cap: float = 600.0, extra_overrides=(),
                expect_runs=None) -> int:
    plan = read_plan(plan_path)
    members = plan["packs"][pack]
    if expect_runs is not None and [m["run"] for m in members] != list(expect_runs):
        raise SystemExit(f"pack {pack} of {plan_path} holds {[m['run'] for m in members]}, "
                         f"but the workflow expected {list(expect_runs)}: rerun plan_packs")
    delay = backoff_seconds(attempt, base=backoff_base, cap=backoff_cap)
    if delay:
        print(f"attempt {attempt}: backing off {delay:.0f} s before retrying", flush=True)
        time.sleep(delay)
    procs = {}
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LOSS_SLOPE_ATTEMPT": str(attempt), "LOSS_SLOPE_PACK": pack}
    started = time.time()
    for m in members:
        run = m["run"]
        run_dir = Path(work_root) / variant / run
        cmd = [sys.executable, "-m", "loss_slope.train", *m["overrides"], *extra_overrides, f"variant={variant}",
               f"run={run}", f"run_dir={run_dir}"]
        log = open(Path(log_dir) / f"{run}.log", "a")
        log.write(f"\n=== pack {pack} attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        procs[run] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print(f"started {variant}/{run} (pid {procs[run][0].pid})", flush=True)

    def forward(signum, _frame):  # scancel/timeout: let every run checkpoint
        for p, _ in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    results = {}
    for run, (p, log) in procs.items():
        code = p.wait()
        log.close()
        results[run] = {"exit_code": code, "status": {0: "complete", 3: "unfinished"}.get(code, "failed"),
                        "log": str(Path(log_dir) / f"{run}.log")}
        print(f"{variant}/{run}: {results[run]['status']} (exit {code})", flush=True)
    failed = {r: v for r, v in results.items() if v["exit_code"] != 0}
    if failed:
        for r, v in failed.items():
            print(f"run {variant}/{r} did not complete ({v['status']}); see {v['log']}", file=sys.stderr)
        return 1
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps({"variant": variant, "pack": pack, "attempt": attempt, "started": started,
                                        "finished": time.time(), "runs": results}, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--pack", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--work-root", default="work")
    ap.add_argument("--attempt", type=int, default=1)
    ap.add_argument("--runs", help="comma-separated run ids the pack must hold (a consistency check)")
    ap.add_argument("--backoff-base", type=float, default=0.0,
                    help="seconds; 0 = none (on SLURM the profile delays retries with sbatch --begin instead)")
    ap.add_argument("--backoff-cap", type=float, default=600.0)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_time_s=3300)")
    a = ap.parse_args(argv)
    return launch_pack(plan_path=a.plan, pack=a.pack, variant=a.variant, output=a.output, log_dir=a.log_dir,
                       work_root=a.work_root, attempt=a.attempt, backoff_base=a.backoff_base,
                       backoff_cap=a.backoff_cap, extra_overrides=a.overrides,
                       expect_runs=a.runs.split(",") if a.runs else None)


if __name__ == "__main__":
    sys.exit(main())
