import os
import shutil
import signal
import subprocess
import sys
import time
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


def signal_when(proc, ready, sig, *, group=False, timeout=240, poll_s=0.02, wait_s=60):
    """Send ``sig`` to ``proc`` (to its process group with ``group``) once ``ready()`` holds, wait up to
    ``wait_s`` for it to exit, and return its stdout (None unless piped). Fails if it ends first or
    ``timeout`` passes. The process never outlives the call (nor, with ``group``, its group): a failed
    wait does not leave a trainer running beside the next tests."""

    def send(s):
        if not group:
            proc.send_signal(s)
            return
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:  # every process of the group is gone
            pass

    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"it ended (exit {proc.returncode}) before it could be signalled"
            assert time.time() < deadline, f"not ready to be signalled after {timeout} s"
            time.sleep(poll_s)
        send(sig)
        out, _ = proc.communicate(timeout=wait_s)
    finally:
        if group or proc.poll() is None:
            send(signal.SIGKILL)
            proc.wait()
    return out


def snakemake_bin() -> str:
    exe = Path(PYTHON).with_name("snakemake")
    return str(exe) if exe.exists() else shutil.which("snakemake")
