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

SNAKEFILE = """
    localrules: all, summarize
    rule all:
        input: "summary.txt"
    rule probe_capacity:
        output: "probe.json"
        shell: "touch {output}"
    rule train_pack:
        input: "probe.json"
        output: "pack_{pack}.done"
        threads: lambda wc: 3          # N = 3 runs in this pack
        shell: "touch {output}"
    rule summarize:
        input: "pack_p0.done"
        output: "summary.txt"
        shell: "touch {output}"
"""


def dry_run(
    tmp_path: Path, extra_env: dict[str, str] | None = None, cores: str | None = "1024"
) -> dict[str, dict[str, str]]:
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SLOPE_SLURM_")}
    env.update(extra_env or {})
    snakemake = Path(sys.executable).with_name("snakemake")
    r = run(
        [
            snakemake if snakemake.exists() else "snakemake",
            "--profile",
            PROFILE,
            "-n",
            *(["--cores", cores] if cores else []),
            "--directory",
            tmp_path,
        ],
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and not r.timed_out, r.stdout
    resources = {}
    for rule, res in re.findall(
        r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$",
        r.stdout,
        flags=re.M,
    ):
        resources[rule] = dict(item.split("=", 1) for item in res.split(", "))
    assert {"probe_capacity", "train_pack", "summarize"} <= set(resources), r.stdout
    return resources


def test_site_defaults(tmp_path: Path):
    res = dry_run(tmp_path)
    probe, pack = res["probe_capacity"], res["train_pack"]
    assert probe["slurm_partition"] == pack["slurm_partition"] == "gpu"
    # no account and no GPU model unless the site sets them
    assert "slurm_account" not in probe and "gpu_model" not in pack
    assert (
        probe["gpu"],
        probe["cpus_per_task"],
        probe["mem_mb"],
        probe["runtime"],
    ) == ("1", "4", "16000", "60")
    # train_pack scales with threads = N = 3 (dry_run passes --cores 1024: a
    # dry-run otherwise sets cores = 1 and caps threads to 1)
    assert (pack["gpu"], pack["cpus_per_task"], pack["mem_mb"], pack["runtime"]) == (
        "1",
        "6",
        "20000",
        "720",
    )
    assert pack["slurm_extra"] == probe["slurm_extra"] == "--begin=now+0"
    # GPU-only keys never leak onto other rules
    assert "gpu" not in res["summarize"] and "slurm_extra" not in res["summarize"]


def test_dry_run_without_cores_shows_one_run_per_pack(tmp_path: Path):
    # documented gotcha: snakemake sets cores = 1 for a dry-run, capping threads
    pack = dry_run(tmp_path, cores=None)["train_pack"]
    assert (pack["cpus_per_task"], pack["mem_mb"]) == ("2", "8000")


def test_environment_overrides(tmp_path: Path):
    res = dry_run(
        tmp_path,
        {
            "LOSS_SLOPE_SLURM_PARTITION": "debug",
            "LOSS_SLOPE_SLURM_ACCOUNT": "proj42",
            "LOSS_SLOPE_SLURM_GPU_MODEL": "a100",
        },
    )
    for rule in ("probe_capacity", "train_pack"):
        assert res[rule]["slurm_partition"] == "debug"
        assert res[rule]["slurm_account"] == "proj42"
        assert res[rule]["gpu_model"] == "a100"
    assert "gpu_model" not in res["summarize"]


def backoff_expression(env: dict[str, str]) -> str:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        with open(PROFILE / "config.yaml") as f:
            profile = yte.process_yaml(f, require_use_yte=True)
    finally:
        os.environ.clear()
        os.environ.update(old)
    exprs = {
        profile["set-resources"][rule]["slurm_extra"]
        for rule in ("probe_capacity", "train_pack")
    }
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
