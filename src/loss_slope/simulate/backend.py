"""The simulated backend of ``python -m loss_slope.train`` (``data=simulated``).

It writes a run's work tree exactly as a Lightning run does (``train/run.py``)::

    {run_dir}/tables/{steps,val,curvature,noise,checkpoints}.csv   same schema, same writers
    {run_dir}/checkpoints/latest/latest.ckpt   a tiny JSON state, after every validation
    {run_dir}/checkpoints/best/best-{step}.ckpt   top-k by validation loss
    {run_dir}/attempts.jsonl, run_info.json (with ``outcome``), done.json
    {run_dir}/truth.json                       what the curves were generated from

with the same exactly-once rules: step rows are appended at each validation and every
``trainer.flush_every_steps`` steps after one (``train.flush_cadence``), the tables are
flushed (and fsync'ed, with ``fsync: true``) before every checkpoint, and a rerun
truncates them to the checkpoint's step (``tables.schema.KEEP_ON_RESUME``) and continues. The curves are a pure
function of (``data.simulation``, variant, lr, weight decay, seed), so the
state file holds only the step, the divergence guard and the best list; a
resumed run writes the rows an uninterrupted one would, bit for bit. Times are
a simulated clock (``clock_start + step * seconds_per_step``), so even the
``time`` columns repeat. Nothing here imports torch or Lightning.

Exit codes as for real runs: 0 complete (or already complete), 3 unfinished
(SIGTERM or ``trainer.max_time_s``: checkpoint saved, a rerun resumes).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from loss_slope.jsonio import write_json
from loss_slope.simulate import model
from loss_slope.study.run_control import NOT_SCIENCE_SIMULATION
from loss_slope.tables.csvlog import CsvTable
from loss_slope.tables.schema import LN2, TABLES
from loss_slope.train.attempts import (
    checkpoint_summary,
    end_attempt,
    planned_settings,
    read_attempts,
    start_attempt,
    summarize_attempts,
)
from loss_slope.train.divergence import DivergenceGuard
from loss_slope.train.exit_codes import EXIT_OK, EXIT_UNFINISHED
from loss_slope.train.fingerprint import config_fingerprint
from loss_slope.train.flush_cadence import regular_flush
from loss_slope.train.run import holding_run_lock
from loss_slope.train.schedule import schedule_from_config
from loss_slope.train.val_schedule import steps_per_epoch, val_interval, validation_steps
from loss_slope.train.work_tree import (
    cut_tables_to,
    open_work_tree,
    skip_complete,
    write_output,
    write_state_json,
)

log = logging.getLogger("loss_slope.train")

#: keys of trainer.monitors recorded in run_info.json (what validation checks the cadence against)
_MONITOR_DEFAULTS = {
    "lambda_iters": 20,
    "lambda_min_iters": 5,
    "lambda_tol": 1e-3,
    "hutch_matvecs": 50,
    "curvature_batches": 1,
    "psd_window": 512,
    "psd_min_points": 64,
    "predictor_halflife_steps": 2000.0,
}


def simulated_fingerprint(c: dict) -> str:
    """The run's fingerprint without the simulation's run-control keys (changing the pace keeps the work tree)."""
    sim = {k: v for k, v in (c["data"].get("simulation") or {}).items() if k not in NOT_SCIENCE_SIMULATION}
    return config_fingerprint({**c, "data": {**c["data"], "simulation": sim}})


def monitor_settings(mcfg: dict | None, *, seed: int, batch_size: int, spe: int) -> dict:
    """The ``monitors`` block of run_info.json, with the keys the Lightning backend records."""
    m = dict(mcfg or {})
    enabled = bool(m.get("enabled", False))
    out = {k: (m[k] if m.get(k) is not None else v) for k, v in _MONITOR_DEFAULTS.items()}
    out.update(
        enabled=enabled,
        curvature_every_steps=int(m.get("curvature_every_steps") or 0) if enabled else 0,
        noise_every_epochs=int(m.get("noise_every_epochs") or 0) if enabled else 0,
        seed=int(seed),
        curvature_batch_size=int(m.get("curvature_batch_size") or batch_size),
        curvature_data_seed=int(m.get("curvature_data_seed") or 0),
        checkpoint_size=enabled and bool(m.get("checkpoint_size", True)),
        simulated=True,
    )
    out["noise_every_steps"] = out["noise_every_epochs"] * spe
    return out


def environment_info() -> dict:
    import hydra

    return {
        "backend": "simulated",
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "hydra": hydra.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


class _Stop:
    """SIGTERM / SIGINT: finish the current step, checkpoint, exit 3 (as a preempted real run)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, _frame) -> None:
        self.signal = signum


class _Table(CsvTable):
    """A CsvTable whose ``sync`` fsyncs only when ``durable`` (a flushed write already survives a SIGKILL;
    fsync adds safety against a host crash, at ~1,400 fsyncs per study-length run)."""

    def __init__(self, path, table: str, *, durable: bool) -> None:
        super().__init__(path, table)
        self.durable = durable

    def sync(self) -> None:
        self._fh.flush()
        if self.durable:
            os.fsync(self._fh.fileno())


def _write_state(path: Path, state: dict, *, durable: bool = True) -> None:
    write_json(state, path, indent=None, sort_keys=True, strict=False, durable=durable)


def _checkpoint_keys(path: Path) -> set[tuple[int, str]]:
    keys = set()
    if path.exists():
        with open(path) as fh:
            next(fh, None)
            for line in fh:
                parts = line.rstrip("\n").split(",")
                if len(parts) >= 4 and parts[0].isdigit():
                    keys.add((int(parts[0]), parts[3]))
    return keys


def run_simulated(cfg) -> int:
    """Simulate (or resume, or skip) the run described by the Hydra config ``cfg``, holding the
    run's lock as a real trainer does (a second writer of the run exits ``EXIT_LOCKED``)."""
    return holding_run_lock(cfg.run_dir, lambda: _simulate(cfg))


def _simulate(cfg) -> int:
    c = OmegaConf.to_container(cfg, resolve=True)
    fingerprint = simulated_fingerprint(c)
    paths = open_work_tree(c["run_dir"], fingerprint)
    if paths.done.exists():
        return skip_complete(cfg, paths, action="simulate")

    data, trainer = c["data"], c["trainer"]
    sim = model.settings(data.get("simulation"))
    spe = steps_per_epoch(int(data["n_train"]), int(data["batch_size"]), bool(data.get("drop_last")))
    epochs, vpe = int(trainer["epochs"]), int(trainer["val_per_epoch"])
    total, interval = spe * epochs, val_interval(spe, vpe)
    schedule = schedule_from_config(cfg.schedule, steps_per_epoch=spe, epochs=epochs)
    vsteps = validation_steps(epochs, spe, vpe)
    lr, wd, seed = float(c["optimizer"]["lr"]), float(c["optimizer"]["weight_decay"]), int(c["seed"])
    variant = str(c.get("variant") or "none")
    mon = monitor_settings(trainer.get("monitors"), seed=seed, batch_size=int(data["batch_size"]), spe=spe)
    flush_every = int(trainer["flush_every_steps"])
    clock = lambda step: float(sim["clock_start"]) + float(sim["seconds_per_step"]) * step  # noqa: E731

    # ---- resume bookkeeping (as train/run.py) ---------------------------
    state = json.loads(paths.latest.read_text()) if paths.latest.exists() else None
    if state is not None:
        start, reason = int(state["global_step"]), "resume"
        log.info("resuming from %s at step %d", paths.latest, start)
    else:
        start, reason = 0, "fresh"
        log.info(
            "no checkpoint%s: starting a fresh run",
            " yet (earlier attempts died before the first one)" if paths.attempts.exists() else "",
        )
    cut_tables_to(paths, start)
    attempt = start_attempt(
        paths.attempts,
        start_step=start,
        reason=reason,
        device="cpu (simulated)",
        snakemake_attempt=os.environ.get("LOSS_SLOPE_ATTEMPT"),
        settings=planned_settings(),
    )
    info = {
        "variant": c.get("variant"),
        "run": c.get("run"),
        "seed": seed,
        "fingerprint": fingerprint,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "total_steps": total,
        "val_per_epoch": vpe,
        "val_interval": interval,
        "schedule": {
            "kind": schedule.kind,
            "warmup_steps": schedule.warmup_steps,
            "total_steps": schedule.total_steps,
            "min_lr_ratio": schedule.min_lr_ratio,
        },
        "lr": lr,
        "weight_decay": wd,
        "optimizer": c["optimizer"]["_target_"].rsplit(".", 1)[-1].lower(),
        "n_train": int(data["n_train"]),
        "n_val": int(data["n_val"]),
        "batch_size": int(data["batch_size"]),
        "backend": "simulated",
        "config": c,
        "environment": environment_info(),
        "monitors": mon,
    }
    write_state_json(paths.run_info, info)
    kw = dict(
        variant=variant,
        lr=lr,
        weight_decay=wd,
        seed=seed,
        steps_per_epoch=spe,
        epochs=epochs,
        schedule=schedule,
        val_steps=vsteps,
    )
    write_state_json(paths.root / "truth.json", model.run_truth(sim, **kw))
    sim_out = model.simulate(sim, **kw, batch_size=int(data["batch_size"]), n_train=int(data["n_train"]))
    params, loss, acc = sim_out["params"], sim_out["loss"], sim_out["acc"]
    lr_col = lr * sim_out["lr_factor"]
    val_at = {int(v): i for i, v in enumerate(vsteps)}

    durable = bool(sim["fsync"])
    steps_t, val_t, curv_t, noise_t, ckpt_t = (_Table(paths.tables / f"{t}.csv", t, durable=durable) for t in TABLES)
    tables = (steps_t, val_t, curv_t, noise_t, ckpt_t)
    div = trainer.get("divergence") or {}
    guard = DivergenceGuard(
        explode_factor=div.get("max_loss_factor", 10.0), reference_steps=int(div.get("reference_steps", 10))
    )
    best: list[list] = []  # [val loss, step] of the kept best checkpoints
    seen = _checkpoint_keys(paths.tables / "checkpoints.csv")
    if state is not None:
        guard.load_state_dict(state["guard"])
        best = [list(b) for b in state["best"]]
        if mon["checkpoint_size"] and (start, "latest") not in seen:  # killed between the file and its row
            _ckpt_row(ckpt_t, seen, start, spe, "latest", paths.latest, when=clock(start))

    # the checkpoint files this attempt writes (as AtomicCheckpointIO.stats: nothing is copied or waited for)
    written = {"files": 0, "written_mb": 0.0, "snapshot_s": 0.0, "wait_s": 0.0, "write_s": 0.0}

    def put_state(path: Path, state: dict) -> None:
        t_write = time.perf_counter()
        _write_state(path, state, durable=durable)
        written["write_s"] += time.perf_counter() - t_write
        written["files"] += 1
        written["written_mb"] += path.stat().st_size / 1e6

    def save_latest(step: int) -> None:
        for t in tables:
            t.sync()
        put_state(
            paths.latest,
            {
                "global_step": step,
                "guard": guard.state_dict(),
                "diverged": diverged,  # the verdict is part of the checkpoint, as in a real run's
                "best": best,
                "backend": "simulated",
                "fingerprint": fingerprint,
                "rng": {"seed": int(sim["seed"]), "cell": params["cell"], "run_seed": seed},
            },
        )
        if mon["checkpoint_size"]:
            _ckpt_row(ckpt_t, seen, step, spe, "latest", paths.latest, when=clock(step))

    def save_best(step: int, value: float) -> None:
        k = int(trainer.get("best_top_k", 3))
        if k <= 0 or (len(best) >= k and value >= max(b[0] for b in best)):
            return
        path = paths.best_dir / f"best-{step}.ckpt"
        put_state(path, {"global_step": step, "loss_val_nats": value, "backend": "simulated"})
        best.append([value, step])
        if len(best) > k:
            worst = max(best)
            best.remove(worst)
            (paths.best_dir / f"best-{worst[1]}.ckpt").unlink(missing_ok=True)
        if mon["checkpoint_size"]:
            _ckpt_row(ckpt_t, seen, step, spe, "best", path, when=clock(step))

    stop = _Stop()
    max_time = trainer.get("max_time_s")
    pace = float(sim["pace_s_per_chunk"])
    t0 = time.time()
    pending_from = start
    found = (state or {}).get("diverged")
    # a run killed after the checkpoint of its divergence and before its end resumes diverged
    diverged: tuple[int, str] | None = None if found is None else (int(found[0]), str(found[1]))
    curv_every, noise_every = mon["curvature_every_steps"], mon["noise_every_steps"]

    def flush(upto: int) -> None:
        nonlocal pending_from, diverged
        if upto <= pending_from:
            return
        s = np.arange(pending_from, upto)
        ls = loss[pending_from:upto]
        steps_t.append(
            zip(
                s.tolist(),
                (s / spe).tolist(),
                [clock(i) for i in s.tolist()],
                lr_col[pending_from:upto].tolist(),
                [wd] * len(s),
                ls.tolist(),
                (ls / LN2).tolist(),
                acc[pending_from:upto].tolist(),
            )
        )
        if diverged is None:
            diverged = guard.update(s.tolist(), ls.tolist())
        pending_from = upto
        if upto % (10 * flush_every) < flush_every or upto == total:
            log.info(
                "step %d/%d (%.1f%%) epoch %.2f loss %.4f lr %.4g (simulated)",
                upto,
                total,
                100 * upto / total,
                upto / spe,
                float(ls[-1]),
                float(lr_col[upto - 1]),
            )
        if pace:
            time.sleep(pace)

    done_steps = start
    last_val = max((v for v in val_at if v <= start), default=0)
    for step in range(start, total if diverged is None else start):
        done_steps = step + 1
        if done_steps in val_at:
            last_val = done_steps  # its validation flushes (below)
        # on the run's schedule, as the recorder of a real run: every flush_every steps after a validation
        if regular_flush(done_steps, last_val, flush_every):
            flush(done_steps)
        # events after `done_steps` optimizer steps, in the Lightning order: monitors, validation, checkpoints
        if curv_every and done_steps % curv_every == 0:
            r = model.curvature_row(
                params,
                step=done_steps,
                lr=float(lr_col[step]),
                seed=seed,
                lambda_iters=int(mon["lambda_iters"]),
                lambda_min_iters=int(mon["lambda_min_iters"]),
                hutch_matvecs=int(mon["hutch_matvecs"]),
            )
            curv_t.append([(done_steps, done_steps / spe, *(r[k] for k in TABLES["curvature"].names[2:]))])
        if noise_every and done_steps % noise_every == 0:
            r = model.noise_row(
                params,
                loss,
                step=done_steps,
                every=noise_every,
                psd_window=int(mon["psd_window"]),
                psd_min_points=int(mon["psd_min_points"]),
                seed=seed,
            )
            noise_t.append(
                [
                    (
                        done_steps,
                        done_steps / spe,
                        r["psd_tail"],
                        r["resid_power"],
                        r["grad_var"],
                        r["psd_points"],
                        r["grad_var_steps"],
                    )
                ]
            )
        i = val_at.get(done_steps)
        if i is not None:
            flush(done_steps)
            v = float(sim_out["val_loss"][i])
            val_t.append(
                [
                    (
                        done_steps,
                        done_steps / spe,
                        clock(done_steps),
                        v,
                        v / LN2,
                        float(sim_out["val_acc"][i]),
                        float(sim_out["grad_norm"][i]),
                        float(sim_out["weight_norm"][i]),
                    )
                ]
            )
            save_best(done_steps, v)
            save_latest(done_steps)
        if diverged is not None:
            flush(done_steps)
            break
        interrupted = stop.signal is not None
        if interrupted or (max_time and time.time() - t0 > float(max_time)):
            flush(done_steps)
            if i is None:
                save_latest(done_steps)
            for t in tables:
                t.close()
            status = "preempted" if interrupted else "unfinished"
            end_attempt(
                paths.attempts,
                attempt=attempt,
                end_step=done_steps,
                status=status,
                checkpoint_step=done_steps,
                seconds=time.time() - t0,
                checkpoints=dict(written),
            )
            log.warning(
                "%s at step %d of %d: checkpoint saved; a rerun resumes it",
                "signal" if interrupted else "time budget",
                done_steps,
                total,
            )
            return EXIT_UNFINISHED
    flush(done_steps)
    for t in tables:
        t.close()

    outcome = {
        "status": "complete",
        "steps_done": done_steps,
        "micro_batch": {"batch": int(data["batch_size"]), "final": int(data["batch_size"]), "changes": []},
    }
    if diverged is not None:
        log.warning("diverged: %s; stopping this run", diverged[1])
        outcome = {**outcome, "status": "diverged", "diverged_at_step": diverged[0], "reason": diverged[1]}
    end_attempt(
        paths.attempts,
        attempt=attempt,
        end_step=done_steps,
        status="completed" if outcome["status"] == "complete" else outcome["status"],
        seconds=time.time() - t0,
        checkpoints=dict(written),
    )
    records = read_attempts(paths.attempts)  # every attempt, this one's end included
    outcome["checkpoints"] = checkpoint_summary(records)
    write_state_json(paths.run_info, {**json.loads(paths.run_info.read_text()), "outcome": outcome})
    done = {
        **outcome,
        "variant": c.get("variant"),
        "run": c.get("run"),
        "total_steps": total,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "fingerprint": fingerprint,
        "completed_at": time.time(),
        "attempts": summarize_attempts(records),
    }
    write_state_json(paths.done, done)
    log.info(
        "run %s: %d of %d steps in %d attempt(s) (simulated, %.2f s)",
        outcome["status"],
        done_steps,
        total,
        attempt,
        time.time() - t0,
    )
    write_output(cfg, paths, done)
    return EXIT_OK


def _ckpt_row(table: CsvTable, seen: set, step: int, spe: int, kind: str, path: Path, *, when: float) -> None:
    if (step, kind) in seen:
        return
    size = path.stat().st_size / 1e6
    table.append([(step, step / spe, when, kind, path.name.replace(",", "_"), size)])
    table.sync()
    seen.add((step, kind))
