"""After a simulated study: time per stage, peak memory per job, exactly-once checks, truth recovery.

    python -m loss_slope.simulate.rehearsal [WORKDIR] [--log .snakemake/log/X.snakemake.log]

reads the Snakemake log of the run (the newest one by default) for each job's
start and end, the ``benchmarks/`` files for memory, every
``results/validation/*/*/validation.json`` for the exactly-once checks and,
when the report was built, compares ``results/report/runs.parquet`` with the
truth (:mod:`loss_slope.report.truth`). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from loss_slope.pipeline.paths import REPORT_RUNS_PARQUET, VALIDATION_JSON
from loss_slope.report.study_stats import StudyStats
from loss_slope.report.truth import compare_with_truth, load_truths, truth_markdown

_STAMP = re.compile(r"^\[(\w{3} \w{3}\s+\d+ \d\d:\d\d:\d\d \d{4})\]$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def job_times(log_path: str | Path) -> dict[int, dict]:
    """jobid -> {rule, start, end} (datetimes) from a Snakemake 9 log."""
    jobs: dict[int, dict] = {}
    stamp = pending = None
    for line in Path(log_path).read_text().splitlines():
        if m := _STAMP.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := _START.match(line):
            pending = (m.group(1), stamp)
        elif (m := _JOBID.match(line)) and pending:
            jobs[int(m.group(1))] = {"rule": pending[0], "start": pending[1], "end": None}
            pending = None
        elif m := _DONE.match(line):
            j = jobs.setdefault(int(m.group(1)), {"rule": m.group(2), "start": None, "end": None})
            j["end"] = stamp
    return jobs


def stage_table(jobs: dict[int, dict]) -> list[dict]:
    by: dict[str, list[dict]] = defaultdict(list)
    for j in jobs.values():
        if j["start"] and j["end"]:
            by[j["rule"]].append(j)
    rows = []
    for rule, js in sorted(by.items(), key=lambda kv: min(j["start"] for j in kv[1])):
        first, last = min(j["start"] for j in js), max(j["end"] for j in js)
        busy = sum((j["end"] - j["start"]).total_seconds() for j in js)
        rows.append(
            {
                "rule": rule,
                "jobs": len(js),
                "first_start": first,
                "last_end": last,
                "span_s": (last - first).total_seconds(),
                "job_seconds": busy,
            }
        )
    return rows


def benchmark_peaks(workdir: Path) -> dict[str, float]:
    """rule -> largest max_rss (MB) over its benchmark files."""
    out: dict[str, float] = {}
    for f in (workdir / "benchmarks").glob("*/**/*.tsv"):
        rule = f.relative_to(workdir / "benchmarks").parts[0]
        lines = f.read_text().splitlines()
        if len(lines) < 2:
            continue
        head, vals = lines[0].split("\t"), lines[1].split("\t")
        try:
            rss = float(vals[head.index("max_rss")])
        except (ValueError, IndexError):
            continue
        out[rule] = max(out.get(rule, 0.0), rss)
    return out


def exactly_once(workdir: Path) -> dict:
    reps = [json.loads(p.read_text()) for p in workdir.glob(VALIDATION_JSON.format(variant="*", run="*"))]
    checks = ("steps_exactly_once", "val_per_epoch", "curvature_cadence", "noise_cadence", "checkpoints_recorded")
    failed = defaultdict(list)
    for r in reps:
        for c in r["checks"]:
            if c["name"] in checks and not c["passed"]:
                failed[c["name"]].append(f"{r['variant']}/{r['run']}")
    return {
        "runs": len(reps),
        "passed": sum(bool(r["passed"]) for r in reps),
        "diverged": sum(r.get("status") == "diverged" for r in reps),
        "complete_full_length": sum(
            r["n_steps"] == r["expected_steps"] and r["n_val"] == r["expected_val"] and not r.get("diverged")
            for r in reps
        ),
        "failed": dict(failed),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", nargs="?", default=".")
    ap.add_argument("--log", help="the Snakemake log (default: the newest in WORKDIR/.snakemake/log)")
    a = ap.parse_args(argv)
    wd = Path(a.workdir)
    log = (
        Path(a.log)
        if a.log
        else max((wd / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    )
    rows = stage_table(job_times(log))
    peaks = benchmark_peaks(wd)
    t0 = min(r["first_start"] for r in rows)
    print(f"Snakemake log: {log}\n")
    print("| stage (rule) | jobs | from (s) | to (s) | span (s) | sum of job wall times (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = peaks.get(r["rule"])
        print(
            f"| {r['rule']} | {r['jobs']} | {(r['first_start'] - t0).total_seconds():.0f} | "
            f"{(r['last_end'] - t0).total_seconds():.0f} | {r['span_s']:.0f} | {r['job_seconds']:.0f} | "
            f"{'' if peak is None else f'{peak:.0f}'} |"
        )
    end = max(r["last_end"] for r in rows)
    print(f"\nfirst job to last: {(end - t0).total_seconds():.0f} s\n")
    eo = exactly_once(wd)
    print(
        f"exactly once: {eo['passed']} of {eo['runs']} runs pass validation; {eo['complete_full_length']} "
        f"complete at full length, {eo['diverged']} diverged (complete up to their stop); failed checks: "
        f"{eo['failed'] or 'none'}\n"
    )
    table = wd / REPORT_RUNS_PARQUET.format(reportdir="report")
    stats_path = table.parent / "stats.json"
    truth = StudyStats.from_dict(json.loads(stats_path.read_text())).truth if stats_path.exists() else None
    if truth is not None:
        # the report's own comparison: the H1 decision on the truth's axis, the study's intervals
        print(truth_markdown(truth))
    elif table.exists():
        import pandas as pd

        print(truth_markdown(compare_with_truth(pd.read_parquet(table), load_truths(wd))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
