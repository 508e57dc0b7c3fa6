"""A run's work tree: its paths, its identity check and its state files.

Shared by the Lightning trainer (:mod:`loss_slope.train.run`, :mod:`loss_slope.train.steps`)
and the simulated backend (:mod:`loss_slope.simulate.backend`), which write the same tree.
Imports neither torch nor Lightning.

Work tree of a run (undeclared in Snakemake, so a failed job never deletes it)::

    {run_dir}/tables/steps.csv       one row per optimizer step
    {run_dir}/tables/val.csv         val_per_epoch rows per epoch
    {run_dir}/checkpoints/latest/latest.ckpt   once per epoch / 10 min (trainer.checkpoint)
    {run_dir}/checkpoints/best/...   top-k by loss_val_nats (weights only)
    {run_dir}/attempts.jsonl         start/end of every attempt
    {run_dir}/run_info.json          resolved config, versions, hardware
    {run_dir}/done.json              written once the last step is done
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from loss_slope.jsonio import write_json
from loss_slope.tables.csvlog import truncate_table
from loss_slope.tables.schema import TABLES
from loss_slope.train.exit_codes import EXIT_OK

__all__ = [
    "RunPaths",
    "open_work_tree",
    "skip_complete",
    "set_aside_if_stale",
    "cut_tables_to",
    "write_state_json",
    "write_output",
]

log = logging.getLogger("loss_slope.train")


class RunPaths:
    """The files of one run's work tree (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        self.tables = self.root / "tables"
        self.latest_dir = self.root / "checkpoints" / "latest"
        self.latest = self.latest_dir / "latest.ckpt"
        self.best_dir = self.root / "checkpoints" / "best"
        self.attempts = self.root / "attempts.jsonl"
        self.run_info = self.root / "run_info.json"
        self.done = self.root / "done.json"


def open_work_tree(run_dir: str | Path, fingerprint: str) -> RunPaths:
    """The run's work tree. Invariant: afterwards the tree at ``run_dir`` is absent or was trained
    with ``fingerprint``; one trained with another config was renamed aside, never reused."""
    paths = RunPaths(run_dir)
    if set_aside_if_stale(paths, fingerprint):
        paths = RunPaths(run_dir)
    return paths


def skip_complete(cfg, paths: RunPaths, *, action: str) -> int:
    """A run with ``done.json`` is complete: nothing is ``action``-ed or rewritten but the Snakemake output."""
    done = json.loads(paths.done.read_text())
    log.info("run already complete (%d steps): nothing to %s", done["total_steps"], action)
    write_output(cfg, paths, done)
    return EXIT_OK


def cut_tables_to(paths: RunPaths, start: int) -> None:
    """Cut every table back to the rows the resume point covers (``start``: the first step to redo).

    Invariant (exactly once): after a resume from step ``start``, the rows a killed attempt
    wrote after its checkpoint are gone, so they are written again once.
    """
    for table in TABLES:
        kept, dropped = truncate_table(paths.tables / f"{table}.csv", table, start)
        if dropped:
            log.info("truncated %s.csv to the checkpoint: kept %d rows, dropped %d", table, kept, dropped)


def write_state_json(path: str | Path, obj: dict) -> None:
    """Training state files (``run_info.json``, ``done.json``, ...): as given, keys sorted, fsync'ed
    before the rename (a few per run): after a crash of the node the file is whole, not empty."""
    write_json(obj, path, indent=2, sort_keys=True, strict=False, default=str, durable=True)


def set_aside_if_stale(paths: RunPaths, fingerprint: str) -> bool:
    """A work tree trained with a different config is renamed, never reused or deleted."""
    if not paths.run_info.exists():
        return False
    try:
        old = json.loads(paths.run_info.read_text()).get("fingerprint")
        why = f"the config of this run changed (fingerprint {old} -> {fingerprint})"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        old, why = None, f"its run_info.json is unreadable ({exc}), so what it trained is unknown"
    if old == fingerprint:
        return False
    aside = paths.root.with_name(f"{paths.root.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}")
    log.warning("%s: moving the old work tree to %s and training from scratch", why, aside)
    paths.root.rename(aside)
    return True


def write_output(cfg, paths: RunPaths, done: dict) -> None:
    """The Snakemake output of a complete run (when the launcher asked for one): ``done.json`` plus where and how."""
    if cfg.output:
        write_state_json(cfg.output, {**done, "run_dir": str(paths.root), "status": "complete"})
