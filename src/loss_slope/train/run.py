"""Train one run: idempotent, resumable, with exactly-once metric tables.

Work tree of a run (undeclared in Snakemake, so a failed job never deletes it)::

    {run_dir}/tables/steps.csv       one row per optimizer step
    {run_dir}/tables/val.csv         val_per_epoch rows per epoch
    {run_dir}/checkpoints/latest/latest.ckpt   once per epoch / 10 min (trainer.checkpoint)
    {run_dir}/checkpoints/best/...   top-k by loss_val_nats (weights only)
    {run_dir}/attempts.jsonl         start/end of every attempt
    {run_dir}/run_info.json          resolved config, versions, hardware
    {run_dir}/done.json              written once the last step is done

Exit codes: 0 complete (or already complete), 3 unfinished (time budget
reached; the latest checkpoint was saved, a rerun resumes), 4 locked by
another live trainer (nothing touched), 5 no CUDA in a GPU job, 1 error.

:func:`run_training` reads top to bottom; the Lightning steps it calls are in
:mod:`loss_slope.train.steps`. This module imports neither torch nor Lightning:
the simulated backend (``loss_slope.simulate.backend``) shares its work-tree
helpers, and a refused run exits before those imports (see ``run_training``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from loss_slope.jsonio import write_json
from loss_slope.train.device import NoGPUError, resolve_accelerator
from loss_slope.train.fingerprint import config_fingerprint
from loss_slope.train.lock import RunLocked, acquire

EXIT_OK, EXIT_ERROR, EXIT_UNFINISHED = 0, 1, 3
EXIT_LOCKED = 4  # another live trainer holds this run's lock (nothing was touched)
EXIT_NO_GPU = 5  # a GPU was allocated or asked for and CUDA is not available

log = logging.getLogger("loss_slope.train")


def run_training(cfg) -> int:
    """Train (or resume, or skip) the run described by the Hydra config ``cfg``; returns the exit code.

    First, before any heavy import or any write to the work tree: fail fast
    without CUDA in a GPU allocation (:mod:`loss_slope.train.device`) and take
    the run's lock (:mod:`loss_slope.train.lock`); a second trainer of the same
    run exits ``EXIT_LOCKED`` naming the holder. Then, holding the lock: open
    the work tree (a complete run is skipped), prepare the attempt, build the
    trainer, train, finish.
    """
    try:
        use_cuda = resolve_accelerator(cfg.trainer.accelerator) == "cuda"
    except NoGPUError as exc:
        log.error("%s", exc)
        return EXIT_NO_GPU
    try:
        lock = acquire(cfg.run_dir)
    except RunLocked as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    try:
        paths, fingerprint = open_work_tree(cfg)
        if paths.done.exists():
            return skip_complete(cfg, paths)
        # Deferred on purpose (start-up): torch and Lightning take seconds to import; a run refused
        # above, or already complete, never pays for them, nor does the simulated backend.
        from loss_slope.train import steps

        run = steps.prepare_run(cfg, paths, fingerprint, use_cuda=use_cuda)
        parts = steps.build_trainer(cfg, run)
        ending = steps.train(run, parts)
        return steps.finish(cfg, run, parts, ending)
    finally:
        lock.release()


class RunPaths:
    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        self.tables = self.root / "tables"
        self.latest_dir = self.root / "checkpoints" / "latest"
        self.latest = self.latest_dir / "latest.ckpt"
        self.best_dir = self.root / "checkpoints" / "best"
        self.attempts = self.root / "attempts.jsonl"
        self.run_info = self.root / "run_info.json"
        self.done = self.root / "done.json"


def open_work_tree(cfg) -> tuple[RunPaths, str]:
    """The run's work tree and fingerprint. Invariant: afterwards the tree at ``run_dir`` is absent or
    was trained with this fingerprint; one trained with another config was renamed aside, never reused."""
    paths = RunPaths(cfg.run_dir)
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    if set_aside_if_stale(paths, fingerprint):
        paths = RunPaths(cfg.run_dir)
    return paths, fingerprint


def skip_complete(cfg, paths: RunPaths) -> int:
    """A run with ``done.json`` is complete: nothing is trained or rewritten but the Snakemake output."""
    done = json.loads(paths.done.read_text())
    log.info("run already complete (%d steps): nothing to train", done["total_steps"])
    write_output(cfg, paths, done)
    return EXIT_OK


def compile_options(c) -> dict | None:
    """``trainer.compile`` -> keyword arguments of ``torch.compile`` (None: off)."""
    if not c or not c.get("enabled"):
        return None
    return {k: c[k] for k in ("backend", "mode", "dynamic") if c.get(k) is not None}


def micro_batch_summary(records: list[dict], batch: int) -> dict:
    """Every out-of-memory fallback of the run (over all attempts): the batch,
    the micro-batch it ended with, and each reduction (step, from, to)."""
    changes = [
        {k: r[k] for k in ("attempt", "step", "from", "to", "accumulation") if k in r}
        for r in records
        if r.get("event") == "micro_batch"
    ]
    return {"batch": batch, "final": changes[-1]["to"] if changes else batch, "changes": changes}


def write_state_json(path: str | Path, obj: dict) -> None:
    """Training state files (``run_info.json``, ``done.json``, ...): as given, keys sorted."""
    write_json(obj, path, indent=2, sort_keys=True, strict=False, default=str)


def set_aside_if_stale(paths: RunPaths, fingerprint: str) -> bool:
    """A work tree trained with a different config is renamed, never reused or deleted."""
    if not paths.run_info.exists():
        return False
    try:
        old = json.loads(paths.run_info.read_text()).get("fingerprint")
    except json.JSONDecodeError:
        old = None
    if old == fingerprint:
        return False
    aside = paths.root.with_name(f"{paths.root.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}")
    log.warning(
        "the config of this run changed (fingerprint %s -> %s): moving the old work tree to %s and "
        "training from scratch",
        old,
        fingerprint,
        aside,
    )
    paths.root.rename(aside)
    return True


def write_output(cfg, paths: RunPaths, done: dict) -> None:
    """The Snakemake output of a complete run (when the launcher asked for one): ``done.json`` plus where and how."""
    if cfg.output:
        write_state_json(cfg.output, {**done, "run_dir": str(paths.root), "status": "complete"})
