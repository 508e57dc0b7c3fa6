"""Helpers for the real-SLURM tests (imported by conftest.py and test_cluster.py).

Named slurm_harness, not conftest, so that `from ... import` cannot pick up
another directory's conftest module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
STATE = Path(os.environ.get("LOSS_SLOPE_SLURM_STATE", "/run/loss-slope-slurm"))


def run(cmd, timeout: float, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout kill the whole group.

    SIGTERM first (snakemake then scancels its jobs), SIGKILL 30 s later. The
    result has returncode -9/-15 and `timed_out` set, so callers can fail with
    the captured output instead of hanging.
    """
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                out, _ = proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            out = ""
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, None)
    result.timed_out = timed_out  # type: ignore[attr-defined]
    return result


def parse_env(text: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(.*)$", text, flags=re.M))


@dataclass
class Cluster:
    env: dict[str, str]  # LOSS_SLOPE_SLURM_* from `cluster.sh env`

    @property
    def partition(self) -> str:
        return self.env["LOSS_SLOPE_SLURM_PARTITION"]

    @property
    def account(self) -> str:
        return self.env["LOSS_SLOPE_SLURM_ACCOUNT"]

    @property
    def gpus(self) -> int:
        return int(self.env["LOSS_SLOPE_SLURM_GPUS"])

    def sacct(self, run_id: str) -> list[dict[str, str]]:
        """Accounting rows (allocations only) of all jobs named run_id."""
        fields = "JobIDRaw,State,ExitCode,Partition,Account,AllocTRES,ReqMem,Comment,Submit,Eligible,Start,End"
        r = run(
            [
                "sacct",
                "-X",
                "-n",
                "-P",
                "--name",
                run_id,
                "--starttime",
                "now-1days",
                "-o",
                fields,
            ],
            timeout=30,
        )
        assert r.returncode == 0, r.stdout
        names = fields.split(",")
        return [dict(zip(names, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]

    def wait_idle(self, secs: int = 300) -> None:
        r = run([CLUSTER_SH, "wait-idle", str(secs)], timeout=secs + 30)
        assert r.returncode == 0, f"cluster not idle after {secs}s:\n{r.stdout}"
