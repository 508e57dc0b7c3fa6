"""The resource contract of a pack job, stated once.

A pack of N runs asks for

* CPUs: ``N x training.threads`` (one training process per run, ``threads`` torch threads each);
* host memory: ``(N x per-run host memory + packing.host_mem_margin_mb) x growth(a)``,
  where the per-run memory is what the probe measured when it did, else
  ``packing.host_mem_mb_per_run``; ``growth`` is 1, 1.5, 2, 2, ... for a = 1, 2, 3, ..., and
  ``a`` is the Snakemake attempt less the earlier attempts whose runs all ended cleanly
  (:func:`memory_attempt`): a pack resubmitted because it reached its time budget asks for
  the memory it had, one resubmitted after a kill or an error asks for more;
* runtime: ``steps left x seconds per step x packing.runtime_safety + packing.time_margin_minutes
  + 5 min start-up``, from the probe's step time at N runs per GPU, capped at
  ``packing.runtime_minutes`` (which is also the runtime when no step time is measured).

None of this depends on ``--cores``. The probe asks for ``probe_k_max x training.threads`` CPUs.
No torch here: the Snakefile imports this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from loss_slope.train.attempts import read_attempts, summarize_attempts

STARTUP_MINUTES = 5.0
#: how a run's attempt can end without a sign of too little memory: stopped at its time budget
#: (``unfinished``), by SIGTERM (``preempted``: scancel, preemption, the job's time limit) or done
CLEAN_ENDS = frozenset({"unfinished", "preempted", "completed", "diverged"})


def pack_cpus(n_runs: int, threads: int) -> int:
    return max(1, int(n_runs) * int(threads))


def mem_growth(attempt: int) -> float:
    return min(2.0, 1.0 + 0.5 * (max(1, int(attempt)) - 1))


def pack_mem_mb(n_runs: int, per_run_mb: float, margin_mb: float, attempt: int = 1) -> int:
    return int(math.ceil((n_runs * per_run_mb + margin_mb) * mem_growth(attempt)))


def memory_attempt(run_dirs: Iterable[str | Path], attempt: int, *, since: float | None = None) -> int:
    """The attempt number that sets a pack's memory growth: ``attempt`` less the earlier
    attempts (of this Snakemake invocation) in which every run of the pack that started ended
    cleanly (:data:`CLEAN_ENDS`). An earlier attempt counts as it does today (memory grows)
    when a run of it was killed (no end record: e.g. the job went over its memory), failed, or
    when no run recorded it at all (the job died before a run started).

    A run's attempts of this invocation are the trailing records of its ``attempts.jsonl``
    that started at ``since`` (the invocation's start, a Unix time) or later and whose
    ``snakemake_attempt`` is below ``attempt`` and falls going backwards: an older
    invocation's records (its count started at 1 too) end the trail.
    """
    attempt = max(1, int(attempt))
    ends: dict[int, set[str]] = {}
    for run_dir in run_dirs:
        later = attempt
        for rec in reversed(summarize_attempts(read_attempts(Path(run_dir) / "attempts.jsonl"))):
            try:
                job_attempt = int(rec.get("snakemake_attempt"))
            except (TypeError, ValueError):
                break
            if not 1 <= job_attempt < later or (since is not None and rec.get("started", since) < since):
                break
            ends.setdefault(job_attempt, set()).add(rec["status"])
            later = job_attempt
    return attempt - sum(1 for statuses in ends.values() if statuses <= CLEAN_ENDS)


def pack_runtime_minutes(
    steps_left: int, step_s: float | None, *, margin_min: float, cap_min: float, safety: float = 1.25
) -> int:
    """Minutes a pack job asks for (see the module doc)."""
    if not step_s or step_s <= 0:
        return int(math.ceil(cap_min))
    need = steps_left * step_s * safety / 60.0 + margin_min + STARTUP_MINUTES
    return int(min(math.ceil(cap_min), max(math.ceil(need), math.ceil(margin_min + STARTUP_MINUTES + 1))))


def steps_done(run_dir: str | Path) -> int:
    """Optimizer steps a run has done (from its work tree; 0 when it has none). Cheap: two small files."""
    run_dir = Path(run_dir)
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
