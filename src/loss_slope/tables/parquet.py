"""CSV → typed Parquet, one dataset partitioned by variant and run (hive style).

    results/parquet/{table}/variant={variant}/run={run}/part-0.parquet

so ``pyarrow.dataset.dataset("results/parquet/steps", partitioning="hive")``
(or duckdb's ``read_parquet(..., hive_partitioning=true)``) queries every run
at once. A table that cannot be parsed exactly is never written with bad
rows: its Parquet file is written empty (schema only) and the conversion
report names the file, the line and the problem, so validation marks the run
invalid instead of analysing corrupt data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loss_slope.tables.schema import KEYS, TABLES

COMPRESSION = "zstd"


@dataclass
class TableReport:
    table: str
    source: str
    rows: int = 0
    ok: bool = True
    errors: list[str] = field(default_factory=list)


def _scan_errors(path: Path, schema: pa.Schema, limit: int = 20, keys: tuple[str, ...] = ("step",)) -> list[str]:
    """Slow path: find the exact lines that break the table (for the message)."""
    errors: list[str] = []
    names = schema.names
    seen: dict[tuple, int] = {}
    key_idx = [names.index(k) for k in keys]
    with open(path, newline="") as fh:
        header = fh.readline()
        if header.rstrip("\r\n").split(",") != names:
            got = header.rstrip("\r\n").split(",")
            missing = [c for c in names if c not in got]
            extra = [c for c in got if c not in names]
            errors.append(f"{path}:1: header mismatch; missing columns {missing}, unexpected {extra}")
            return errors
        for lineno, line in enumerate(fh, start=2):
            if not line.endswith("\n"):
                errors.append(f"{path}:{lineno}: truncated line (no newline at end of file): {line[:80]!r}")
                break
            parts = line.rstrip("\r\n").split(",")
            if len(parts) != len(names):
                errors.append(f"{path}:{lineno}: expected {len(names)} fields, got {len(parts)}: {line.strip()[:80]!r}")
            else:
                bad = False
                for name, f, value in zip(names, schema, parts):
                    if pa.types.is_string(f.type):
                        continue
                    try:
                        if pa.types.is_boolean(f.type):
                            if value not in ("0", "1", "True", "False", "true", "false", "TRUE", "FALSE"):
                                raise ValueError(value)
                        else:
                            int(value) if pa.types.is_integer(f.type) else float(value)
                    except ValueError:
                        errors.append(f"{path}:{lineno}: column {name!r}: {value!r} is not a {f.type}")
                        bad = True
                        break
                if not bad:
                    key = tuple(int(parts[i]) if pa.types.is_integer(schema.field(i).type) else parts[i]
                                for i in key_idx)
                    if key in seen:
                        what = ", ".join(f"{k} {v}" for k, v in zip(keys, key))
                        errors.append(f"{path}:{lineno}: {what} duplicates line {seen[key]}")
                    seen[key] = lineno
            if len(errors) >= limit:
                errors.append(f"{path}: … more errors not shown")
                break
    return errors


def read_table_csv(path: str | Path, table: str) -> tuple[pa.Table | None, TableReport]:
    """Parse one work-tree CSV strictly into the table's Arrow schema."""
    path = Path(path)
    schema = TABLES[table]
    keys = KEYS[table]
    report = TableReport(table=table, source=str(path))
    if not path.is_file():
        report.ok, report.errors = False, [f"{path}: file not found"]
        return None, report
    try:
        arrow = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),  # one process per core
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={f.name: f.type for f in schema}, include_columns=schema.names,
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
        errors = []
        if arrow.num_columns != len(schema) or any(c.null_count for c in arrow.columns):
            errors = _scan_errors(path, schema, keys=keys) or [f"{path}: missing values"]
        elif not path.read_bytes().endswith(b"\n") and path.stat().st_size:
            errors = _scan_errors(path, schema, keys=keys)
        elif arrow.num_rows and _has_duplicate_keys(arrow, keys):
            errors = _scan_errors(path, schema, keys=keys)
    except (pa.ArrowInvalid, pa.ArrowKeyError, KeyError) as exc:
        errors = _scan_errors(path, schema, keys=keys) or [f"{path}: {exc}"]
        arrow = None
    if errors:
        report.ok, report.errors = False, errors
        return None, report
    arrow = arrow.select(schema.names).cast(schema)
    report.rows = arrow.num_rows
    return arrow, report


def _has_duplicate_keys(arrow: pa.Table, keys: tuple[str, ...]) -> bool:
    if len(keys) == 1:
        return pc.count_distinct(arrow.column(keys[0])).as_py() != arrow.num_rows
    return arrow.group_by(list(keys)).aggregate([]).num_rows != arrow.num_rows


def write_parquet(table: pa.Table | None, path: str | Path, schema: pa.Schema) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if table is None:
        table = schema.empty_table()
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression=COMPRESSION, write_statistics=True)
    tmp.replace(path)


def convert_run(*, steps_csv, val_csv, steps_parquet, val_parquet, report_path, monitors: dict | None = None) -> dict:
    """Convert one run's tables; always writes every Parquet file and the report.

    ``monitors`` maps the monitor tables (``curvature``, ``noise``,
    ``checkpoints``) to ``(csv, parquet)`` paths. Their CSVs hold only a header
    when a monitor is off (see :func:`loss_slope.tables.export.export_run`), which
    gives an empty, schema-only Parquet file: declared outputs always exist.
    """
    out = {"ok": True, "tables": {}}
    jobs = [("steps", steps_csv, steps_parquet), ("val", val_csv, val_parquet)]
    for table, (src, dst) in (monitors or {}).items():
        if table not in TABLES or table in ("steps", "val"):
            raise ValueError(f"convert_run: {table!r} is not a monitor table")
        jobs.append((table, src, dst))
    for table, src, dst in jobs:
        arrow, rep = read_table_csv(src, table)
        write_parquet(arrow, dst, TABLES[table])
        out["tables"][table] = asdict(rep)
        out["ok"] &= rep.ok
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(json.dumps(out, indent=2) + "\n")
    return out
