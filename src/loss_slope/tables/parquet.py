"""CSV → typed Parquet, one dataset partitioned by variant and run (hive style).

    results/parquet/{table}/variant={variant}/run={run}/part-0.parquet

so ``pyarrow.dataset.dataset("results/parquet/steps", partitioning="hive")``
(or duckdb's ``read_parquet(..., hive_partitioning=true)``) queries every run
at once. A table that cannot be parsed exactly is never written with bad
rows: its Parquet file is written empty (schema only) and the conversion
report names the file, the line and the problem, so validation marks the run
invalid instead of analysing corrupt data.

Fast path (``bench/bench_parquet.py`` times each phase): each CSV is read
from disk once; the header and the final newline are checked on those bytes,
which pyarrow's CSV reader then parses with the table's column types (no type
inference, no quoting, one block, one thread: Snakemake runs one job per
core). Unique keys are checked by one vectorised "strictly increasing" test on
the step column (the order the recorder writes), with a hash count only when
rows are out of order. Any failure goes to the slow line-by-line scan, whose
only job is to name the file, the line and the problem.

Parquet layout: zstd at its fast level -1; floating-point columns without
dictionary encoding (their values are nearly all distinct, so a dictionary is
built and then abandoned: slower *and* larger) and with BYTE_STREAM_SPLIT;
integer columns DELTA_BINARY_PACKED (``step`` is 0, 1, 2, …); string columns
with a dictionary; statistics for every column. Readable by pyarrow/pandas,
duckdb ≥ 0.10 and polars.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loss_slope.jsonio import write_json
from loss_slope.tables.schema import KEYS, TABLES

COMPRESSION = "zstd"
# zstd's fast level -1 (the library default is 1): on the study's step tables the write
# takes ~20 % less CPU for files ~1.5 % larger (bench/bench_parquet.py)
COMPRESSION_LEVEL = -1


@dataclass
class TableReport:
    table: str
    source: str
    rows: int = 0
    ok: bool = True
    errors: list[str] = field(default_factory=list)


@contextmanager
def _phase(timings: dict | None, name: str):
    """Add the CPU seconds spent in the block to ``timings[name]`` (no-op without a dict).

    CPU time of the process (every thread), which a shared machine disturbs less than wall time.
    """
    if timings is None:
        yield
        return
    t0 = time.process_time()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.process_time() - t0


def _scan_errors(path: Path, schema: pa.Schema, limit: int = 20, keys: tuple[str, ...] = ("step",)) -> list[str]:
    """Slow path: find the exact lines that break the table (for the message)."""
    errors: list[str] = []
    names = schema.names
    seen: dict[tuple, int] = {}
    key_idx = [names.index(k) for k in keys]
    with open(path, newline="", errors="replace") as fh:
        header = fh.readline()
        if header.rstrip("\r\n").split(",") != names:
            got = header.rstrip("\r\n").split(",")
            missing = [c for c in names if c not in got]
            extra = [c for c in got if c not in names]
            if missing or extra:
                errors.append(f"{path}:1: header mismatch; missing columns {missing}, unexpected {extra}")
            else:
                errors.append(f"{path}:1: header mismatch; columns out of order or repeated: {got}, expected {names}")
            return errors
        if not header.endswith("\n"):
            return [f"{path}:1: truncated line (no newline at end of file): {header[:80]!r}"]
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
                    key = tuple(
                        int(parts[i]) if pa.types.is_integer(schema.field(i).type) else parts[i] for i in key_idx
                    )
                    if key in seen:
                        what = ", ".join(f"{k} {v}" for k, v in zip(keys, key))
                        errors.append(f"{path}:{lineno}: {what} duplicates line {seen[key]}")
                    seen[key] = lineno
            if len(errors) >= limit:
                errors.append(f"{path}: … more errors not shown")
                break
    return errors


@cache
def _csv_options(table: str) -> tuple[bytes, pacsv.ParseOptions, pacsv.ConvertOptions]:
    schema = TABLES[table]
    header = ",".join(schema.names).encode()
    # CsvTable never quotes (it writes str(v)), and the slow scan splits on commas too:
    # no quote handling, so both paths read a field exactly as the recorder wrote it
    parse = pacsv.ParseOptions(newlines_in_values=False, quote_char=False)
    convert = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in schema},
        include_columns=schema.names,
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return header, parse, convert


def _header_ok(data: bytes, header: bytes) -> bool:
    """The first line is exactly the schema's column names, in order (as the recorder writes it)."""
    end = data.find(b"\n")
    first = data if end < 0 else data[:end]
    return first.rstrip(b"\r") == header


def read_table_csv(path: str | Path, table: str, timings: dict | None = None) -> tuple[pa.Table | None, TableReport]:
    """Parse one work-tree CSV strictly into the table's Arrow schema.

    ``timings``, if given, accumulates CPU seconds per phase (``read``, ``parse``,
    ``checks``) for the benchmark.
    """
    path = Path(path)
    schema = TABLES[table]
    keys = KEYS[table]
    report = TableReport(table=table, source=str(path))
    with _phase(timings, "read"):
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            data = None
    if data is None:
        report.ok, report.errors = False, [f"{path}: file not found"]
        return None, report
    header, parse_options, convert_options = _csv_options(table)
    errors: list[str] = []
    arrow = None
    with _phase(timings, "checks"):
        if not _header_ok(data, header):
            errors = _scan_errors(path, schema, keys=keys) or [f"{path}:1: header mismatch"]
        elif data and not data.endswith(b"\n"):
            errors = _scan_errors(path, schema, keys=keys) or [f"{path}: no newline at end of file"]
    if not errors:
        try:
            with _phase(timings, "parse"):
                arrow = pacsv.read_csv(
                    pa.BufferReader(data),
                    # one block (one chunk per column) and no threads: one process per core
                    read_options=pacsv.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16)),
                    parse_options=parse_options,
                    convert_options=convert_options,
                )
        except (pa.ArrowInvalid, pa.ArrowKeyError, KeyError) as exc:
            errors = _scan_errors(path, schema, keys=keys) or [f"{path}: {exc}"]
            arrow = None
        else:
            with _phase(timings, "checks"):
                if arrow.num_columns != len(schema) or any(c.null_count for c in arrow.columns):
                    errors = _scan_errors(path, schema, keys=keys) or [f"{path}: missing values"]
                elif arrow.num_rows and _has_duplicate_keys(arrow, keys):
                    errors = _scan_errors(path, schema, keys=keys) or [f"{path}: duplicate keys {list(keys)}"]
    if errors:
        report.ok, report.errors = False, errors
        return None, report
    arrow = arrow.select(schema.names).cast(schema)
    report.rows = arrow.num_rows
    return arrow, report


def _has_duplicate_keys(arrow: pa.Table, keys: tuple[str, ...]) -> bool:
    if len(keys) == 1:
        col = arrow.column(keys[0])
        if pa.types.is_integer(col.type) and col.null_count == 0:
            # strictly increasing ⇒ no repeats; checked in Arrow: to_numpy() would import pandas (~0.3 s a job)
            n = len(col)
            if n < 2 or pc.all(pc.greater(col.slice(1), col.slice(0, n - 1))).as_py():
                return False
        return pc.count_distinct(col).as_py() != arrow.num_rows
    # (not Table.group_by: Acero imports pyarrow.dataset and pandas; the keyed tables are small)
    return len(set(zip(*(arrow.column(k).to_pylist() for k in keys)))) != arrow.num_rows


@cache
def _parquet_options(schema: pa.Schema) -> dict:
    """Encodings per column kind (see the module docstring)."""
    encodings = {}
    dictionary = []
    for f in schema:
        if pa.types.is_floating(f.type):
            encodings[f.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(f.type):
            encodings[f.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_string(f.type) or pa.types.is_binary(f.type):
            dictionary.append(f.name)
    return {
        "compression": COMPRESSION,
        "compression_level": COMPRESSION_LEVEL,
        "use_dictionary": dictionary or False,
        "column_encoding": encodings or None,
        "write_statistics": True,
    }


def write_parquet(table: pa.Table | None, path: str | Path, schema: pa.Schema) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if table is None:
        table = schema.empty_table()
    # the temporary file is hidden (a leading dot): a dataset read of the hive tree skips it, so a
    # write that fails half-way never shows up as a second copy of the rows or an unreadable part
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, **_parquet_options(schema))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def convert_run(
    *,
    steps_csv,
    val_csv,
    steps_parquet,
    val_parquet,
    report_path,
    monitors: dict | None = None,
    timings: dict | None = None,
) -> dict:
    """Convert one run's tables; always writes every Parquet file and the report.

    ``monitors`` maps the monitor tables (``curvature``, ``noise``,
    ``checkpoints``) to ``(csv, parquet)`` paths. Their CSVs hold only a header
    when a monitor is off (see :func:`loss_slope.tables.export.export_run`), which
    gives an empty, schema-only Parquet file: declared outputs always exist.
    ``timings``, if given, accumulates CPU seconds per phase (``read``, ``parse``,
    ``checks``, ``write``, ``report``) over all tables.
    """
    out = {"ok": True, "tables": {}}
    jobs = [("steps", steps_csv, steps_parquet), ("val", val_csv, val_parquet)]
    for table, (src, dst) in (monitors or {}).items():
        if table not in TABLES or table in ("steps", "val"):
            raise ValueError(f"convert_run: {table!r} is not a monitor table")
        jobs.append((table, src, dst))
    for table, src, dst in jobs:
        arrow, rep = read_table_csv(src, table, timings)
        with _phase(timings, "write"):
            write_parquet(arrow, dst, TABLES[table])
        out["tables"][table] = asdict(rep)
        out["ok"] &= rep.ok
    with _phase(timings, "report"):
        write_json(out, report_path, indent=2, strict=False)
    return out
