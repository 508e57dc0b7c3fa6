"""Run every benchmark and write docs/benchmarks.md (baselines measured in the same run).

    python bench/run_all.py [--quick] [--with-demo] [--demo-results DIR]

--quick         smaller sizes (a smoke run; the table says so)
--with-demo     also run the offline demo end to end in a scratch copy (~5-9 min on 2 cores)
                and break its wall time down against the bare training loop
--demo-results  the demo overhead ratio from an existing demo's working directory
                (default: this repository, when a demo has run here; ~30 s for the bare loop)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def section(title: str, cmd: list[str], md: Path) -> str:
    t0 = time.perf_counter()
    out = subprocess.run([PY, *cmd, "--markdown", str(md)], cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    body = (
        md.read_text()
        if out.returncode == 0 and md.exists()
        else f"```\nFAILED (exit {out.returncode})\n{out.stderr[-2000:]}\n```\n"
    )
    return f"## {title}\n\n`python {' '.join(cmd)}` ({dt:.0f} s)\n\n{body}\n"


def demo_overhead_section(results: Path | None, run: bool) -> str:
    """Demo wall / bare loop, with where the rest goes (bench/bench_demo_overhead.py)."""
    title = "Demo overhead: wall time against the bare training loop"
    if run:
        return section(title, ["bench/bench_demo_overhead.py", "--run"], REPO / "bench" / "out" / "demo_overhead.md")
    if results is None or not (results / ".snakemake" / "log").is_dir() or not (results / "results" / "packs").is_dir():
        return (
            f"## {title}\n\nNo demo has run in {results or REPO}: `python bench/bench_demo_overhead.py --results DIR` "
            "reads one, `--run` (or `run_all.py --with-demo`) runs one.\n"
        )
    return section(
        title,
        ["bench/bench_demo_overhead.py", "--results", str(results)],
        REPO / "bench" / "out" / "demo_overhead.md",
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--with-demo", action="store_true")
    ap.add_argument("--demo-results", type=Path, default=REPO)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    a = ap.parse_args(argv)
    q = a.quick
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    parts = [
        "# Benchmarks\n",
        f"Produced by `python bench/run_all.py{' --quick' if q else ''}` on {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Every ratio compares against a baseline measured in the same run, interleaved where it matters.\n",
        section(
            "Per-step logging cost",
            ["bench/bench_recorder.py", "--steps", "100" if q else "300", "--repeats", "2" if q else "3"],
            out / "recorder.md",
        ),
        section(
            "Knee detection and fits", ["bench/bench_analysis.py", *(["--quick"] if q else [])], out / "analysis.md"
        ),
        section(
            "H1 per run: one power law after the knee",
            ["bench/bench_h1_shape.py", "--n", "30" if q else "100"],
            out / "h1_shape.md",
        ),
        section(
            "Knee test in the study's regime (19,550 steps, growing noise, warm-up + cosine)",
            ["bench/bench_calibration_study.py", "--n", "30" if q else "100"],
            out / "calibration_study.md",
        ),
        section("CSV -> Parquet", ["bench/bench_parquet.py", *(["--runs", "20"] if q else [])], out / "parquet.md"),
        section("Monitors", ["bench/bench_monitors.py"], out / "monitors.md"),
        section("Dry-run planning", ["bench/bench_dryrun.py"], out / "dryrun.md"),
        section(
            "Checkpoint bytes written per run (the study's model)",
            ["bench/bench_checkpoints.py", "--epochs", "1" if q else "2"],
            out / "checkpoints.md",
        ),
        section(
            "Resource probe against a real run (k = 1, CPU)",
            ["bench/bench_probe_vs_run.py", "--repeats", "1" if q else "3"],
            out / "probe_vs_run.md",
        ),
    ]
    parts.append(demo_overhead_section(a.demo_results, run=a.with_demo))
    parts.append(
        "## GPU check\n\n`bench/gpu_check.sh` (one GPU, < 10 min): the GPU-only tests (`pytest -m gpu`); S-core and "
        "S-narrow at N = 1…4 processes per GPU with and without an MPS daemon (the pipeline's probe, "
        "`packing.mps: auto`), samples/s, peak memory (reserved + CUDA context), the probe's N and the packing "
        "gain; device-resident data vs a DataLoader; channels_last / bf16; one real one-epoch S-core run under "
        '`torch.cuda.set_sync_debug_mode("warn")` with its host syncs per quarter-epoch window and part of the '
        "run, its checkpoint saves and the probe's k = 1 step time against it; then the monitors at the study's "
        "width and batch. It writes "
        "`docs/gpu_check.md` (the file in the repo is a CPU smoke run until someone runs it on a GPU).\n"
    )
    Path(a.out).write_text("\n".join(parts))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
