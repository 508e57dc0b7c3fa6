"""Fixtures for the real-SLURM tests: a one-node cluster run by tests/slurm/cluster.sh.

The session fixture brings the cluster up (installing Debian's SLURM packages on
first use), and brings it down at the end only if this session started it and
no other live process holds a lease on it. Set LOSS_SLOPE_SLURM_KEEP=1 to keep
a cluster this session started (the next session's `up` is then ~0.3 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under --import-mode=importlib
from slurm_harness import CLUSTER_SH, PROFILE, STATE, Cluster, parse_env, run


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests need root (cluster.sh installs packages and starts daemons)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("no SLURM client and no apt-get to install it")
    was_up = run([CLUSTER_SH, "status"], timeout=60).returncode == 0
    lease = STATE / "leases" / str(os.getpid())
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.touch()
    try:
        r = run([CLUSTER_SH, "up"], timeout=1500)
        if r.returncode == 4:  # cluster.sh: apt-get failed
            pytest.skip(f"apt-get could not install the SLURM packages:\n{r.stdout[-2000:]}")
        assert r.returncode == 0, f"cluster.sh up failed (rc {r.returncode}):\n{r.stdout}"
        env = parse_env(run([CLUSTER_SH, "env"], timeout=30).stdout)
        yield Cluster(env)
    finally:
        lease.unlink(missing_ok=True)
        if not was_up and os.environ.get("LOSS_SLOPE_SLURM_KEEP") != "1":
            run([CLUSTER_SH, "down", "--if-unused"], timeout=300)


@dataclass
class SnakemakeRun:
    result: subprocess.CompletedProcess
    workdir: Path

    @property
    def output(self) -> str:
        return self.result.stdout

    @property
    def run_id(self) -> str:
        m = re.search(r"^SLURM run ID: (\S+)$", self.output, flags=re.M)
        assert m, f"no SLURM run ID in snakemake output:\n{self.output}"
        return m.group(1)


@pytest.fixture
def run_snakemake(slurm_cluster: Cluster):
    """Run snakemake with the real profile against the test cluster.

    Partition, account and GPU model come in through the profile's documented
    environment overrides (LOSS_SLOPE_SLURM_*). Jobs left behind (timeout, failed
    assertion) are cancelled by their run id afterwards.
    """
    run_ids: list[str] = []

    def _run(
        workdir: Path,
        *args: str,
        backoff_s: int = 2,
        timeout: float = 600,
        extra_env: dict | None = None,
    ) -> SnakemakeRun:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env.update(slurm_cluster.env)
        env["LOSS_SLOPE_SLURM_RETRY_BACKOFF_S"] = str(backoff_s)
        env.update(extra_env or {})
        prefix = "lstest" + uuid.uuid4().hex[:6]
        snakemake = Path(sys.executable).with_name("snakemake")
        cmd = [
            snakemake if snakemake.exists() else "snakemake",
            "--profile",
            PROFILE,
            "--directory",
            workdir,
            "--snakefile",
            workdir / "Snakefile",
            # fast polling for tests; the profile keeps the plugin's 40 s
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--slurm-jobname-prefix",
            prefix,
            "--latency-wait",
            "5",
            *args,
        ]
        r = run(cmd, timeout=timeout, env=env, cwd=workdir)
        sm = SnakemakeRun(r, workdir)
        m = re.search(r"^SLURM run ID: (\S+)$", r.stdout, flags=re.M)
        if m:
            run_ids.append(m.group(1))
        assert not r.timed_out, f"snakemake timed out after {timeout}s:\n{r.stdout[-6000:]}"
        return sm

    yield _run
    for rid in run_ids:
        run(["scancel", "--name", rid], timeout=30)
