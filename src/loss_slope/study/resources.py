"""The resource contract of a pack job, stated once.

A pack of N runs asks for

* CPUs: ``N x threads`` (one training process per run, ``threads`` torch threads each: the
  variant's, :func:`loss_slope.study.runs.run_threads`, ``training.threads`` unless its own
  ``hydra_overrides`` set ``trainer.threads``);
* host memory: ``(N x per-run host memory + packing.host_mem_margin_mb) x growth(a)``,
  where the per-run memory is what the probe measured when it did, else
  ``packing.host_mem_mb_per_run``; ``growth`` is 1, 1.5, 2, 2, ... for a = 1, 2, 3, ..., and
  ``a`` is the Snakemake attempt less the earlier attempts whose runs all ended cleanly, by
  the runs' and the pack launcher's records (:func:`memory_attempt`): a pack resubmitted
  because it reached its time budget (or only waited for another trainer's lock) asks for
  the memory it had, one resubmitted after a kill or an error asks for more;
* runtime: ``steps left x seconds per step x packing.runtime_safety + packing.time_margin_minutes
  + 5 min start-up``, from the probe's step time at N runs per GPU, capped at
  ``packing.runtime_minutes`` (which is also the runtime when no step time is measured).

None of this depends on ``--cores``. The probe asks for ``probe_k_max x threads`` CPUs.
No torch here: the Snakefile imports this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from loss_slope.train.attempts import read_attempts, read_launcher, summarize_attempts

STARTUP_MINUTES = 5.0
#: how a run's attempt can end without a sign of too little memory: stopped at its time budget
#: (``unfinished``), by SIGTERM (``preempted``: scancel, preemption, the job's time limit) or done
CLEAN_ENDS = frozenset({"unfinished", "preempted", "completed", "diverged"})
#: how the pack launcher saw a run's attempt end without such a sign: done, stopped at its time
#: budget (or never started for lack of time), or held by another trainer's lock
CLEAN_OUTCOMES = frozenset({"complete", "unfinished", "locked"})


def pack_cpus(n_runs: int, threads: int) -> int:
    return max(1, int(n_runs) * int(threads))


def mem_growth(attempt: int) -> float:
    return min(2.0, 1.0 + 0.5 * (max(1, int(attempt)) - 1))


def pack_mem_mb(n_runs: int, per_run_mb: float, margin_mb: float, attempt: int = 1) -> int:
    return int(math.ceil((n_runs * per_run_mb + margin_mb) * mem_growth(attempt)))


def memory_attempt(run_dirs: Iterable[str | Path], attempt: int, *, since: float | None = None) -> int:
    """The attempt number that sets a pack's memory growth: ``attempt`` less the earlier
    attempts (of this Snakemake invocation) that show no sign of too little memory.

    An earlier attempt is clean when something recorded it and every record of it is clean:
    the runs' ends in ``attempts.jsonl`` (:data:`CLEAN_ENDS`), and the pack launcher's
    ``launcher.jsonl``: its ``outcome`` of each run (:data:`CLEAN_OUTCOMES`; a run given up
    before the attempt, ``not_started``, says nothing) and its ``error`` records (a failed
    try, e.g. a run killed while it started: never clean). An attempt counts as it does today
    (memory grows) when a run of it was killed (no end record), failed, or when nothing
    recorded it at all (the whole job died).

    A run's records of this invocation are its trailing ``attempts.jsonl`` records that
    started at ``since`` (the invocation's start, a Unix time) or later, with a
    ``snakemake_attempt`` below ``attempt`` that does not rise going backwards (a requeued
    job, or a run restarted by its launcher, repeats a number); the launcher's records of
    this invocation are those written at ``since`` or later, below ``attempt``.
    """
    attempt = max(1, int(attempt))
    ends: dict[int, set[str]] = {}
    for run_dir in run_dirs:
        limit = attempt - 1
        for rec in reversed(summarize_attempts(read_attempts(Path(run_dir) / "attempts.jsonl"))):
            try:
                job_attempt = int(rec.get("snakemake_attempt"))
            except (TypeError, ValueError):
                break
            if not 1 <= job_attempt <= limit or (since is not None and rec.get("started", since) < since):
                break
            ends.setdefault(job_attempt, set()).add(rec["status"])
            limit = job_attempt
        for rec in read_launcher(run_dir):
            try:
                job_attempt, when = int(rec.get("attempt")), float(rec.get("time"))
            except (TypeError, ValueError):
                continue
            if not 1 <= job_attempt < attempt or (since is not None and when < since):
                continue
            if rec.get("event") == "error":
                ends.setdefault(job_attempt, set()).add("launcher_error")
            elif rec.get("event") == "outcome" and rec.get("status") != "not_started":
                ends.setdefault(job_attempt, set()).add(f"outcome:{rec.get('status')}")
    clean = CLEAN_ENDS | {f"outcome:{s}" for s in CLEAN_OUTCOMES}
    return attempt - sum(1 for statuses in ends.values() if statuses <= clean)


def pack_step_seconds(measured: dict, runs: int) -> float | None:
    """Seconds a step takes in a pack of ``runs`` runs: the probe's time with that many runs
    sharing the GPU (``step_s_by_k``) when it measured it, else its time at the N it chose
    (a pack planned with another N, larger than any level measured now, or an older plan)."""
    return (measured.get("step_s_by_k") or {}).get(str(int(runs))) or measured.get("step_s")


def pack_runtime_minutes(
    steps_left: int, step_s: float | None, *, margin_min: float, cap_min: float, safety: float = 1.25
) -> int:
    """Minutes a pack job asks for (see the module doc); whole minutes, never above ``cap_min``."""
    cap = math.floor(cap_min)
    if not step_s or step_s <= 0:
        return int(cap)
    need = steps_left * step_s * safety / 60.0 + margin_min + STARTUP_MINUTES
    return int(min(cap, max(math.ceil(need), math.ceil(margin_min + STARTUP_MINUTES + 1))))


def pack_time_budget_s(runtime_min: float, margin_min: float) -> int:
    """Seconds a pack's trainings may run before stopping cleanly: its runtime less the margin.

    A runtime set from outside (``LOSS_SLOPE_SLURM_RUNTIME``, ``--set-resources``) that leaves less
    than a minute is refused: every attempt would stop at once, unfinished, and use up the retries."""
    if runtime_min - margin_min < 1:
        raise ValueError(
            f"train_pack runtime {runtime_min:g} min leaves less than a minute of training after "
            f"packing.time_margin_minutes ({margin_min:g} min); raise the runtime (LOSS_SLOPE_SLURM_RUNTIME "
            "or --set-resources) or lower the margin"
        )
    return int((runtime_min - margin_min) * 60)


def steps_done(run_dir: str | Path, settings: str | None = None) -> int:
    """Optimizer steps a run has done (from its work tree; 0 when it has none). Cheap: a few small files.

    ``settings``: the run's settings digest now (:func:`loss_slope.probe.plan.run_settings_digest`).
    When the tree's last attempt trained under another digest (its ``start`` record, written by a
    trainer a pack started), the tree is of the run before a change to what it trains: the
    trainer will set it aside and start again, so nothing counts as done (a change that leaves
    the composed config as it was is resumed instead: the pack then asks for more time than it
    needs, once).
    """
    run_dir = Path(run_dir)
    if settings is not None:
        starts = [r for r in read_attempts(run_dir / "attempts.jsonl") if r.get("event") == "start"]
        named = [r["settings"] for r in starts if r.get("settings")]
        # a tree whose start records name none (trained by an older version): the launcher's records do
        named = named or [r["settings"] for r in read_launcher(run_dir) if r.get("settings")]
        if named and named[-1] != settings:
            return 0
    try:
        return int(json.loads((run_dir / "done.json").read_text())["total_steps"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        pass
    best = 0
    try:
        for line in (run_dir / "attempts.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            for key in ("checkpoint_step", "end_step", "start_step"):
                if isinstance(rec.get(key), int) and rec.get("status") != "failed":
                    best = max(best, rec[key])
    except FileNotFoundError:
        pass
    return best
