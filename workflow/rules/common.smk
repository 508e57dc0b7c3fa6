import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

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


def all_runs(pattern):
    return [pattern.format(variant=v, run=r) for v, r in RUNS]


def get_final_output():
    return all_runs("results/validation/{variant}/{run}/validation.json")


def data_inputs(wildcards=None):
    if config["data"]["name"] == "cifar10" and config["data"]["download"]:
        return [f"{config['data']['root']}/cifar-10-batches-py/batches.meta"]
    return []
