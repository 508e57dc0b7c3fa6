"""Checkpoint bytes written per run, for the study's model: the ``latest`` cadence of before (a
``latest`` file after every validation) against now (once per epoch), measured.

For S-core (SGD) and S-adamw (AdamW) at the study's width (ResNet-18, base width 64) this trains
real runs (``python -m loss_slope.train``, CPU) of ``--epochs`` epochs on CIFAR-10-shaped
synthetic data with 4 validations per epoch, the study's monitors and both cadences, and reads
what each run wrote: the outcome's ``checkpoints`` record (files and MB over its attempts) and
``tables/checkpoints.csv`` (one row per file, its size on disk). File sizes depend on the model,
the optimizer and the monitors' state, not on the data or the device, so the small runs measure
the study's files; the per-run totals of a study run (50 epochs, 200 validations) follow from the
measured mean sizes and the cadence (run 2 epochs or more: the noise event every 2 epochs makes
every second ``latest`` file smaller, and a 1-epoch run sees only the larger one):

* ``latest``: before 200 files, now 50 (one per epoch; stop checkpoints come on top);
* ``best``: weights only, one on each validation that enters the top 3: between 35 % of the
  validations (the demo's share) and all 200.

    python bench/bench_checkpoints.py [--epochs 2] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check import csv_rows, write_synthetic_cifar10  # bench/ is the script's folder, on sys.path

VARIANTS = {"S-core": "s_core", "S-adamw": "s_adamw"}
CADENCES = {
    # a time criterion so small that a latest checkpoint is due at every validation
    "before: latest after every validation": ["trainer.checkpoint.latest_every_minutes=1e-9"],
    "now: latest once per epoch": [],
}
STUDY_EPOCHS, STUDY_VALIDATIONS = 50, 200
BEST_SHARE = (0.35, 1.0)


def train(run_dir: Path, root: Path, experiment: str, epochs: int, extra: list[str]) -> dict:
    """One real run; what it wrote: the outcome's record, and per kind the files and their mean size."""
    cmd = [
        sys.executable,
        "-m",
        "loss_slope.train",
        f"experiment={experiment}",
        "data=cifar10",
        f"data.root={root}",
        "data.batch_size=16",
        "trainer.accelerator=cpu",
        f"trainer.epochs={epochs}",
        f"schedule.warmup_epochs={epochs / 10}",
        f"run_dir={run_dir}",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    info = json.loads((run_dir / "run_info.json").read_text())
    by_kind = {}
    for r in csv_rows(run_dir / "tables" / "checkpoints.csv"):
        by_kind.setdefault(r["kind"], []).append(float(r["checkpoint_size_mb"]))
    return {
        "seconds": time.perf_counter() - t0,
        "record": info["outcome"]["checkpoints"],
        "validations": int(info["val_per_epoch"]) * epochs,
        "files": {k: len(v) for k, v in by_kind.items()},
        # the mean, not the largest: a file's size follows the monitors' state (the noise event every
        # 2 epochs leaves one parameter-sized buffer fewer in the files written after it)
        "size_mb": {k: sum(v) / len(v) for k, v in by_kind.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--base-width", type=int, default=None, help="default: the experiments' (the study's 64)")
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    width = [f"model.base_width={a.base_width}"] if a.base_width else []
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        root = write_synthetic_cifar10(Path(tmp) / "data", n_train=128, n_val=64)
        for label, experiment in VARIANTS.items():
            for cadence, extra in CADENCES.items():
                run_dir = Path(tmp) / experiment / str(len(results))
                results[(label, cadence)] = r = train(run_dir, root, experiment, a.epochs, [*extra, *width])
                print(
                    f"{label}, {cadence}: {r['record']['files']} files, {r['record']['written_mb']:.1f} MB",
                    file=sys.stderr,
                )

    lines = [
        f"Real runs of {a.epochs} epochs (CPU, ResNet-18 at base width {a.base_width or 64}, batch 16, 8 steps and "
        "4 validations per "
        "epoch, the study's monitors); the record is the run's `outcome.checkpoints` (the runs table's "
        "`checkpoint_files`, `checkpoint_written_mb`), the sizes are `tables/checkpoints.csv`'s.",
        "",
        f"| variant | cadence | files written ({a.epochs} epochs) | MB written | `latest` files | `latest` MB, mean | "
        "`best` MB, mean |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (label, cadence), r in results.items():
        lines.append(
            f"| {label} | {cadence} | {r['record']['files']} | {r['record']['written_mb']:.1f} | "
            f"{r['files'].get('latest', 0)} | {r['size_mb'].get('latest', 0):.1f} | {r['size_mb'].get('best', 0):.1f} |"
        )
    lo, hi = (int(round(s * STUDY_VALIDATIONS)) for s in BEST_SHARE)
    lines += [
        "",
        f"Per study run ({STUDY_EPOCHS} epochs, {STUDY_VALIDATIONS} validations), from the measured mean sizes "
        "(each cadence's own files): `latest` "
        f"{STUDY_VALIDATIONS} files before, {STUDY_EPOCHS} now; `best` (weights only) {lo}–{hi} files. Both totals "
        "count the `best` files as they are now (weights only); before, they also held the optimizer state.",
        "",
        "| variant | `latest` before | `latest` now | `best` | total before | total now |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in VARIANTS:
        now = results[(label, "now: latest once per epoch")]["size_mb"]
        then = results[(label, "before: latest after every validation")]["size_mb"]
        best = now.get("best", 0.0)
        b_lo, b_hi = best * lo / 1e3, best * hi / 1e3
        before, after = then["latest"] * STUDY_VALIDATIONS / 1e3, now["latest"] * STUDY_EPOCHS / 1e3
        lines.append(
            f"| {label} | {before:.1f} GB | {after:.1f} GB | {b_lo:.1f}–{b_hi:.1f} GB | "
            f"{before + b_lo:.1f}–{before + b_hi:.1f} GB | **{after + b_lo:.1f}–{after + b_hi:.1f} GB** |"
        )
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
