"""Collect a finished run's tables from the undeclared work tree into results/."""

from __future__ import annotations

import shutil
from pathlib import Path

from loss_slope.jsonio import write_json
from loss_slope.tables.schema import MONITOR_TABLES, columns
from loss_slope.train.attempts import read_attempts, summarize_attempts


def export_run(run_dir: str | Path, *, steps_csv, val_csv, run_info, attempts, monitors: dict | None = None) -> None:
    """Copy the run's CSV tables and metadata to their declared locations.

    ``monitors`` maps monitor tables (``curvature``, ``noise``, ``checkpoints``)
    to their destination CSVs. A monitor table missing from the work tree (the
    monitor was off, or the run predates it) is exported as a header-only CSV;
    validation compares the rows with the cadence in ``run_info.json``.

    Raises ``FileNotFoundError`` naming the missing file when the work tree
    is incomplete (e.g. the work folder was deleted after training).
    """
    run_dir = Path(run_dir)
    sources = {
        run_dir / "tables" / "steps.csv": Path(steps_csv),
        run_dir / "tables" / "val.csv": Path(val_csv),
        run_dir / "run_info.json": Path(run_info),
    }
    for src in sources:
        if not src.is_file():
            raise FileNotFoundError(f"export: {src} is missing from the run's work tree; rerun its training")
    for src, dst in sources.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for table, dst in (monitors or {}).items():
        if table not in MONITOR_TABLES:
            raise ValueError(f"export: {table!r} is not a monitor table; allowed: {', '.join(MONITOR_TABLES)}")
        src, dst = run_dir / "tables" / f"{table}.csv", Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_file():
            shutil.copyfile(src, dst)
        else:
            dst.write_text(",".join(columns(table)) + "\n")
    records = summarize_attempts(read_attempts(run_dir / "attempts.jsonl"))
    write_json(records, attempts, indent=2, sort_keys=True, strict=False)
