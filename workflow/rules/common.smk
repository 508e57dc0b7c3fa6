import gc
import json
import os
import shlex
import sys
import time
from pathlib import Path

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.utils import min_version

from loss_slope.pipeline.paths import (
    ATTEMPTS,
    BY_PACK,
    BY_REPORT,
    BY_RUN,
    BY_VARIANT,
    CONVERT,
    DATA_READY,
    FIT,
    PACK_DONE,
    PACK_REGISTRY,
    PACK_SPEC,
    PROBE_JSON,
    PROBE_MD,
    PROBE_PNG,
    REPORT_RUNS_CSV,
    REPORT_RUNS_PARQUET,
    REPORT_STATS,
    REPORT_SUMMARY,
    REPORT_VARIANTS_CSV,
    RUN_DONE,
    RUN_INFO,
    RUNS_PER_GPU,
    TRAIN_LOG,
    TRAIN_LOG_DIR,
    VALIDATION_JSON,
    VALIDATION_TXT,
    export_csvs,
    parquet,
    parquets,
    report_curves,
    report_figure,
    report_variant_table,
    rule_benchmark,
    rule_log,
    work_run,
)
from loss_slope.pipeline.targets import identity_params, report_targets
from loss_slope.probe.plan import (
    PACK_WILDCARD,
    PlanError,
    check_plan,
    extend_packs,
    fixed_runs_per_gpu,
    kept_packs,
    membership,
    pack_plan_key,
    read_plan,
    read_registry,
    run_settings_digest,
)
from loss_slope.study.config import SCHEMA_PATH, ConfigError, validate_config
from loss_slope.study.preflight import preflight
from loss_slope.study import resources as res
from loss_slope.study.run_control import is_run_control
from loss_slope.study.runs import (
    build_runs,
    data_location_overrides,
    run_control_overrides,
    run_threads,
    variant_overrides,
    wildcard_regex,
)
from loss_slope.tables.schema import TABLES

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

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


try:
    # the schema ships in the package: src/loss_slope/study/config.schema.yaml
    validate_config(config, SCHEMA_PATH)
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
    pack=PACK_WILDCARD,


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
WORK_ROOT = config["paths"]["work_root"]
PACKING = config["packing"]
# when this Snakemake invocation started: a pack's memory request reads only this
# invocation's attempts (pack_mem_mb)
INVOCATION_START = time.time()
# packing.mps: off | on | auto (YAML reads a bare off/on as a boolean). It reaches the
# pack jobs through their shell command, not params: switching MPS retrains nothing.
MPS_SETTING = {True: "on", False: "off"}.get(PACKING["mps"], PACKING["mps"])


# run control of the pack jobs, passed in their shell command (not params: changing it retrains nothing)
WORK_ROOT_Q = shlex.quote(str(WORK_ROOT))
# where the data is now: after the runs' own overrides (the last value wins), so a pack
# planned before the data moved trains from the new place
DATA_ROOT_OVERRIDE = " ".join(map(shlex.quote, data_location_overrides(config)))
# run control now configured (threads, flushing, a variant's own run-control keys), by variant:
# the pack passes its variant's after the runs' planned overrides, so a pack planned before a
# change trains with the current values
RUN_CONTROL = shlex.quote(
    json.dumps(
        {v: run_control_overrides(config, v) for v in config["variants"]},
        sort_keys=True,
    )
)
MAX_ERRORS = int(PACKING["max_error_attempts"])
GPU_MISMATCH = PACKING["gpu_mismatch"]
# what the probe measured (GPU model, MPS chosen), read by the pack job when it starts
# ('{variant}' is replaced there): not a pack_spec input or a train_pack param, so a
# probe rerun, or a switch between a fixed and a measured N, resubmits no pack
MEASURED_ARG = "" if FIXED_N else f"--measured {shlex.quote(RUNS_PER_GPU)}"

#: the packing keys the probe uses: its params (no other packing key reruns it)
PROBE_KEYS = (
    "probe_k_max",
    "probe_steps",
    "probe_warmup_steps",
    "tolerance",
    "headroom",
)


def probe_settings(wildcards):
    """The probe's settings; mps only when not off (the setting is ignored on the CPU)."""
    settings = {k: PACKING[k] for k in PROBE_KEYS}
    if MPS_SETTING != "off":
        settings["mps"] = MPS_SETTING
    return settings


# Pre-flight, before any job: compose every variant's Hydra config (no torch)
# and check the keys that depend on each other. Cluster jobs re-parse this
# file: they skip it (the controller did it) and compose only the variant
# they need (variant_facts).
if workflow.remote_exec or workflow.subprocess_exec:
    FACTS = {}
else:
    try:
        FACTS = preflight(
            config,
            RUNS_BY_VARIANT,
            runtime_minutes=PACKING["runtime_minutes"],
            probed=not FIXED_N,
        )
    except ConfigError as exc:
        raise WorkflowError(f"config error — {exc}") from None

# what each run trains (its overrides minus where the data lives), as a short digest
RUN_DIGEST = {key: run_settings_digest(spec.overrides) for key, spec in RUNS.items()}


def variant_runs(variant):
    return RUNS_BY_VARIANT[variant]


def slurm_study():
    """Whether the cluster jobs go to SLURM (known once the executor is chosen)."""
    plugin = workflow.executor_plugin
    return bool(plugin) and getattr(plugin, "name", "") == "slurm"


def explicit_cpu(variant):
    """The variant's runs ask for the CPU on purpose (trainer.accelerator=cpu)."""
    return "trainer.accelerator=cpu" in variant_runs(variant)[0].overrides


def plan_inputs(wildcards):
    return [] if FIXED_N else [PROBE_JSON.format(variant=wildcards.variant)]


def probe_overrides(wildcards):
    """The variant's overrides less the per-run ones, the data's location and run control: a
    grid edit, data moved or a run-control edit (threads, flushing, ...) never reruns the probe.
    It trains the experiment's default LR and weight decay, seed 0, on the data where the config
    says it is now, with the run control now configured (probe_capacity.py)."""
    spec = variant_runs(wildcards.variant)[0]
    return [o for o in variant_overrides(spec) if not is_run_control(o)]


# ---- packs: stable and append-only (loss_slope.probe.plan)
# The registry results/plan/{variant}/packs.json lists every pack planned so
# far; those packs keep their runs, and runs in none form new packs of N named
# by their members. N is fixed (WORKERS_PER_GPU / packing.runs_per_gpu: the
# packs are known now) or measured (after the checkpoint plan_packs).
def registry_path(variant):
    return PACK_REGISTRY.format(variant=variant)


def n_file(variant):
    return RUNS_PER_GPU.format(variant=variant)


def variant_measured(variant):
    """N and what the probe measured (after the checkpoint); {} when N is fixed."""
    if FIXED_N:
        return {}
    if workflow.remote_exec or workflow.subprocess_exec:
        # inside a cluster job the checkpoint is not in the DAG: read its output. A pack
        # planned before the probe can start while the probe measures: no plan yet
        path = n_file(variant)
        return _checked_plan(variant, path) if os.path.exists(path) else {}
    return _checked_plan(
        variant, checkpoints.plan_packs.get(variant=variant).output.plan
    )


def _checked_plan(variant, path):
    stamp = os.stat(path).st_mtime_ns
    if _MEASURED.get(path, (None,))[0] != stamp:
        plan = read_plan(path)
        try:
            check_plan(
                plan,
                slurm=slurm_study() and not explicit_cpu(variant),
            )
        except PlanError as exc:
            raise WorkflowError(f"{exc} (plan {path})") from None
        _MEASURED[path] = (stamp, plan)
    return _MEASURED[path][1]


_MEASURED = {}
_PACKS = {}
_KEPT = {}
_REGISTRY = {}


def planned_packs(variant):
    """({pack: [run, ...]}, {run: pack}) of the packs planned before (the registry), less
    removed runs. Needs no N, so the runs in them never wait for the probe checkpoint: a
    probe rerun, or a switch between a fixed and a measured N, reruns none of their jobs.
    """
    if variant not in _KEPT:
        packs = kept_packs(
            membership(_registry(variant)),
            [s.run for s in variant_runs(variant)],
        )
        _KEPT[variant] = (
            packs,
            {r: p for p, members in packs.items() for r in members},
        )
    return _KEPT[variant]


def variant_packs(variant):
    """{pack: [run, ...]} of the variant (its packs so far plus new ones for unplaced runs)."""
    n = FIXED_N or int(variant_measured(variant)["runs_per_gpu"])
    if (variant, n) not in _PACKS:
        packs = extend_packs(
            membership(_registry(variant)),
            [s.run for s in variant_runs(variant)],
            n,
        )
        _PACKS[(variant, n)] = (
            packs,
            {r: p for p, members in packs.items() for r in members},
        )
    return _PACKS[(variant, n)]


def run_pack(wildcards):
    """The file that says this run's training finished: its per-run marker.

    (The report rules use it to tell finished runs from the others.)
    """
    return RUN_DONE.format(variant=wildcards.variant, run=wildcards.run)


def run_pack_output(wildcards):
    """The output of the pack job that trains this run (a new run's waits for N)."""
    v = wildcards.variant
    pack = planned_packs(v)[1].get(wildcards.run) or variant_packs(v)[1][wildcards.run]
    return PACK_DONE.format(variant=wildcards.variant, pack=pack)


def run_digest(wildcards):
    return RUN_DIGEST[(wildcards.variant, wildcards.run)]


def pack_members(wildcards):
    planned = planned_packs(wildcards.variant)[0].get(wildcards.pack)
    if planned:
        return planned
    try:
        return variant_packs(wildcards.variant)[0][wildcards.pack]
    except KeyError:
        raise WorkflowError(
            f"{wildcards.variant}/{wildcards.pack} is not a pack of this study"
        ) from None


def pack_size(wildcards):
    return len(pack_members(wildcards))


def pack_settings(wildcards):
    """The pack's runs and what each trains (short digests): a changed run re-plans its pack,
    a finished run removed from the config does not (pack_plan_key)."""
    v = wildcards.variant
    members = pack_members(wildcards)
    planned = _registry(v).get(wildcards.pack, [])
    return pack_plan_key(
        planned,
        members,
        {r: RUN_DIGEST[(v, r)] for r in members},
        finished=lambda r: os.path.exists(
            os.path.join(work_run(WORK_ROOT, v, r), "done.json")
        ),
    )


def _registry(variant):
    """The variant's registry as this invocation found it (packs planned during it are
    named by their members, so planning them again from it gives the same packs)."""
    if variant not in _REGISTRY:
        _REGISTRY[variant] = read_registry(registry_path(variant))
    return _REGISTRY[variant]


def pack_measured(wildcards):
    """What the probe measured for this variant (empty with a fixed N). A pack planned
    before may be scheduled while the probe reruns: it is then sized from the plan on disk,
    the one it was planned with (not checked again: the rerun is what fixes a refused
    plan), or from the packing defaults if there is none (N was fixed when it was planned).
    """
    try:
        return variant_measured(wildcards.variant)
    except IncompleteCheckpointException:
        path = n_file(wildcards.variant)
        return read_plan(path) if os.path.exists(path) else {}


# ---- the resource contract (loss_slope.study.resources): never depends on --cores
def probe_cpus(wildcards):
    """k = 1..probe_k_max trainings at once, each with the variant's training threads."""
    return PACKING["probe_k_max"] * run_threads(config, wildcards.variant)


def pack_cpus(wildcards):
    return res.pack_cpus(pack_size(wildcards), run_threads(config, wildcards.variant))


def pack_work_runs(wildcards):
    """The work trees of the pack's runs (training state; not Snakemake files)."""
    v = wildcards.variant
    return [work_run(WORK_ROOT, v, r) for r in pack_members(wildcards)]


def pack_mem_mb(wildcards, attempt):
    """Grows on a retry after a kill or an error, not after a time-budget stop."""
    per_run = (
        pack_measured(wildcards).get("host_mem_mb_per_run")
        or PACKING["host_mem_mb_per_run"]
    )
    return res.pack_mem_mb(
        pack_size(wildcards),
        per_run,
        PACKING["host_mem_margin_mb"],
        res.memory_attempt(pack_work_runs(wildcards), attempt, since=INVOCATION_START),
    )


def probe_mem_mb(wildcards, attempt):
    """The probe's last level trains probe_k_max runs at once: a pack of that many runs' memory."""
    return res.pack_mem_mb(
        PACKING["probe_k_max"],
        PACKING["host_mem_mb_per_run"],
        PACKING["host_mem_margin_mb"],
        attempt,
    )


def variant_facts(variant):
    """Steps per epoch and epochs of the variant's runs (composed once, also inside a cluster job,
    so the job computes the same runtime and time budget as the controller)."""
    if variant not in FACTS:
        FACTS.update(preflight(config, {variant: RUNS_BY_VARIANT[variant]}))
    return FACTS[variant]


def pack_runtime(wildcards):
    step_s = res.pack_step_seconds(pack_measured(wildcards), pack_size(wildcards))
    if not step_s:
        return res.pack_runtime_minutes(
            0,
            None,
            margin_min=PACKING["time_margin_minutes"],
            cap_min=PACKING["runtime_minutes"],
        )
    total = variant_facts(wildcards.variant).total_steps
    v = wildcards.variant
    # a run whose settings changed since it was trained starts again (its old tree is set aside)
    left = max(
        total - res.steps_done(work_run(WORK_ROOT, v, r), settings=RUN_DIGEST.get((v, r)))
        for r in pack_members(wildcards)
    )
    return res.pack_runtime_minutes(
        left,
        step_s,
        margin_min=PACKING["time_margin_minutes"],
        cap_min=PACKING["runtime_minutes"],
        safety=PACKING["runtime_safety"],
    )


def pack_time_budget(wildcards, resources):
    """Seconds a pack's trainings may run before stopping cleanly (runtime minus the margin)."""
    return res.pack_time_budget_s(resources.runtime, PACKING["time_margin_minutes"])


def all_runs(pattern):
    return [pattern.format(variant=v, run=r) for v, r in RUNS]


def get_final_output():
    # per run: validation and fit; then the report (report_targets, report.smk); and the
    # measured N per variant: the runs of planned packs do not wait for it (planned_packs),
    # so a probe key change or --forcerun probe_capacity re-measures, and plans only new packs
    per_run = all_runs(VALIDATION_JSON)
    per_run += all_runs(FIT)
    plans = [] if FIXED_N else [n_file(v) for v in VARIANTS]
    return per_run + plans + report_targets("report")


def data_inputs(wildcards=None):
    if config["data"]["name"] == "cifar10":
        return [DATA_READY.format(name="cifar10")]
    return []


# the dataset does not depend on wildcards: a plain list, not an input function
# (Snakemake inspects and calls an input function once per job)
DATA_INPUTS = data_inputs()
