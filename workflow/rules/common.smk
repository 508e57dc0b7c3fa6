import gc
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from loss_slope.probe.plan import (
    PlanError,
    fixed_runs_per_gpu,
    make_packs,
    pack_of,
    read_plan,
)
from loss_slope.study.config import ConfigError, validate_config
from loss_slope.report.targets import identity_params
from loss_slope.study.runs import build_runs, wildcard_regex

min_version("9.0")

# Planning a large sweep creates millions of long-lived objects (each job keeps
# its Job, file, wildcard and resource objects), and CPython's default collection
# threshold (700 allocations) re-scans them over and over: ~10-15 % of a
# dry-run's CPU time at 12.5k jobs (bench/bench_dryrun.py). Collect young objects
# less often; nothing in the workflow relies on prompt cycle collection, and
# scripts run in their own interpreter.
gc.set_threshold(50_000, 20, 10)

# The config you name is the whole study: with --configfile, the demo
# defaults below are not merged in (a partial merge would silently add the
# demo's variants to yours).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


try:
    validate_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except ConfigError as exc:
    raise WorkflowError(f"config error — {exc}") from None

RUNS = {(r.variant, r.run): r for r in build_runs(config)}
VARIANTS = list(config["variants"])

# N runs per GPU: fixed by WORKERS_PER_GPU / packing.runs_per_gpu, or measured
# by probe_capacity. When fixed, the packs are known now and a dry-run shows
# the whole sweep; when measured, plan_packs is a checkpoint.
try:
    FIXED_N, FIXED_N_SOURCE = fixed_runs_per_gpu(config["packing"]["runs_per_gpu"])
except PlanError as exc:
    raise WorkflowError(f"config error — {exc}") from None
# Jobs call `python`: put the interpreter running Snakemake (which has
# loss_slope installed) first on PATH, here and in every cluster job.
os.environ["PATH"] = (
    f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)


wildcard_constraints:
    variant=wildcard_regex(config["variants"]),
    # the shape of run ids (study.runs.run_id); a 10k-name alternation would slow every match
    run=r"lr[0-9.e+-]+-wd[0-9.e+-]+-s[0-9]+",
    pack=r"pack[0-9]+",


def run_spec(wildcards):
    key = (wildcards.variant, wildcards.run)
    if key not in RUNS:
        raise WorkflowError(f"{key[0]}/{key[1]} is not a run of this study")
    return RUNS[key]


def fit_identity(wildcards):
    # a plain function: Snakemake inspects a params callable's signature for
    # every job, and a functools.partial's costs about 3x a function's
    return identity_params(RUNS, wildcards)


def run_expected(wildcards):
    return run_spec(wildcards).expected()


RUNS_BY_VARIANT = {
    v: [spec for (v2, _), spec in RUNS.items() if v2 == v] for v in VARIANTS
}
# fixed N: the packs are known at parse time (dicts, so a 10k-run plan stays linear)
FIXED_PACKS = {
    v: make_packs([s.run for s in RUNS_BY_VARIANT[v]], FIXED_N) if FIXED_N else None
    for v in VARIANTS
}
FIXED_PACK_OF = {
    (v, r): p
    for v in VARIANTS
    if FIXED_N
    for p, members in FIXED_PACKS[v].items()
    for r in members
}


def variant_runs(variant):
    return RUNS_BY_VARIANT[variant]


def plan_runs(wildcards):
    return [
        {"run": s.run, "overrides": list(s.overrides)}
        for s in variant_runs(wildcards.variant)
    ]


def plan_inputs(wildcards):
    return [] if FIXED_N else [f"results/probe/{wildcards.variant}.json"]


def probe_overrides(wildcards):
    # the variant's first run stands for all of them: lr/wd/seed do not change memory or speed
    return list(variant_runs(wildcards.variant)[0].overrides)


def run_pack(wildcards):
    """The pack job that trains this run."""
    if FIXED_N:
        pack = FIXED_PACK_OF[(wildcards.variant, wildcards.run)]
    else:
        plan = checkpoints.plan_packs.get(variant=wildcards.variant).output.plan
        pack = pack_of(read_plan(plan), wildcards.run)
    return f"results/packs/{wildcards.variant}/{pack}.json"


def pack_members(wildcards):
    if FIXED_N:
        return FIXED_PACKS[wildcards.variant][wildcards.pack]
    plan = read_plan(f"results/plan/{wildcards.variant}/packs.json")
    return [m["run"] for m in plan["packs"][wildcards.pack]]


def pack_size(wildcards):
    return len(pack_members(wildcards))


def pack_runs_arg(wildcards):
    return ",".join(pack_members(wildcards))


def pack_threads(wildcards):
    return pack_size(wildcards) * config["training"]["threads"]


def pack_time_budget(wildcards, resources):
    """Seconds a pack's trainings may run before stopping cleanly (runtime minus the margin)."""
    seconds = int((resources.runtime - config["packing"]["time_margin_minutes"]) * 60)
    return max(seconds, 60)


def all_runs(pattern):
    return [pattern.format(variant=v, run=r) for v, r in RUNS]


def get_final_output():
    # per run: validation and fit; then the report (report_targets, report.smk)
    per_run = all_runs("results/validation/{variant}/{run}/validation.json")
    per_run += all_runs("results/fits/{variant}/{run}.json")
    return per_run + report_targets("report")


def data_inputs(wildcards=None):
    if config["data"]["name"] == "cifar10" and config["data"]["download"]:
        return [f"{config['data']['root']}/cifar-10-batches-py/batches.meta"]
    return []


# the dataset does not depend on wildcards: a plain list, not an input function
# (Snakemake inspects and calls an input function once per job)
DATA_INPUTS = data_inputs()
