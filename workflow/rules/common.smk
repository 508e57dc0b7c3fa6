import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from loss_slope.probe.plan import PlanError, fixed_runs_per_gpu, make_packs, pack_of, read_plan
from loss_slope.study.config import ConfigError, validate_config
from loss_slope.study.runs import build_runs, wildcard_regex

min_version("9.0")

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
    run=wildcard_regex({r for _, r in RUNS}),


def run_spec(wildcards):
    key = (wildcards.variant, wildcards.run)
    if key not in RUNS:
        raise WorkflowError(f"{key[0]}/{key[1]} is not a run of this study")
    return RUNS[key]


def run_overrides(wildcards):
    return run_spec(wildcards).shell_overrides()


def run_expected(wildcards):
    return run_spec(wildcards).expected()


def variant_runs(variant):
    return [spec for (v, _), spec in RUNS.items() if v == variant]


def plan_runs(wildcards):
    return [{"run": s.run, "overrides": list(s.overrides)} for s in variant_runs(wildcards.variant)]


def plan_inputs(wildcards):
    return [] if FIXED_N else [f"results/probe/{wildcards.variant}.json"]


def probe_overrides(wildcards):
    # the variant's first run stands for all of them: lr/wd/seed do not change memory or speed
    return list(variant_runs(wildcards.variant)[0].overrides)


def run_pack(wildcards):
    """The pack job that trains this run."""
    if FIXED_N:
        packs = make_packs([s.run for s in variant_runs(wildcards.variant)], FIXED_N)
        pack = next(p for p, members in packs.items() if wildcards.run in members)
    else:
        plan = checkpoints.plan_packs.get(variant=wildcards.variant).output.plan
        pack = pack_of(read_plan(plan), wildcards.run)
    return f"results/packs/{wildcards.variant}/{pack}.json"


def pack_members(wildcards):
    if FIXED_N:
        return make_packs([s.run for s in variant_runs(wildcards.variant)], FIXED_N)[wildcards.pack]
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
    return all_runs("results/validation/{variant}/{run}/validation.json")


def data_inputs(wildcards=None):
    if config["data"]["name"] == "cifar10" and config["data"]["download"]:
        return [f"{config['data']['root']}/cifar-10-batches-py/batches.meta"]
    return []
