"""The attempt log of a run: one JSON line when an attempt starts, one when it
ends, and one for each event in between (``micro_batch``: an out-of-memory
error made the run halve its micro-batch)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

#: environment variable by which the pack launcher tells a trainer the settings digest its run is
#: planned with (:func:`loss_slope.probe.plan.run_settings_digest`); the start record keeps it
SETTINGS_ENV = "LOSS_SLOPE_SETTINGS"


def planned_settings() -> str | None:
    """The settings digest this trainer's run is planned with (None: not started by a pack)."""
    return os.environ.get(SETTINGS_ENV) or None


def read_attempts(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a kill during the write
    return out


def read_launcher(run_dir: str | Path) -> list[dict]:
    """The pack launcher's records of a run (``{run_dir}/launcher.jsonl``): ``error`` (a failed
    try: exit code, error line), ``outcome`` (how the run ended in a pack attempt) and ``retry``
    (``loss-slope retry``: the errors before it count no more)."""
    return read_attempts(Path(run_dir) / "launcher.jsonl")


def torn_last_line(path: Path) -> bool:
    """The log ends without a newline: a kill tore its last line."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # missing or empty
        return False


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` as one JSON line, fsync'ed; after a torn last line, on a line of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lead = "\n" if torn_last_line(path) else ""  # a new line, so the torn one does not swallow this record
    with open(path, "a") as fh:
        fh.write(lead + json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def start_attempt(path: str | Path, *, start_step: int, reason: str, **extra) -> int:
    """Record the start of an attempt; returns its 1-based number."""
    path = Path(path)
    n = 1 + sum(1 for r in read_attempts(path) if r.get("event") == "start")
    append_record(
        path,
        {
            "event": "start",
            "attempt": n,
            "start_step": start_step,
            "reason": reason,
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            **extra,
        },
    )
    return n


def end_attempt(path: str | Path, *, attempt: int, end_step: int, status: str, **extra) -> None:
    append_record(
        Path(path),
        {"event": "end", "attempt": attempt, "end_step": end_step, "status": status, "time": time.time(), **extra},
    )


def record_event(path: str | Path, *, attempt: int, event: str, **extra) -> None:
    if event in ("start", "end"):
        raise ValueError("use start_attempt / end_attempt")
    append_record(Path(path), {"event": event, "attempt": attempt, "time": time.time(), **extra})


def summarize_attempts(records: list[dict]) -> list[dict]:
    """Merge start/end events into one dict per attempt (an attempt killed by
    SIGKILL has no end event: its status is ``killed``); other events go to a
    list under their name (``micro_batch`` -> ``micro_batch_changes``)."""
    by = {}
    for r in records:
        a = by.setdefault(r["attempt"], {"attempt": r["attempt"], "status": "killed", "end_step": None})
        if r["event"] not in ("start", "end"):
            a.setdefault(f"{r['event']}_changes", []).append(
                {k: v for k, v in r.items() if k not in ("event", "attempt")}
            )
        elif r["event"] == "start":
            a.update({k: v for k, v in r.items() if k not in ("event", "time")}, started=r["time"])
        else:
            a.update(
                end_step=r["end_step"],
                status=r["status"],
                ended=r["time"],
                **{k: v for k, v in r.items() if k not in ("event", "time", "attempt", "end_step", "status")},
            )
    return [by[k] for k in sorted(by)]


CHECKPOINT_STATS = ("files", "written_mb", "snapshot_s", "wait_s", "write_s")


def checkpoint_summary(records: list[dict]) -> dict:
    """The checkpoint files the run wrote, over all attempts that recorded an end
    (``AtomicCheckpointIO.stats`` in each ``end`` record): the sums, and how many
    attempts ended without a record (killed: their writes are not counted)."""
    counted = [r for r in records if r.get("event") == "end" and isinstance(r.get("checkpoints"), dict)]
    started = {r["attempt"] for r in records if r.get("event") == "start"}
    out = {k: sum(float(r["checkpoints"].get(k) or 0) for r in counted) for k in CHECKPOINT_STATS}
    out["files"] = int(out["files"])
    out["attempts_not_counted"] = len(started - {r["attempt"] for r in counted})
    return out
