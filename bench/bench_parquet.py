"""CSV -> Parquet for a realistic sweep: the project's converter vs pandas.

Writes synthetic step tables with the study's schema (default: 216 runs x
19,550 rows, the real study's step count), then times
  project   loss_slope.tables.parquet.convert_run (pyarrow CSV reader, typed, zstd)
  pandas    pandas.read_csv + DataFrame.to_parquet
on the same files, and prints the ratio and the Parquet/CSV size ratio.

    python bench/bench_parquet.py [--runs 216] [--rows 19550] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from loss_slope.tables.csvlog import CsvTable
from loss_slope.tables.parquet import convert_run


def write_runs(root: Path, runs: int, rows: int) -> list[Path]:
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(runs):
        d = root / f"run{i:03d}"
        steps = np.arange(rows)
        loss = 2.3 * (steps + 10.0) ** -0.5 * np.exp(rng.normal(0, 0.1, rows))
        t = CsvTable(d / "steps.csv", "steps")
        t.append(zip(steps.tolist(), (steps / 391).tolist(), (1.7e9 + 0.05 * steps).tolist(),
                     (0.1 * np.ones(rows)).tolist(), [1e-4] * rows, loss.tolist(), (loss / math.log(2)).tolist(),
                     rng.uniform(0, 1, rows).tolist()))
        t.close()
        v = CsvTable(d / "val.csv", "val")
        v.append([(s, s / 391, 0.0, 1.0, 1.44, 0.5, 1.0, 10.0) for s in range(97, rows, 97)])
        v.close()
        dirs.append(d)
    return dirs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=216)
    ap.add_argument("--rows", type=int, default=19550)
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_runs(Path(tmp), a.runs, a.rows)
        t0 = time.perf_counter()
        for d in dirs:
            convert_run(steps_csv=d / "steps.csv", val_csv=d / "val.csv", steps_parquet=d / "s.parquet",
                        val_parquet=d / "v.parquet", report_path=d / "r.json")
        t_project = time.perf_counter() - t0
        t0 = time.perf_counter()
        for d in dirs:
            for name in ("steps", "val"):
                pd.read_csv(d / f"{name}.csv").to_parquet(d / f"{name}.pandas.parquet")
        t_pandas = time.perf_counter() - t0
        csv_mb = sum((d / "steps.csv").stat().st_size for d in dirs) / 1e6
        pq_mb = sum((d / "s.parquet").stat().st_size for d in dirs) / 1e6
    lines = [
        "| CSV -> Parquet | seconds | per run (ms) |", "|---|---:|---:|",
        f"| project (pyarrow reader, typed schema, zstd, with checks) | {t_project:.2f} | {1e3 * t_project / a.runs:.1f} |",
        f"| pandas read_csv + to_parquet | {t_pandas:.2f} | {1e3 * t_pandas / a.runs:.1f} |",
        "",
        f"speed-up vs pandas: **{t_pandas / t_project:.2f}x** (target >= 5x); Parquet/CSV size: "
        f"**{pq_mb / csv_mb:.3f}** ({pq_mb:.1f} MB vs {csv_mb:.1f} MB); {a.runs} runs x {a.rows} step rows",
    ]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
