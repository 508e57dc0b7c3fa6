"""The Snakemake controller as a SLURM job on the CPU partition
(profiles/slurm/controller.sbatch): it submits the GPU jobs from inside its
own allocation and waits for them."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from slurm_harness import PROFILE, Cluster, run

pytestmark = pytest.mark.slurm

SNAKEFILE = """
    localrules: all
    rule all:
        input: "pack_a.txt"
    rule train_pack:
        output: "pack_{pack}.txt"
        resources: cpus_per_task=1, mem_mb=1000, runtime=5
        shell: "echo $SLURM_JOB_ID $CUDA_VISIBLE_DEVICES > {output}"
"""


def test_controller_runs_as_a_cpu_job(slurm_cluster: Cluster, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    exe = Path(sys.executable).with_name("snakemake")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(
        slurm_cluster.env,
        LOSS_SLOPE_PROFILE=str(PROFILE),
        LOSS_SLOPE_SNAKEMAKE=str(exe if exe.exists() else "snakemake"),
    )
    cpu = slurm_cluster.env.get("LOSS_SLOPE_SLURM_CPU_PARTITION", "cpu")
    r = run(
        [
            "sbatch",
            "--wait",
            "-p",
            cpu,
            "-A",
            slurm_cluster.account,
            "--time=20",
            PROFILE / "controller.sbatch",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--latency-wait",
            "5",
        ],
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    logs = list(tmp_path.glob("lossslope-controller-*.log"))
    text = logs[0].read_text() if logs else ""
    assert r.returncode == 0, r.stdout + text[-5000:]
    controller_job = r.stdout.split()[-1]
    assert f"controller job {controller_job}" in text
    pack_job, gpu = (tmp_path / "pack_a.txt").read_text().split()
    assert pack_job != controller_job and gpu in ("0", "1")  # a separate GPU job, submitted from the CPU job
    acct = run(
        ["sacct", "-X", "-n", "-P", "-j", f"{controller_job},{pack_job}", "-o", "JobID,Partition,State,AllocTRES"],
        timeout=30,
    ).stdout
    rows = {line.split("|")[0]: line.split("|") for line in acct.splitlines() if line.strip()}
    assert rows[controller_job][1] == cpu and rows[controller_job][2] == "COMPLETED", acct
    assert rows[pack_job][1] == slurm_cluster.partition and "gres/gpu=1" in rows[pack_job][3], acct
