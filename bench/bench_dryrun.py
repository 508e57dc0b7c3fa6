"""Dry-run planning time of the 216-run study and of a 10,000-run grid.

Both with WORKERS_PER_GPU=1, so the whole sweep (one pack per run plus every
downstream job) is planned, not only the probes.

The first row is Snakemake's fixed start-up on a one-rule workflow (imports and
executor-plugin discovery: where slurm-client is installed but no controller
answers, the SLURM plugin waits ~9 s for `scontrol show config` at import, on
every start, profile or not). "planning" is each total minus that start-up.

    python bench/bench_dryrun.py [--markdown out.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def plan(configfile: Path | None, workdir: Path, snakefile: Path = REPO / "Snakefile") -> tuple[float, str]:
    env = {**os.environ, "WORKERS_PER_GPU": "1"}
    extra = ["--configfile", str(configfile)] if configfile else []
    t0 = time.perf_counter()
    out = subprocess.run(
        [SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir), "-n", "--quiet", "rules", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    dt = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    jobs = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("total")]
    return dt, jobs[-1].split()[-1] if jobs else "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = yaml.safe_load((REPO / "config" / "study.yaml").read_text())
        big["grid"] = {
            "lr": [round(0.01 * (i + 1), 4) for i in range(25)],
            "weight_decay": [round(1e-5 * (i + 1), 8) for i in range(25)],
            "seed": [0, 1, 2, 3],
        }
        (tmp / "big.yaml").write_text(yaml.safe_dump(big))
        (tmp / "Snakefile").write_text('rule one:\n    output: "one.txt"\n    shell: "touch {output}"\n')
        startup, jobs = plan(None, tmp / "startup", tmp / "Snakefile")
        rows = [f"| Snakemake start-up only (one-rule workflow) | {jobs} | {startup:.1f} | | |"]
        for name, cfg, target in (
            ("216-run study", REPO / "config" / "study.yaml", 10),
            ("10,000-run grid", tmp / "big.yaml", 60),
        ):
            dt, jobs = plan(cfg, tmp / name.split()[0])
            rows.append(f"| {name} | {jobs} | {dt:.1f} | {dt - startup:.1f} | <= {target} |")
    text = "\n".join(
        [
            "| dry-run (`snakemake -n`, N fixed) | jobs | seconds | planning (s) | target (s) |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
