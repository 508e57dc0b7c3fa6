"""profiles/slurm without a cluster: what the profile resolves to (dry-run) and
the retry back-off schedule. Needs only snakemake + the SLURM executor plugin,
so it runs in plain CI (no `slurm` marker).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yte
from slurm_harness import PROFILE, run

REPO = Path(__file__).resolve().parents[2]

# the workflow's GPU rules set cpus_per_task, mem_mb and runtime themselves
# (loss_slope.study.resources); the profile adds partition, account, GPU,
# constraint, QoS and slurm_extra
SNAKEFILE = """
    localrules: all, summarize
    rule all:
        input: "summary.txt"
    rule probe_capacity:
        output: "probe.json"
        threads: 8
        resources: cpus_per_task=8, mem_mb=26000
        shell: "touch {output}"
    rule train_pack:
        input: "probe.json"
        output: "pack_{pack}.done"
        threads: 6
        resources: cpus_per_task=6, mem_mb=20000, runtime=720
        shell: "touch {output}"
    rule summarize:
        input: "pack_p0.done"
        output: "summary.txt"
        shell: "touch {output}"
"""

RESOURCES = re.compile(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", flags=re.M)


def _snakemake():
    exe = Path(sys.executable).with_name("snakemake")
    return exe if exe.exists() else "snakemake"


def dry_run(
    tmp_path: Path,
    extra_env: dict[str, str] | None = None,
    cores: str | None = None,
    args=(),
    snakefile: str | None = SNAKEFILE,
) -> dict[str, list[dict[str, str]]]:
    if snakefile is not None:
        (tmp_path / "Snakefile").write_text(textwrap.dedent(snakefile))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SLOPE_SLURM_") and k != "WORKERS_PER_GPU"}
    env.update(extra_env or {})
    r = run(
        [
            _snakemake(),
            "--profile",
            PROFILE,
            "-n",
            *(["--cores", cores] if cores else []),
            "--directory",
            tmp_path,
            *args,
        ],
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and not r.timed_out, r.stdout[-5000:]
    resources: dict[str, list[dict[str, str]]] = {}
    for rule, res in RESOURCES.findall(r.stdout):
        resources.setdefault(rule, []).append(dict(item.split("=", 1) for item in res.split(", ")))
    return resources


def test_site_defaults(tmp_path: Path):
    res = {k: v[0] for k, v in dry_run(tmp_path).items()}
    probe, pack = res["probe_capacity"], res["train_pack"]
    assert probe["slurm_partition"] == pack["slurm_partition"] == "gpu"
    # no account, GPU model, constraint or QoS unless the site sets them
    for key in ("slurm_account", "gpu_model", "constraint", "qos"):
        assert key not in probe and key not in pack
    # the rules' own CPUs and memory (the probe's: a pack of probe_k_max runs); the probe's runtime: the profile
    assert (probe["gpu"], probe["cpus_per_task"], probe["mem_mb"], probe["runtime"]) == ("1", "8", "26000", "60")
    # the rule's own CPUs, memory and runtime: the profile does not scale or replace them
    assert (pack["gpu"], pack["cpus_per_task"], pack["mem_mb"], pack["runtime"]) == ("1", "6", "20000", "720")
    assert pack["slurm_extra"] == probe["slurm_extra"] == "--begin=now+0"
    # GPU-only keys never leak onto other rules
    assert "gpu" not in res["summarize"] and "slurm_extra" not in res["summarize"]


@pytest.mark.parametrize("cores", [None, "1", "1024"])
def test_study_pack_resources_follow_the_contract_whatever_cores(tmp_path: Path, cores):
    # the real workflow: config/study.yaml with N = 3 (training.threads = 2)
    res = dry_run(
        tmp_path,
        {"WORKERS_PER_GPU": "3"},
        cores=cores,
        snakefile=None,
        args=["-s", REPO / "Snakefile", "--configfile", REPO / "config" / "study.yaml"],
    )
    packs = res["train_pack"]
    assert len(packs) == 72  # 216 runs / 3
    for pack in packs:
        # 3 x training.threads CPUs; 3 x 6000 MB + 2000 MB; packing.runtime_minutes (no probe measured)
        assert (pack["cpus_per_task"], pack["mem_mb"], pack["runtime"], pack["gpu"]) == ("6", "20000", "720", "1")


def test_study_probe_asks_for_a_pack_of_probe_k_max_runs(tmp_path: Path):
    # the real workflow, N probed: probe_k_max = 4 trainings at once, training.threads = 2
    res = dry_run(
        tmp_path,
        snakefile=None,
        args=["-s", REPO / "Snakefile", "--configfile", REPO / "config" / "study.yaml"],
    )
    probes = res["probe_capacity"]
    assert len(probes) == 4
    for probe in probes:
        # 4 x 2 CPUs; 4 x 6000 MB + 2000 MB, as a pack of 4 runs gets
        assert (probe["cpus_per_task"], probe["mem_mb"], probe["gpu"]) == ("8", "26000", "1")


def test_environment_overrides(tmp_path: Path):
    res = {
        k: v[0]
        for k, v in dry_run(
            tmp_path,
            {
                "LOSS_SLOPE_SLURM_PARTITION": "debug",
                "LOSS_SLOPE_SLURM_ACCOUNT": "proj42",
                "LOSS_SLOPE_SLURM_GPU_MODEL": "a100",
                "LOSS_SLOPE_SLURM_CONSTRAINT": "ib&gpu80g",
                "LOSS_SLOPE_SLURM_QOS": "long",
                "LOSS_SLOPE_SLURM_RUNTIME": "30",
                "LOSS_SLOPE_SLURM_EXTRA": "--reservation=r1 --exclusive",
            },
        ).items()
    }
    for rule in ("probe_capacity", "train_pack"):
        r = res[rule]
        assert (r["slurm_partition"], r["slurm_account"], r["gpu_model"]) == ("debug", "proj42", "a100")
        assert (r["constraint"], r["qos"]) == ("ib&gpu80g", "long")
        # the back-off and the extra flags share slurm_extra
        assert r["slurm_extra"] == "--begin=now+0 --reservation=r1 --exclusive"
    assert res["train_pack"]["runtime"] == "30" and res["probe_capacity"]["runtime"] == "60"
    assert "gpu_model" not in res["summarize"] and "qos" not in res["summarize"]


def test_a_runtime_override_within_the_time_margin_is_refused_at_planning(tmp_path: Path):
    # packing.time_margin_minutes is 10 in the study config: 8 minutes would leave no training time
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SLOPE_SLURM_")}
    env.update({"WORKERS_PER_GPU": "3", "LOSS_SLOPE_SLURM_RUNTIME": "8"})
    args = ["-s", REPO / "Snakefile", "--configfile", REPO / "config" / "study.yaml"]
    r = run(
        [_snakemake(), "--profile", PROFILE, "-n", "--directory", tmp_path, *args], timeout=300, env=env, cwd=tmp_path
    )
    assert r.returncode != 0
    assert "train_pack runtime 8 min leaves less than a minute of training" in r.stdout
    env["LOSS_SLOPE_SLURM_RUNTIME"] = "30"
    r = run(
        [_snakemake(), "--profile", PROFILE, "-n", "--directory", tmp_path, *args], timeout=300, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "trainer.max_time_s=1200" in r.stdout


def test_simulated_study_asks_for_no_gpu(tmp_path: Path):
    # config/simulated.yaml on a CPU partition: packs of 6 simulated runs, no GPU, small memory
    res = dry_run(
        tmp_path,
        {
            "LOSS_SLOPE_SLURM_GPUS_PER_JOB": "0",
            "LOSS_SLOPE_SLURM_PARTITION": "cpu",
            "LOSS_SLOPE_SLURM_GPU_MODEL": "a100-80gb",
        },
        snakefile=None,
        args=["-s", REPO / "Snakefile", "--configfile", REPO / "config" / "simulated.yaml"],
    )
    packs = res["train_pack"]
    assert len(packs) == 36
    for pack in packs:
        assert "gpu" not in pack and "gpu_model" not in pack and "gpus-per-node" not in pack["slurm_extra"]
        assert (pack["slurm_partition"], pack["cpus_per_task"], pack["mem_mb"]) == ("cpu", "6", "5000")


def test_hyphenated_gpu_model_goes_through_gpus_per_node(tmp_path: Path):
    # the plugin rejects "a100-80gb" as gpu_model and as a gres type
    res = {k: v[0] for k, v in dry_run(tmp_path, {"LOSS_SLOPE_SLURM_GPU_MODEL": "a100-80gb"}).items()}
    for rule in ("probe_capacity", "train_pack"):
        assert "gpu_model" not in res[rule] and "gpu" not in res[rule]
        assert res[rule]["slurm_extra"] == "--begin=now+0 --gpus-per-node=a100-80gb:1"


def backoff_expression(env: dict[str, str]) -> str:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        with open(PROFILE / "config.yaml") as f:
            profile = yte.process_yaml(f, require_use_yte=True)
    finally:
        os.environ.clear()
        os.environ.update(old)
    exprs = {profile["set-resources"][rule]["slurm_extra"] for rule in ("probe_capacity", "train_pack")}
    assert len(exprs) == 1
    return exprs.pop()


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, [0, 30, 60, 120, 240, 480, 900, 900]),
        (
            {
                "LOSS_SLOPE_SLURM_RETRY_BACKOFF_S": "5",
                "LOSS_SLOPE_SLURM_RETRY_BACKOFF_CAP_S": "12",
            },
            [0, 5, 10, 12, 12, 12, 12, 12],
        ),
    ],
)
def test_retry_backoff_schedule(env, expected):
    # the same evaluation snakemake does for every (re)submission: `attempt` is 1 on
    # the first try, 2 on the first retry, ...
    expr = backoff_expression(env)
    got = [eval(expr, {"attempt": attempt}) for attempt in range(1, 9)]
    assert got == [f"--begin=now+{s}" for s in expected]


def test_backoff_composes_with_extra_flags():
    expr = backoff_expression({"LOSS_SLOPE_SLURM_EXTRA": "--exclusive"})
    assert eval(expr, {"attempt": 3}) == "--begin=now+60 --exclusive"
