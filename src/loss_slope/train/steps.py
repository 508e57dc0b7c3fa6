"""The Lightning steps of one run, in the order :func:`loss_slope.train.run.run_training` calls them.

=================  ==============================================================================
``prepare_run``    seed, device, data (the run's length), resume point, tables cut back to it,
                   this attempt's start record
``build_trainer``  ``run_info.json``; module, callbacks, checkpoint plugin, ``pl.Trainer``
``train``          ``trainer.fit`` from the resume point; the step recorder closed however it ends
``finish``         the attempt's end record, the outcome, ``done.json``; the exit code
=================  ==============================================================================

Each step is called once, with the run's lock held. Nothing here runs for a
refused or already complete run: ``run.py`` imports this module only after
those checks, because torch and Lightning take seconds to import.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass

import hydra
import hydra.utils
import numpy
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import LightningEnvironment
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities.exceptions import SIGTERMException

from loss_slope.data.datasets import DataBundle, build_data
from loss_slope.train import val_schedule
from loss_slope.train.attempts import (
    checkpoint_summary,
    end_attempt,
    planned_settings,
    read_attempts,
    record_event,
    start_attempt,
    summarize_attempts,
)
from loss_slope.train.best import BestCheckpoint
from loss_slope.train.checkpoint_io import AtomicCheckpointIO, checkpoint_step
from loss_slope.train.divergence import DivergenceGuard
from loss_slope.train.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_UNFINISHED
from loss_slope.train.faults import fault_callbacks, oom_injector
from loss_slope.train.interrupt import CheckpointOnInterrupt, sigint_as_sigterm
from loss_slope.train.latest import LatestCheckpoint
from loss_slope.train.latest_cadence import LatestSettings, cadence_by_attempt
from loss_slope.train.module import CurveModule, MicroBatcher, MicroBatchTooSmall
from loss_slope.train.monitor_callback import build_monitor_callback
from loss_slope.train.recorder import MetricRecorder
from loss_slope.train.schedule import Schedule, schedule_from_config
from loss_slope.train.work_tree import RunPaths, cut_tables_to, write_output, write_state_json

log = logging.getLogger("loss_slope.train")


def compile_options(c) -> dict | None:
    """``trainer.compile`` -> keyword arguments of ``torch.compile`` (None: off)."""
    if not c or not c.get("enabled"):
        return None
    return {k: c[k] for k in ("backend", "mode", "dynamic") if c.get(k) is not None}


def micro_batch_summary(records: list[dict], batch: int) -> dict:
    """The out-of-memory fallbacks of the run's recorded steps (over all attempts): the batch,
    the micro-batch it ended with, and each reduction (step, from, to).

    A reduction at step ``s`` of an attempt that a later attempt resumed from a checkpoint
    at or before ``s`` (``start_step <= s``) is undone: that attempt restored the micro-batch
    of its checkpoint, and no step the tables hold was taken with the reduced one.
    """
    starts = [(r["attempt"], int(r["start_step"])) for r in records if r.get("event") == "start"]
    changes = [
        {k: r[k] for k in ("attempt", "step", "from", "to", "accumulation") if k in r}
        for r in records
        if r.get("event") == "micro_batch"
        and not any(a > r["attempt"] and start <= int(r["step"]) for a, start in starts)
    ]
    return {"batch": batch, "final": changes[-1]["to"] if changes else batch, "changes": changes}


@dataclass(frozen=True)
class Run:
    """One attempt at a run, as :func:`prepare_run` settles it; the later steps only read it."""

    paths: RunPaths
    fingerprint: str
    device: torch.device
    data: DataBundle
    schedule: Schedule
    epochs: int
    total: int  # optimizer steps of the whole run
    val_per_epoch: int
    val_interval: int  # optimizer steps between validations
    start: int  # steps done at the checkpoint this attempt resumes from (0: fresh)
    ckpt_path: str | None  # that checkpoint (None: fresh)
    attempt: int  # this attempt's number in attempts.jsonl

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch


@dataclass(frozen=True)
class Parts:
    """What :func:`build_trainer` wires, as far as :func:`train` and :func:`finish` need it."""

    trainer: pl.Trainer
    module: CurveModule
    recorder: MetricRecorder
    checkpoint_io: AtomicCheckpointIO
    on_interrupt: CheckpointOnInterrupt


@dataclass(frozen=True)
class Ending:
    """How ``trainer.fit`` ended: ``fitted`` (returned), ``preempted`` (SIGTERM) or ``failed`` (a known reason)."""

    how: str
    t0: float  # when fit started (time.time())
    error: BaseException | None = None


def prepare_run(cfg, paths: RunPaths, fingerprint: str, *, use_cuda: bool) -> Run:
    """Seed, device, data, resume point and this attempt's start record.

    Invariants: the global RNG is seeded before anything draws from it (the data,
    then the net in :func:`build_trainer`); every table holds exactly the rows the
    resume checkpoint covers (none when fresh) before a new row can be appended;
    the attempt is recorded only once the run is known to be trainable (data loaded,
    ``val_per_epoch`` fits an epoch).
    """
    torch.set_num_threads(int(cfg.trainer.threads))
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")  # gpu = cuda (checked by run_training)

    data = build_data(cfg.data, seed=int(cfg.seed), device=device)
    spe = data.steps_per_epoch
    epochs = int(cfg.trainer.epochs)
    val_per_epoch = int(cfg.trainer.val_per_epoch)
    val_interval = val_schedule.val_interval(spe, val_per_epoch)
    schedule = schedule_from_config(cfg.schedule, steps_per_epoch=spe, epochs=epochs)

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
    cut_tables_to(paths, start)
    attempt = start_attempt(
        paths.attempts,
        start_step=start,
        reason=reason,
        device=str(device),
        snakemake_attempt=os.environ.get("LOSS_SLOPE_ATTEMPT"),
        settings=planned_settings(),
        # run control may change between attempts; validation reads each attempt's (run_info outcome)
        latest_every_epochs=LatestSettings.from_trainer(cfg.trainer).every_epochs,
    )
    return Run(
        paths=paths,
        fingerprint=fingerprint,
        device=device,
        data=data,
        schedule=schedule,
        epochs=epochs,
        total=spe * epochs,
        val_per_epoch=val_per_epoch,
        val_interval=val_interval,
        start=start,
        ckpt_path=ckpt_path,
        attempt=attempt,
    )


def build_trainer(cfg, run: Run) -> Parts:
    """``run_info.json``, then the module, the callbacks, the checkpoint plugin and the ``pl.Trainer``.

    Invariants: ``run_info.json`` (config, fingerprint, environment, monitor settings)
    is written before anything that can fail on the model; the callback list puts the
    step recorder before the monitor callback and the checkpoint callbacks last (Lightning
    moves ``Checkpoint`` subclasses to the end anyway), so a checkpoint at step ``s`` is
    taken after the rows of step ``s`` (docstring of :mod:`loss_slope.train`); no logger
    (``logger=False``): the recorder and the monitor callback write every table.
    """
    paths = run.paths
    # curvature / noise / checkpoint-size tables (trainer.monitors; settings recorded in run_info)
    monitor_cb = build_monitor_callback(
        cfg, run.data, tables_dir=paths.tables, checkpoint_dirs={"latest": paths.latest_dir, "best": paths.best_dir}
    )
    write_state_json(paths.run_info, run_info(cfg, run, monitor_cb.settings))

    # channels_last (CUDA only) is applied by CurveModule once the net is on its device
    net = hydra.utils.instantiate(cfg.model, num_classes=run.data.num_classes, in_channels=run.data.in_channels)
    oom = cfg.trainer.get("oom") or {}
    micro = MicroBatcher(
        min_size=int(oom.get("min_micro_batch") or 1),
        on_change=lambda change: record_event(
            paths.attempts, attempt=run.attempt, event="micro_batch", batch=int(cfg.data.batch_size), **change
        ),
    )
    module = CurveModule(
        net,
        hydra.utils.instantiate(cfg.optimizer),
        run.schedule,
        channels_last=bool(cfg.trainer.channels_last),
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        micro_batcher=micro,
        fault=oom_injector(cfg),
        compile=compile_options(cfg.trainer.get("compile")),
    )
    recorder = MetricRecorder(
        tables_dir=paths.tables,
        steps_per_epoch=run.steps_per_epoch,
        total_steps=run.total,
        val_interval=run.val_interval,
        flush_every=int(cfg.trainer.flush_every_steps),
        log_every=cfg.trainer.log_every_steps,
        guard=DivergenceGuard(
            explode_factor=cfg.trainer.divergence.max_loss_factor,
            reference_steps=int(cfg.trainer.divergence.reference_steps),
        ),
    )
    best = BestCheckpoint(
        steps_per_epoch=run.steps_per_epoch,
        val_interval=run.val_interval,
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
    latest_settings = LatestSettings.from_trainer(cfg.trainer)
    latest = LatestCheckpoint.from_settings(
        paths.latest, latest_settings, steps_per_epoch=run.steps_per_epoch, val_interval=run.val_interval
    )
    checkpoint_io = AtomicCheckpointIO(background=latest_settings.background_write)
    on_interrupt = CheckpointOnInterrupt(paths.latest)
    max_time = cfg.trainer.max_time_s
    trainer = pl.Trainer(
        accelerator="gpu" if run.device.type == "cuda" else "cpu",
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=run.epochs,
        max_steps=run.total,
        logger=False,
        val_check_interval=run.val_interval,
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
    # Our loader derives its position from trainer.global_step, so a mid-epoch
    # resume is exact even though it has no state_dict of its own.
    run.data.train.step_source = lambda: trainer.global_step
    # trainer.max_time_s is this attempt's budget (its pack job's runtime minus a
    # margin): Lightning's Timer would restore the elapsed time of earlier
    # attempts from the checkpoint and stop a resumed run at once
    for cb in trainer.callbacks:
        if isinstance(cb, Timer):
            cb.load_state_dict = lambda state_dict: None
    return Parts(
        trainer=trainer, module=module, recorder=recorder, checkpoint_io=checkpoint_io, on_interrupt=on_interrupt
    )


def train(run: Run, parts: Parts) -> Ending:
    """``trainer.fit`` from the resume checkpoint (weights-only loading).

    Invariant: however fit ends, the step recorder is closed (every buffered step row
    appended and fsync'ed) before anything reads the tables or records the attempt's end.
    A failure records the attempt as failed: a known one (``MicroBatchTooSmall``) ends
    as ``failed``, any other exception propagates.
    """
    t0 = time.time()
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    try:
        with sigint_as_sigterm():
            parts.trainer.fit(
                parts.module,
                train_dataloaders=run.data.train,
                val_dataloaders=run.data.val,
                ckpt_path=run.ckpt_path,
                weights_only=True,
            )
    except SIGTERMException:
        parts.recorder.close()
        return Ending("preempted", t0)
    except BaseException as exc:
        parts.recorder.close()
        end_attempt(
            run.paths.attempts,
            attempt=run.attempt,
            end_step=parts.trainer.global_step,
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            checkpoints=parts.checkpoint_io.stats(),
        )
        if isinstance(exc, MicroBatchTooSmall):
            return Ending("failed", t0, error=exc)
        raise
    parts.recorder.close()
    return Ending("fitted", t0)


def preempted_message(step: int, total: int, saved_step: int | None) -> str:
    """What a run stopped by SIGTERM says of where its rerun starts (``saved_step``: the step of
    the latest checkpoint on disk, None: there is none)."""
    if saved_step is None:
        return f"SIGTERM at step {step} of {total}: no checkpoint yet; a rerun starts the run from its beginning"
    if saved_step == step:
        return f"SIGTERM at step {step} of {total}: checkpoint saved; a rerun resumes it"
    return f"SIGTERM at step {step} of {total}: a rerun resumes it from the latest checkpoint, at step {saved_step}"


def finish(cfg, run: Run, parts: Parts, ending: Ending) -> int:
    """The attempt's end record, the run's outcome and the exit code.

    Invariants: ``done.json`` is written only when the last step is done (or the run
    diverged), after the outcome is added to ``run_info.json``; an unfinished or
    preempted attempt leaves the latest checkpoint to resume from and exits
    ``EXIT_UNFINISHED``.
    """
    paths, total, step = run.paths, run.total, parts.trainer.global_step
    if ending.how == "failed":  # a known reason: one clear line, no traceback
        log.error("run failed: %s", ending.error)
        return EXIT_ERROR
    io = parts.checkpoint_io
    ckpt = io.stats()
    if ending.how == "preempted" and parts.recorder.diverged is None:  # a diverged run is finished: below
        end_attempt(
            paths.attempts,
            attempt=run.attempt,
            end_step=step,
            status="preempted",
            checkpoint_step=parts.on_interrupt.saved_step,
            seconds=time.time() - ending.t0,
            checkpoints=ckpt,
        )
        log.warning("%s", preempted_message(step, total, parts.on_interrupt.saved_step))
        return EXIT_UNFINISHED
    if io.background:
        log.info(
            "checkpoints this attempt: %d files, %.1f MB written; %.2f s copying to host memory, %.2f s waiting "
            "for a previous write (%.2f s writing in the background)",
            ckpt["files"],
            ckpt["written_mb"],
            ckpt["snapshot_s"],
            ckpt["wait_s"],
            ckpt["write_s"],
        )
    else:
        log.info(
            "checkpoints this attempt: %d files, %.1f MB written; %.2f s writing them on the training thread",
            ckpt["files"],
            ckpt["written_mb"],
            ckpt["write_s"],
        )
    diverged = parts.recorder.diverged
    if diverged is None and step < total:
        end_attempt(
            paths.attempts,
            attempt=run.attempt,
            end_step=step,
            status="unfinished",
            seconds=time.time() - ending.t0,
            checkpoints=ckpt,
        )
        log.warning("stopped at step %d of %d (time budget); the latest checkpoint resumes it", step, total)
        return EXIT_UNFINISHED
    end_attempt(
        paths.attempts,
        attempt=run.attempt,
        end_step=step,
        status="completed" if diverged is None else "diverged",
        seconds=time.time() - ending.t0,
        checkpoints=ckpt,
    )
    records = read_attempts(paths.attempts)  # every attempt, this one's end included
    outcome = {
        "status": "complete" if diverged is None else "diverged",
        "steps_done": step,
        "micro_batch": micro_batch_summary(records, int(cfg.data.batch_size)),
    }
    if diverged is not None:
        outcome.update(diverged_at_step=diverged[0], reason=diverged[1])
    outcome["checkpoints"] = checkpoint_summary(records)
    outcome["latest_every_epochs"] = cadence_by_attempt(records)
    # the outcome travels with run_info.json (exported), so validation and the fits see it
    write_state_json(paths.run_info, {**json.loads(paths.run_info.read_text()), "outcome": outcome})
    done = {
        **outcome,
        "variant": cfg.variant,
        "run": cfg.run,
        "total_steps": total,
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": run.epochs,
        "fingerprint": run.fingerprint,
        "completed_at": time.time(),
        "attempts": summarize_attempts(records),
    }
    write_state_json(paths.done, done)
    log.info("run %s: %d of %d steps in %d attempt(s)", outcome["status"], step, total, run.attempt)
    write_output(cfg, paths, done)
    return EXIT_OK


def run_info(cfg, run: Run, monitor_settings: dict) -> dict:
    """The content of ``run_info.json``: what this attempt trains, and on what."""
    schedule = run.schedule
    return {
        "variant": cfg.variant,
        "run": cfg.run,
        "seed": int(cfg.seed),
        "fingerprint": run.fingerprint,
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": run.epochs,
        "total_steps": run.total,
        "val_per_epoch": run.val_per_epoch,
        "val_interval": run.val_interval,
        "schedule": {
            "kind": schedule.kind,
            "warmup_steps": schedule.warmup_steps,
            "total_steps": schedule.total_steps,
            "min_lr_ratio": schedule.min_lr_ratio,
        },
        "lr": float(cfg.optimizer.lr),
        "weight_decay": float(cfg.optimizer.weight_decay),
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1].lower(),
        "n_train": len(run.data.train.images),
        "n_val": len(run.data.val.images),
        "batch_size": int(cfg.data.batch_size),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": environment_info(run.device),
        "monitors": monitor_settings,
    }


def environment_info(device) -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
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
