"""CSV -> Parquet for a realistic sweep: the project's converter vs pandas.

Writes synthetic step tables with the study's schema (default: 216 runs x
19,550 rows, the real study's step count), then times
  project   loss_slope.tables.parquet.convert_run (pyarrow CSV reader, typed, zstd, with checks)
  pandas    pandas.read_csv + DataFrame.to_parquet, default options (what a researcher writes)
on the same files, both single-threaded and interleaved over --repeats passes
(medians), and prints the ratio, a per-phase breakdown, the Parquet/CSV size
ratio, and checks that the project's Parquet holds exactly the CSV's values.

    python bench/bench_parquet.py [--runs 216] [--rows 19550] [--repeats 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from loss_slope.tables.csvlog import CsvTable
from loss_slope.tables.parquet import convert_run

PHASES = ("read", "checks", "parse", "write", "report")


def write_runs(root: Path, runs: int, rows: int) -> list[Path]:
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(runs):
        d = root / f"run{i:03d}"
        steps = np.arange(rows)
        loss = 2.3 * (steps + 10.0) ** -0.5 * np.exp(rng.normal(0, 0.1, rows))
        t = CsvTable(d / "steps.csv", "steps")
        t.append(
            zip(
                steps.tolist(),
                (steps / 391).tolist(),
                (1.7e9 + 0.05 * steps).tolist(),
                (0.1 * np.ones(rows)).tolist(),
                [1e-4] * rows,
                loss.tolist(),
                (loss / math.log(2)).tolist(),
                rng.uniform(0, 1, rows).tolist(),
            )
        )
        t.close()
        v = CsvTable(d / "val.csv", "val")
        v.append([(s, s / 391, 0.0, 1.0, 1.44, 0.5, 1.0, 10.0) for s in range(97, rows, 97)])
        v.close()
        dirs.append(d)
    return dirs


def project_pass(dirs: list[Path]) -> dict:
    phases: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for d in dirs:
        convert_run(
            steps_csv=d / "steps.csv",
            val_csv=d / "val.csv",
            steps_parquet=d / "s.parquet",
            val_parquet=d / "v.parquet",
            report_path=d / "r.json",
            timings=phases,
        )
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, **phases}


def pandas_pass(dirs: list[Path]) -> dict:
    phases = {"read_csv": 0.0, "to_parquet": 0.0}
    t0, c0 = time.perf_counter(), time.process_time()
    for d in dirs:
        for name in ("steps", "val"):
            t1 = time.process_time()
            df = pd.read_csv(d / f"{name}.csv")
            t2 = time.process_time()
            df.to_parquet(d / f"{name}.pandas.parquet")
            phases["read_csv"] += t2 - t1
            phases["to_parquet"] += time.process_time() - t2
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, **phases}


def same_values(dirs: list[Path]) -> bool:
    """The project's Parquet holds exactly the CSV's values (floats parsed with Python's correctly rounded parser)."""
    for d in (dirs[0], dirs[-1]):
        ours = pq.read_table(d / "s.parquet")
        header, *lines = (d / "steps.csv").read_text().splitlines()
        exact = list(zip(*(line.split(",") for line in lines)))
        if ours.schema.names != header.split(",") or not all(
            np.array_equal(
                ours[c].to_numpy(), np.array([(int if i == 0 else float)(v) for v in exact[i]]), equal_nan=True
            )
            for i, c in enumerate(ours.schema.names)
        ):
            return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=216)
    ap.add_argument("--rows", type=int, default=19550)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_runs(Path(tmp), a.runs, a.rows)
        proj, pand = [], []
        for _ in range(a.repeats):  # interleaved: both see the same machine load
            proj.append(project_pass(dirs))
            pand.append(pandas_pass(dirs))
        equal = same_values(dirs)
        csv_mb = sum((d / "steps.csv").stat().st_size for d in dirs) / 1e6
        pq_mb = sum((d / "s.parquet").stat().st_size for d in dirs) / 1e6
        pd_mb = sum((d / "steps.pandas.parquet").stat().st_size for d in dirs) / 1e6

    def med(rows, key):
        return statistics.median(r.get(key, 0.0) for r in rows)

    def ms(rows, key):
        return 1e3 * med(rows, key) / a.runs

    wall_ratio = statistics.median(q["wall"] / p["wall"] for p, q in zip(proj, pand))
    cpu_ratio = statistics.median(q["cpu"] / p["cpu"] for p, q in zip(proj, pand))
    other = ms(proj, "cpu") - sum(ms(proj, k) for k in PHASES)
    bound = ms(pand, "cpu") / (ms(proj, "read") + ms(proj, "parse"))
    lines = [
        "| CSV -> Parquet (steps + val per run) | seconds | per run (ms) | CPU per run (ms) |",
        "|---|---:|---:|---:|",
        f"| project (pyarrow reader, typed schema, zstd, with checks) | {med(proj, 'wall'):.2f} | "
        f"{ms(proj, 'wall'):.1f} | {ms(proj, 'cpu'):.1f} |",
        f"| pandas read_csv + to_parquet | {med(pand, 'wall'):.2f} | {ms(pand, 'wall'):.1f} | {ms(pand, 'cpu'):.1f} |",
        "",
        "| phase (median CPU ms per run) | project | pandas |",
        "|---|---:|---:|",
        f"| read file bytes | {ms(proj, 'read'):.2f} | |",
        f"| CSV parse + typed conversion | {ms(proj, 'parse'):.2f} | {ms(pand, 'read_csv'):.2f} (read_csv) |",
        f"| checks (header, final newline, nulls, unique steps) | {ms(proj, 'checks'):.2f} | |",
        f"| Parquet write | {ms(proj, 'write'):.2f} | {ms(pand, 'to_parquet'):.2f} (to_parquet) |",
        f"| report JSON | {ms(proj, 'report'):.2f} | |",
        f"| other (Python glue) | {other:.2f} | |",
        f"| total CPU | {ms(proj, 'cpu'):.2f} | {ms(pand, 'cpu'):.2f} |",
        "",
        f"speed-up vs pandas: **{wall_ratio:.2f}x** wall, {cpu_ratio:.2f}x CPU (median of {a.repeats} interleaved "
        f"passes; target >= 5x). Ceiling even with free checks and a free Parquet write: "
        f"pandas CPU / project (read + parse) CPU = {bound:.2f}x.",
        f"Parquet/CSV size: **{pq_mb / csv_mb:.3f}** ({pq_mb:.1f} MB vs {csv_mb:.1f} MB; pandas' Parquet "
        f"{pd_mb / csv_mb:.3f}); {a.runs} runs x {a.rows} step rows; project's values bit-identical to the CSV's: "
        f"{'yes' if equal else 'NO'}",
    ]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
