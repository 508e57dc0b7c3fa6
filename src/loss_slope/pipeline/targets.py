"""Input functions of the fit and report rules (their paths: :mod:`.paths`).

Imported by the Snakefile (no numpy/matplotlib).  The rules bind these with
``functools.partial`` so the .smk files hold rules only.

Two report folders share the same rules:

``results/report/``          every run of the config (the default target)
``results/report_partial/``  only the runs whose training finished (target ``report_partial``);
                             the others appear in the per-run table as ``missing``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from loss_slope.probe.plan import PlanError, pack_of, read_plan

from .paths import (
    BY_PACK,
    BY_RUN,
    FIT,
    PACK_DONE,
    PACK_REGISTRY,
    REPORT_DIRS,
    REPORT_RUNS_CSV,
    REPORT_RUNS_PARQUET,
    REPORT_STATS,
    REPORT_SUMMARY,
    RUN_DONE,
    RUN_INFO,
    TRAIN_LOG,
    rule_log,
)
from .settings import run_identity

__all__ = [
    "FIT",
    "REPORT_DIRS",
    "fit_inputs",
    "truth_inputs",
    "finished_runs",
    "missing_reasons",
    "training_state",
    "identity_params",
    "report_targets",
]


def report_targets(reportdir: str = "report") -> list[str]:
    """The files that make a report complete (``summary.md`` needs every figure)."""
    if reportdir not in REPORT_DIRS:
        raise ValueError(f"reportdir must be one of {REPORT_DIRS}")
    return [
        path.format(reportdir=reportdir)
        for path in (REPORT_SUMMARY, REPORT_RUNS_CSV, REPORT_RUNS_PARQUET, REPORT_STATS)
    ]


def identity_params(runs: Mapping[tuple[str, str], Any], wildcards) -> dict:
    """Params of ``fit_run``: the run's identifiers from the study config."""
    return run_identity(runs[(wildcards.variant, wildcards.run)])


def training_state(
    runs: Iterable[tuple[str, str]],
    *,
    fixed_pack: Callable[[Any], str] | None = None,
    root: str | Path = ".",
) -> dict[tuple[str, str], tuple[bool, str]]:
    """For each (variant, run): whether its training finished, and why not.

    A run's training finished when its completion marker (:data:`~loss_slope.pipeline.paths.RUN_DONE`)
    exists, whatever happened to the other runs of its pack; otherwise the reason
    names its pack and whether that pack ran.

    Parameters
    ----------
    runs : iterable of (variant, run)
    fixed_pack : callable, optional
        The workflow's ``run_pack(wildcards) -> pack output path``, used when the
        number of runs per device is fixed (no checkpoint).  Otherwise the pack comes
        from the plan file, read directly (not through the checkpoint), so asking
        never schedules a probe or a training job.
    root : path
        Working directory the paths are relative to.

    Returns
    -------
    dict
        ``(variant, run) -> (finished, reason)``; ``reason`` is empty when finished.
    """
    root = Path(root)
    log = TRAIN_LOG.format
    plans: dict[str, dict | None] = {}
    out = {}
    for v, r in runs:
        if (root / RUN_DONE.format(variant=v, run=r)).exists():
            out[(v, r)] = (True, "")
            continue
        try:
            if fixed_pack is not None:
                pack = fixed_pack(SimpleNamespace(variant=v, run=r))
            else:
                if v not in plans:
                    plan = root / PACK_REGISTRY.format(variant=v)
                    plans[v] = read_plan(plan) if plan.exists() else None
                if plans[v] is None:
                    out[(v, r)] = (False, f"not trained: {PACK_REGISTRY.format(variant=v)} does not exist yet")
                    continue
                pack = PACK_DONE.format(variant=v, pack=pack_of(plans[v], r))
        except (PlanError, KeyError, ValueError, StopIteration) as exc:
            out[(v, r)] = (False, f"not trained: no pack for this run ({exc})")
            continue
        if pack == RUN_DONE.format(variant=v, run=r):
            out[(v, r)] = (
                False,
                f"training not finished: no completion marker {pack} yet "
                f"(see {log(variant=v, run=r)} and {rule_log('run_done', BY_RUN).format(variant=v, run=r)})",
            )
        elif (root / pack).exists():
            out[(v, r)] = (
                False,
                f"training not finished: its pack {pack} ended without this run "
                f"(see {rule_log('run_done', BY_RUN).format(variant=v, run=r)} and {log(variant=v, run=r)})",
            )
        else:
            name = Path(pack).stem
            out[(v, r)] = (
                False,
                f"training not finished: its pack {pack} is missing "
                f"(failed or not run; see {rule_log('train_pack', BY_PACK).format(variant=v, pack=name)} "
                f"and {log(variant=v, run=r)})",
            )
    return out


def finished_runs(runs, *, fixed_pack=None, root: str | Path = ".") -> list[tuple[str, str]]:
    """(variant, run) whose training job finished (see :func:`training_state`)."""
    return [k for k, (done, _) in training_state(runs, fixed_pack=fixed_pack, root=root).items() if done]


def missing_reasons(
    runs: Iterable[tuple[str, str]], wildcards, *, fixed_pack: Callable[[Any], str] | None = None
) -> dict[str, str]:
    """Params of ``summarize``: ``"variant/run" -> reason`` for runs a partial report leaves out."""
    if wildcards.reportdir == "report":
        return {}
    state = training_state(list(runs), fixed_pack=fixed_pack)
    return {f"{v}/{r}": why for (v, r), (done, why) in state.items() if not done}


def fit_inputs(
    runs: Iterable[tuple[str, str]],
    wildcards,
    *,
    fixed_pack: Callable[[Any], str] | None = None,
) -> list[str]:
    """Fit files a report reads: every run, or (``report_partial``) the finished ones."""
    runs = list(runs)
    if wildcards.reportdir == "report":
        chosen = runs
    else:
        chosen = finished_runs(runs, fixed_pack=fixed_pack)
    return [FIT.format(variant=v, run=r) for v, r in chosen]


def truth_inputs(
    runs: Iterable[tuple[str, str]],
    wildcards,
    *,
    fixed_pack: Callable[[Any], str] | None = None,
    simulated: bool = False,
) -> list[str]:
    """``run_info.json`` of every run a simulated study's report reads (each run's truth is
    recomputed from it); none for a real study."""
    if not simulated:
        return []
    return [
        RUN_INFO.format(variant=Path(f).parent.name, run=Path(f).stem)
        for f in fit_inputs(runs, wildcards, fixed_pack=fixed_pack)
    ]
