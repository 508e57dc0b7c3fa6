import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def run_cmd(args, *, cwd=None, timeout=600, env=None, check=True):
    """Run a command with a hard timeout; on failure show its output."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def snakemake_bin() -> str:
    exe = Path(PYTHON).with_name("snakemake")
    return str(exe) if exe.exists() else shutil.which("snakemake")
