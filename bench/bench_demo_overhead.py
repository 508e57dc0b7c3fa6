"""How much of the demo's wall time is training compute: the demo overhead ratio.

    python bench/bench_demo_overhead.py --results DIR [--markdown out.md] [--json out.json]
    python bench/bench_demo_overhead.py --run [--scratch DIR] [--cores 2]

**Bare loop.** For each variant of the config, the run's Hydra config is composed
(``loss_slope.train.compose``) and data, model and optimizer are built as a run
builds them; then only forward + backward + optimizer step (+ LR schedule) is
timed, with the run's thread count: no Lightning, monitors, validation or I/O.
The batch draw (device-resident augmentation) is timed apart and reported, not
counted as bare compute. The bare total of the study is

    bare = sum over runs (steps x seconds per step) / min(runs, cores // training.threads)

(the runs that can train at once on the cores), so ``wall / bare`` means the same
on any machine: 1.0 would be a demo that does nothing but training steps, on
every core, from its first second to its last.

**The demo.** Either an existing demo working directory (``--results DIR``: its
Snakemake log ``.snakemake/log/*.log``, ``results/packs``, the runs' work trees),
or a fresh one (``--run``: the working tree copied into a scratch folder, then
``snakemake --profile profiles/local --cores N`` there). Every job's start and end
come from the Snakemake log (1 s resolution), each pack's runs from their
``attempts.jsonl`` and the step times of ``tables/steps.csv``. The breakdown is in
core-seconds divided by the cores, so its rows add up to the wall time: compute
in bare steps, what else the training processes do, every other rule, and the
cores nobody used (Snakemake's start-up, DAG re-evaluation, job-to-job gaps,
stages that run one job at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: rules whose jobs only plan or mark (no computation worth its own row)
BOOKKEEPING = ("plan_packs", "pack_spec", "run_done", "all")


# ---------------------------------------------------------------- bare loop
def bare_step_seconds(overrides: list[str], *, steps: int, warmup: int, blocks: int = 3) -> dict:
    """Seconds per training step of one run's configuration: forward, backward, optimizer step only."""
    import hydra.utils
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.optim.lr_scheduler import LambdaLR

    from loss_slope.data.datasets import build_data
    from loss_slope.train.compose import compose_train_config
    from loss_slope.train.module import fused_kwargs
    from loss_slope.train.schedule import schedule_from_config

    cfg = compose_train_config([*overrides, "run_dir=/nonexistent"])
    threads = int(cfg.trainer.threads)
    torch.set_num_threads(threads)
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)
    device = torch.device("cpu")
    data = build_data(cfg.data, seed=int(cfg.seed), device=device)
    spe, epochs = data.steps_per_epoch, int(cfg.trainer.epochs)
    net = hydra.utils.instantiate(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    factory = hydra.utils.instantiate(cfg.optimizer)
    opt = factory(net.parameters(), **fused_kwargs(factory, device))
    schedule = schedule_from_config(cfg.schedule, steps_per_epoch=spe, epochs=epochs)
    lr = LambdaLR(opt, schedule.factor)
    net.train()
    step = 0
    data.train.step_source = lambda: step
    it = iter(data.train)
    clock = time.perf_counter
    fetch, compute = [], []
    for _ in range(warmup + blocks * steps):
        t0 = clock()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(data.train)
            x, y = next(it)
        t1 = clock()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        lr.step()
        t2 = clock()
        fetch.append(t1 - t0)
        compute.append(t2 - t1)
        step += 1
    float(loss)
    per_block = [statistics.fmean(compute[warmup + b * steps : warmup + (b + 1) * steps]) for b in range(blocks)]
    return {
        "step_s": statistics.median(per_block),
        "blocks_step_s": per_block,
        "batch_draw_s": statistics.fmean(fetch[warmup:]),
        "threads": threads,
        "steps_per_run": spe * epochs,
    }


def bare_loop(config: dict, *, cores: int, steps: int, warmup: int) -> dict:
    """Bare compute of every run of ``config`` (one timing per variant: lr and seed do not change the cost)."""
    from loss_slope.study.runs import build_runs

    runs = build_runs(config)
    by_variant: dict[str, list] = defaultdict(list)
    for r in runs:
        by_variant[r.variant].append(r)
    variants = {}
    for variant, vruns in by_variant.items():
        m = bare_step_seconds(list(vruns[0].overrides), steps=steps, warmup=warmup)
        m["runs"] = len(vruns)
        m["bare_s"] = m["runs"] * m["steps_per_run"] * m["step_s"]
        variants[variant] = m
    threads = int(config["training"]["threads"])
    slots = max(1, min(len(runs), cores // threads))
    serial = sum(v["bare_s"] for v in variants.values())
    return {"variants": variants, "cores": cores, "slots": slots, "bare_serial_s": serial, "bare_s": serial / slots}


# ---------------------------------------------------------------- Snakemake log
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")
_DATE = re.compile(r"^\s*Date: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


@dataclass
class Job:
    rule: str
    jobid: int
    start: float
    end: float | None = None
    threads: int = 1
    wildcards: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end or self.start) - self.start


def parse_log(text: str) -> tuple[float | None, list[Job]]:
    """(when Snakemake started, its jobs with start/end/threads/wildcards) from one Snakemake log."""
    began, stamp, jobs, current = None, None, {}, None
    for line in text.splitlines():
        if began is None and (m := _DATE.match(line)):
            began = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            continue
        if m := _STAMP.match(line.strip()):
            stamp = time.mktime(time.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"))
            current = None
            continue
        if m := _RULE.match(line.strip()):
            current = Job(rule=m.group(1), jobid=-1, start=stamp)
            continue
        s = line.strip()
        if current is not None:
            if s.startswith("jobid: "):
                current.jobid = int(s.split()[1])
                jobs[current.jobid] = current
            elif s.startswith("threads: "):
                current.threads = int(s.split()[1])
            elif s.startswith("wildcards: "):
                current.wildcards = dict(kv.split("=", 1) for kv in s[len("wildcards: ") :].split(", ") if "=" in kv)
        if m := _FINISHED.match(s):
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job.end = stamp
    return began, [j for j in jobs.values() if j.end is not None]


def latest_log(workdir: Path) -> Path:
    """The newest Snakemake log that ran jobs (dry-runs and --unlock leave logs too)."""
    for path in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        if "Finished jobid" in path.read_text(errors="replace"):
            return path
    raise SystemExit(f"no Snakemake log of a run under {workdir}/.snakemake/log")


# ---------------------------------------------------------------- per run
def _first_last_step_times(steps_csv: Path) -> tuple[int, float, float] | None:
    try:
        with open(steps_csv, "rb") as fh:
            header = fh.readline().decode().strip().split(",")
            first = fh.readline().decode().strip().split(",")
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            last = fh.read().decode().strip().splitlines()[-1].split(",")
    except (FileNotFoundError, IndexError):
        return None
    i, s = header.index("time"), header.index("step")
    return int(last[s]) - int(first[s]) + 1, float(first[i]), float(last[i])


def _attempts(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


def pack_runs(workdir: Path, work_root: str, job: Job) -> list[dict]:
    """The runs a train_pack job trained: start-up, training loop and wind-down of each (epoch seconds)."""
    variant, pack = job.wildcards.get("variant"), job.wildcards.get("pack")
    try:
        packed = json.loads((workdir / "results" / "packs" / variant / f"{pack}.json").read_text())
    except (FileNotFoundError, TypeError):
        return []
    out = []
    for run in packed["runs"]:
        run_dir = workdir / work_root / variant / run
        recs = [r for r in _attempts(run_dir / "attempts.jsonl") if job.start - 2 <= r.get("time", 0) <= job.end + 2]
        start = next((r["time"] for r in recs if r.get("event") == "start"), None)
        end = next((r["time"] for r in reversed(recs) if r.get("event") == "end"), None)
        steps = _first_last_step_times(run_dir / "tables" / "steps.csv")
        out.append({"variant": variant, "run": run, "attempt_start": start, "attempt_end": end, "steps": steps})
    return out


# ---------------------------------------------------------------- the breakdown
def breakdown(
    workdir: Path,
    bare: dict,
    *,
    cores: int,
    log_path: Path | None = None,
    wall: float | None = None,
    cpu: float | None = None,
):
    """Wall time of the demo in ``workdir`` split into wall-equivalent seconds (core-seconds / cores)."""

    log_path = log_path or latest_log(workdir)
    began, jobs = parse_log(log_path.read_text())
    if not jobs:
        raise SystemExit(f"{log_path}: no finished job")
    first, last = min(j.start for j in jobs), max(j.end for j in jobs)
    began = began if began is not None else first
    wall_log = last - began
    wall = wall if wall is not None else wall_log
    config = _load_demo_config(workdir)
    work_root = (config.get("paths") or {}).get("work_root", "work")
    step_s = {v: m["step_s"] for v, m in bare["variants"].items()}
    core_s: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    runs_seen = 0
    for j in jobs:
        busy = j.seconds * j.threads
        if j.rule != "train_pack":
            key = "bookkeeping (plan_packs, pack_spec, run_done)" if j.rule in BOOKKEEPING else j.rule
            core_s[key] += busy
            counts[key] += 1
            continue
        counts["train_pack"] += 1
        used = 0.0
        for r in pack_runs(workdir, work_root, j):
            if r["steps"] is None or r["attempt_start"] is None:
                continue
            runs_seen += 1
            n, t_first, t_last = r["steps"]
            loop = (t_last - t_first) * n / max(1, n - 1)
            bare_run = n * step_s.get(r["variant"], 0.0)
            core_s["train: bare steps"] += bare_run
            core_s["train: rest of the loop (validation, monitors, checkpoints, Lightning)"] += loop - bare_run
            core_s["train: run start-up (pack start -> first step)"] += max(0.0, t_first - j.start)
            end = r["attempt_end"] or t_last
            core_s["train: run wind-down (last step -> exit)"] += max(0.0, end - t_last)
            used += max(0.0, end - j.start)
        core_s["train: pack cores idle (slower run, launcher)"] += max(0.0, busy - used)
    total_busy = sum(core_s.values())
    core_s["idle cores (Snakemake start-up, DAG re-evaluation, gaps, one-job stages)"] = max(
        0.0, wall * cores - total_busy
    )
    rows = {k: v / cores for k, v in core_s.items()}
    return {
        "log": str(log_path),
        "wall_s": wall,
        "wall_log_s": wall_log,
        "startup_s": first - began,
        "jobs": len(jobs),
        "job_counts": dict(counts),
        "runs": runs_seen,
        "cores": cores,
        "rows": rows,
        "ratio": wall / bare["bare_s"],
        # CPU time of the whole demo (Snakemake and every job) over the bare loop's: the wall ratio
        # of a machine whose cores nobody else uses and are never idle; robust to neighbours' load
        "cpu_s": cpu,
        "cpu_ratio": cpu / bare["bare_serial_s"] if cpu else None,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _load_demo_config(workdir: Path) -> dict:
    from loss_slope.study.config import load_config

    path = workdir / "config" / "config.yaml"
    return load_config(path if path.exists() else REPO / "config" / "config.yaml")


# ---------------------------------------------------------------- running a demo
def copy_tree(dest: Path) -> None:
    """The working tree (tracked and untracked, not ignored files) into ``dest``."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        src = REPO / raw.decode()
        if src.is_file():
            (dest / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / raw.decode())


def run_demo(dest: Path, cores: int) -> tuple[float, float]:
    """Run the demo in a copy of the working tree: (wall seconds, CPU seconds of it and all its jobs)."""
    import resource

    copy_tree(dest)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": f"{dest / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    snakemake = Path(sys.executable).with_name("snakemake")
    t0 = time.time()
    out = subprocess.run(
        [str(snakemake), "--profile", "profiles/local", "--cores", str(cores)],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (dest / "snakemake.out").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"the demo failed (exit {out.returncode}); see {dest / 'snakemake.out'}")
    return wall, cpu


# ---------------------------------------------------------------- report
def markdown(bare: dict, demo: dict | None) -> str:
    lines = [
        f"Bare loop (forward + backward + optimizer step, no Lightning / monitors / validation / I/O), "
        f"{bare['cores']} cores, {bare['slots']} run(s) at once:",
        "",
        "| variant | runs | steps per run | bare ms/step (median, 3 blocks) | batch draw ms | bare s, all its runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v, m in bare["variants"].items():
        lines.append(
            f"| {v} | {m['runs']} | {m['steps_per_run']} | {1e3 * m['step_s']:.1f} | "
            f"{1e3 * m['batch_draw_s']:.2f} | {m['bare_s']:.0f} |"
        )
    lines += [
        "",
        f"Bare total: {bare['bare_serial_s']:.0f} s of steps / {bare['slots']} = **{bare['bare_s']:.0f} s**.",
        "",
    ]
    if demo is None:
        lines.append("No demo measured (pass `--results DIR` or `--run`).")
        return "\n".join(lines) + "\n"
    lines += [
        f"Demo: **{demo['wall_s']:.0f} s** wall ({demo['jobs']} jobs, {demo['runs']} runs), "
        f"ratio wall / bare = **{demo['ratio']:.2f}x** (target <= 1.4). Snakemake started "
        f"{demo['startup_s']:.0f} s before its first job.",
        "",
    ]
    if demo.get("cpu_s"):
        lines += [
            f"CPU time of the demo (Snakemake and all its jobs): {demo['cpu_s']:.0f} s = "
            f"**{demo['cpu_ratio']:.2f}x** the bare loop's {bare['bare_serial_s']:.0f} s (the wall ratio of a "
            "machine nobody else uses, with no idle core; not inflated by neighbours' load).",
            "",
        ]
    if demo.get("load_avg") is not None:
        lines += [f"Load average (1 min) when the table was made: {demo['load_avg']:.1f} on {demo['cores']} cores.", ""]
    lines += [
        "| where the wall time goes (core-seconds / cores) | seconds | share | jobs |",
        "|---|---:|---:|---:|",
    ]
    counts = demo["job_counts"]
    for k, v in sorted(demo["rows"].items(), key=lambda kv: -kv[1]):
        n = counts.get(k, counts.get("train_pack") if k.startswith("train:") else "")
        lines.append(f"| {k} | {v:.0f} | {v / demo['wall_s']:.0%} | {n if n is not None else ''} |")
    lines.append(f"| **total** | **{sum(demo['rows'].values()):.0f}** | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--results", type=Path, help="a demo working directory that has run (its .snakemake/log)")
    src.add_argument("--run", action="store_true", help="run the demo in a scratch copy of the working tree")
    ap.add_argument("--scratch", type=Path, help="with --run: where (kept); default a temporary folder, removed")
    ap.add_argument("--log", type=Path, help="the Snakemake log to read (default: the latest in DIR)")
    ap.add_argument("--wall", type=float, help="the demo's wall time measured outside Snakemake (s)")
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per block (3 blocks)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--bare", type=Path, help="reuse the bare loop of an earlier --json output (same machine)")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    from loss_slope.study.config import load_config

    demo = None
    workdir, tmp = a.results, None
    if a.run:
        if a.scratch:
            workdir = a.scratch
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="demo-overhead-")
            workdir = Path(tmp.name)
        a.wall, cpu = run_demo(workdir, a.cores)
    else:
        cpu = None
    if a.bare:
        bare = json.loads(a.bare.read_text())["bare"]
    else:
        bare = bare_loop(load_config(a.config), cores=a.cores, steps=a.steps, warmup=a.warmup)
    if workdir is not None:
        demo = breakdown(workdir, bare, cores=a.cores, log_path=a.log, wall=a.wall, cpu=cpu)
    if tmp is not None:
        tmp.cleanup()
    text = markdown(bare, demo)
    print(text)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps({"bare": bare, "demo": demo}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
