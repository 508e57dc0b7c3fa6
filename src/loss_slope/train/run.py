"""Train one run: idempotent, resumable, with exactly-once metric tables.

Exit codes: :mod:`loss_slope.train.exit_codes`. The work tree, its paths and state files:
:mod:`loss_slope.train.work_tree` (shared with the simulated backend).

:func:`run_training` reads top to bottom; the Lightning steps it calls are in
:mod:`loss_slope.train.steps`. This module imports neither torch nor Lightning at
start-up, so that a refused run, or one already complete, exits without paying for them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from omegaconf import OmegaConf

from loss_slope.train.attempts import end_attempt
from loss_slope.train.device import NoGPUError, resolve_accelerator
from loss_slope.train.exit_codes import EXIT_LOCKED, EXIT_NO_GPU
from loss_slope.train.fingerprint import config_fingerprint
from loss_slope.train.lock import RunLocked, acquire
from loss_slope.train.work_tree import open_work_tree, skip_complete

log = logging.getLogger("loss_slope.train")


def stop_on_lost_lock(path) -> None:
    """Another trainer took this run's lock over (it judged this one dead) and now writes the run:
    any further write of this process could interleave with the new holder's, so the process ends
    at once, flushing and checkpointing nothing, with ``EXIT_LOCKED`` (a pack waits for the holder
    and does not count it as an error). Called from the lock's heartbeat thread."""
    log.error("run lock %s taken over by another trainer: exiting without writing anything more", path)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_LOCKED)


def holding_run_lock(run_dir, body: Callable[[], int]) -> int:
    """``body()``'s exit code, run while holding the run's lock (:mod:`loss_slope.train.lock`).

    A second writer of the run exits ``EXIT_LOCKED`` naming the holder, touching nothing; a
    holder whose lock is taken over later exits at once (:func:`stop_on_lost_lock`). Used by
    the trainer and the simulated backend alike."""
    try:
        lock = acquire(run_dir, on_lost=stop_on_lost_lock)
    except RunLocked as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    try:
        return body()
    finally:
        lock.release()


def run_training(cfg) -> int:
    """Train (or resume, or skip) the run described by the Hydra config ``cfg``; returns the exit code.

    First, before any heavy import or any write to the work tree: fail fast
    without CUDA in a GPU allocation (:mod:`loss_slope.train.device`) and take
    the run's lock (:func:`holding_run_lock`). Then, holding the lock: open the
    work tree (a complete run is skipped), prepare the attempt, build the
    trainer, train, finish.
    """
    try:
        use_cuda = resolve_accelerator(cfg.trainer.accelerator) == "cuda"
    except NoGPUError as exc:
        log.error("%s", exc)
        return EXIT_NO_GPU
    return holding_run_lock(cfg.run_dir, lambda: _train(cfg, use_cuda=use_cuda))


def _train(cfg, *, use_cuda: bool) -> int:
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    paths = open_work_tree(cfg.run_dir, fingerprint)
    if paths.done.exists():
        return skip_complete(cfg, paths, action="train")
    # Deferred on purpose (start-up): torch and Lightning take seconds to import; a run refused
    # above, or already complete, never pays for them.
    from loss_slope.train import steps

    run = steps.prepare_run(cfg, paths, fingerprint, use_cuda=use_cuda)
    try:
        parts = steps.build_trainer(cfg, run)
    except BaseException as exc:  # the attempt has started: it ends failed, not "killed" without a record
        end_attempt(
            run.paths.attempts,
            attempt=run.attempt,
            end_step=run.start,
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
        )
        raise
    ending = steps.train(run, parts)
    return steps.finish(cfg, run, parts, ending)
