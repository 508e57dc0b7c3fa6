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
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_UNFINISHED = 0, 1, 3
EXIT_LOCKED = 4  # another live trainer holds this run's lock (nothing was touched)
EXIT_NO_GPU = 5  # a GPU was allocated or asked for and CUDA is not available

log = logging.getLogger("loss_slope.train")


def _write_json(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def environment_info(device) -> dict:
    import hydra
    import numpy
    import pytorch_lightning
    import torch

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "hydra": hydra.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


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


def run_training(cfg) -> int:
    """Train (or resume, or skip) the run described by the Hydra config ``cfg``.

    First, before any heavy import or any write to the work tree: fail fast
    without CUDA in a GPU allocation (:mod:`loss_slope.train.device`) and take
    the run's lock (:mod:`loss_slope.train.lock`); a second trainer of the same
    run exits ``EXIT_LOCKED`` naming the holder.
    """
    from loss_slope.train.device import NoGPUError, resolve_accelerator
    from loss_slope.train.lock import RunLocked, acquire

    try:
        resolve_accelerator(cfg.trainer.accelerator)
    except NoGPUError as exc:
        log.error("%s", exc)
        return EXIT_NO_GPU
    try:
        lock = acquire(cfg.run_dir)
    except RunLocked as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    try:
        return _run_training_locked(cfg)
    finally:
        lock.release()


def _run_training_locked(cfg) -> int:
    import hydra.utils
    import pytorch_lightning as pl
    import torch
    from lightning_fabric.plugins.environments import LightningEnvironment
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from loss_slope.data.datasets import build_data
    from loss_slope.tables.csvlog import truncate_table
    from loss_slope.train.attempts import end_attempt, read_attempts, record_event, start_attempt, summarize_attempts
    from loss_slope.train.checkpoint_io import AtomicCheckpointIO, checkpoint_step
    from loss_slope.train.divergence import DivergenceGuard
    from loss_slope.train.faults import fault_callbacks, oom_injector
    from loss_slope.train.fingerprint import config_fingerprint
    from loss_slope.train.interrupt import CheckpointOnInterrupt
    from loss_slope.train.latest import LatestCheckpoint
    from loss_slope.train.module import CurveModule, MicroBatcher
    from loss_slope.train.monitor_callback import build_monitor_callback
    from loss_slope.train.recorder import MetricRecorder
    from loss_slope.train.schedule import schedule_from_config

    paths = RunPaths(cfg.run_dir)
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    if _set_aside_if_stale(paths, fingerprint):
        paths = RunPaths(cfg.run_dir)
    if paths.done.exists():
        done = json.loads(paths.done.read_text())
        log.info("run already complete (%d steps): nothing to train", done["total_steps"])
        _write_output(cfg, paths, done)
        return EXIT_OK

    torch.set_num_threads(int(cfg.trainer.threads))
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)
    from loss_slope.train.device import resolve_accelerator

    use_cuda = resolve_accelerator(cfg.trainer.accelerator) == "cuda"  # gpu = cuda; checked above
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")

    data = build_data(cfg.data, seed=int(cfg.seed), device=device)
    spe = data.steps_per_epoch
    epochs = int(cfg.trainer.epochs)
    total = spe * epochs
    val_per_epoch = int(cfg.trainer.val_per_epoch)
    val_interval = spe // val_per_epoch
    if val_interval < 1:
        raise ValueError(f"trainer.val_per_epoch={val_per_epoch} exceeds the {spe} steps of an epoch")
    schedule = schedule_from_config(cfg.schedule, steps_per_epoch=spe, epochs=epochs)

    # ---- resume bookkeeping ---------------------------------------------
    if paths.latest.exists():
        start = checkpoint_step(paths.latest)
        reason, ckpt_path = "resume", str(paths.latest)
        log.info("resuming from %s at step %d", paths.latest, start)
    else:
        start, reason, ckpt_path = 0, "fresh", None
        if paths.attempts.exists():
            log.info("no checkpoint yet: earlier attempts died before the first one; starting from step 0")
        else:
            log.info("no checkpoint: starting a fresh run")
    for table in ("steps", "val", "curvature", "noise", "checkpoints"):
        kept, dropped = truncate_table(paths.tables / f"{table}.csv", table, start)
        if dropped:
            log.info("truncated %s.csv to the checkpoint: kept %d rows, dropped %d", table, kept, dropped)
    attempt = start_attempt(
        paths.attempts,
        start_step=start,
        reason=reason,
        device=str(device),
        snakemake_attempt=os.environ.get("LOSS_SLOPE_ATTEMPT"),
    )
    # curvature / noise / checkpoint-size tables (trainer.monitors; settings recorded in run_info)
    monitor_cb = build_monitor_callback(
        cfg, data, tables_dir=paths.tables, checkpoint_dirs={"latest": paths.latest_dir, "best": paths.best_dir}
    )

    info = {
        "variant": cfg.variant,
        "run": cfg.run,
        "seed": int(cfg.seed),
        "fingerprint": fingerprint,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "total_steps": total,
        "val_per_epoch": val_per_epoch,
        "val_interval": val_interval,
        "schedule": {
            "kind": schedule.kind,
            "warmup_steps": schedule.warmup_steps,
            "total_steps": schedule.total_steps,
            "min_lr_ratio": schedule.min_lr_ratio,
        },
        "lr": float(cfg.optimizer.lr),
        "weight_decay": float(cfg.optimizer.weight_decay),
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1].lower(),
        "n_train": len(data.train.images),
        "n_val": len(data.val.images),
        "batch_size": int(cfg.data.batch_size),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": environment_info(device),
        "monitors": monitor_cb.settings,
    }
    _write_json(paths.run_info, info)

    # channels_last (CUDA only) is applied by CurveModule once the net is on its device
    net = hydra.utils.instantiate(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    oom = cfg.trainer.get("oom") or {}
    micro = MicroBatcher(
        min_size=int(oom.get("min_micro_batch") or 1),
        on_change=lambda change: record_event(
            paths.attempts, attempt=attempt, event="micro_batch", batch=int(cfg.data.batch_size), **change
        ),
    )
    module = CurveModule(
        net,
        hydra.utils.instantiate(cfg.optimizer),
        schedule,
        channels_last=bool(cfg.trainer.channels_last),
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        micro_batcher=micro,
        fault=oom_injector(cfg),
        compile=compile_options(cfg.trainer.get("compile")),
    )
    recorder = MetricRecorder(
        tables_dir=paths.tables,
        steps_per_epoch=spe,
        total_steps=total,
        val_interval=val_interval,
        flush_every=int(cfg.trainer.flush_every_steps),
        log_every=cfg.trainer.log_every_steps,
        guard=DivergenceGuard(
            max_loss_factor=cfg.trainer.divergence.max_loss_factor,
            reference_steps=int(cfg.trainer.divergence.reference_steps),
        ),
    )
    best = ModelCheckpoint(
        dirpath=paths.best_dir,
        filename="best-{step}",
        monitor="loss_val_nats",
        mode="min",
        save_top_k=int(cfg.trainer.best_top_k),
        save_on_train_epoch_end=False,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_weights_only=True,
    )
    ckpt_cfg = cfg.trainer.get("checkpoint") or {}
    latest = LatestCheckpoint(
        paths.latest,
        steps_per_epoch=spe,
        val_interval=val_interval,
        every_epochs=ckpt_cfg.get("latest_every_epochs", 1),
        every_minutes=ckpt_cfg.get("latest_every_minutes", 10.0),
    )
    checkpoint_io = AtomicCheckpointIO(background=bool(ckpt_cfg.get("background_write", True)))
    on_interrupt = CheckpointOnInterrupt(paths.latest)
    max_time = cfg.trainer.max_time_s
    trainer = pl.Trainer(
        accelerator="gpu" if use_cuda else "cpu",
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=epochs,
        max_steps=total,
        logger=False,
        val_check_interval=val_interval,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        callbacks=[
            recorder,
            monitor_cb,
            on_interrupt,
            *fault_callbacks(cfg, paths.root),
            best,
            latest,
        ],  # LightningEnvironment: one process per run even inside a SLURM job; no
        # Lightning auto-requeue (Snakemake's retries own rescheduling)
        plugins=[checkpoint_io, LightningEnvironment()],
        # (gradient clipping: CurveModule, which optimizes manually for the OOM fallback)
        max_time={"seconds": float(max_time)} if max_time else None,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        default_root_dir=str(paths.root),
    )
    data.train.step_source = lambda: trainer.global_step
    # trainer.max_time_s is this attempt's budget (its pack job's runtime minus a
    # margin): Lightning's Timer would restore the elapsed time of earlier
    # attempts from the checkpoint and stop a resumed run at once
    from pytorch_lightning.callbacks import Timer

    for cb in trainer.callbacks:
        if isinstance(cb, Timer):
            cb.load_state_dict = lambda state_dict: None

    t0 = time.time()
    # Our loader derives its position from trainer.global_step, so a mid-epoch
    # resume is exact even though it has no state_dict of its own.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    try:
        trainer.fit(
            module, train_dataloaders=data.train, val_dataloaders=data.val, ckpt_path=ckpt_path, weights_only=True
        )
    except SIGTERMException:
        recorder.close()
        end_attempt(
            paths.attempts,
            attempt=attempt,
            end_step=trainer.global_step,
            status="preempted",
            checkpoint_step=on_interrupt.saved_step,
            seconds=time.time() - t0,
        )
        log.warning("SIGTERM at step %d of %d: checkpoint saved; a rerun resumes it", trainer.global_step, total)
        return EXIT_UNFINISHED
    except BaseException as exc:
        recorder.close()
        end_attempt(
            paths.attempts,
            attempt=attempt,
            end_step=trainer.global_step,
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
        )
        raise
    recorder.close()
    step = trainer.global_step
    log.info(
        "checkpoints this attempt: %d files, %.1f MB written; %.2f s copying to host memory, %.2f s waiting "
        "for a previous write",
        checkpoint_io.saves,
        checkpoint_io.bytes_written / 1e6,
        checkpoint_io.snapshot_seconds,
        checkpoint_io.wait_seconds,
    )
    outcome = {
        "status": "complete",
        "steps_done": step,
        "micro_batch": micro_batch_summary(read_attempts(paths.attempts), int(cfg.data.batch_size)),
    }
    if recorder.diverged is not None:
        outcome = {
            **outcome,
            "status": "diverged",
            "diverged_at_step": recorder.diverged[0],
            "reason": recorder.diverged[1],
        }
    elif step < total:
        end_attempt(paths.attempts, attempt=attempt, end_step=step, status="unfinished", seconds=time.time() - t0)
        log.warning("stopped at step %d of %d (time budget); the latest checkpoint resumes it", step, total)
        return EXIT_UNFINISHED
    end_attempt(
        paths.attempts,
        attempt=attempt,
        end_step=step,
        status="completed" if outcome["status"] == "complete" else outcome["status"],
        seconds=time.time() - t0,
    )
    # the outcome travels with run_info.json (exported), so validation and the fits see it
    _write_json(paths.run_info, {**json.loads(paths.run_info.read_text()), "outcome": outcome})
    done = {
        **outcome,
        "variant": cfg.variant,
        "run": cfg.run,
        "total_steps": total,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "fingerprint": fingerprint,
        "completed_at": time.time(),
        "attempts": summarize_attempts(read_attempts(paths.attempts)),
    }
    _write_json(paths.done, done)
    log.info("run %s: %d of %d steps in %d attempt(s)", outcome["status"], step, total, attempt)
    _write_output(cfg, paths, done)
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


def _set_aside_if_stale(paths: RunPaths, fingerprint: str) -> bool:
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


def _write_output(cfg, paths: RunPaths, done: dict) -> None:
    if cfg.output:
        _write_json(cfg.output, {**done, "run_dir": str(paths.root), "status": "complete"})
