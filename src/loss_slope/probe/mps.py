"""CUDA MPS for a pack of runs on one GPU: commands, environment and the compute-mode check.

Without MPS the N processes of a pack time-slice the GPU: their kernels never
overlap. Under the MPS daemon (``nvidia-cuda-mps-control -d``) the processes'
kernels can run concurrently. The daemon is per job: its pipe and log folders
live inside the job's temporary folder, so two jobs on one node never share
(or kill) each other's daemon, and the folders go away with the job.

``packing.mps``: ``off`` (time-slicing), ``on`` (start a daemon for the pack),
``auto`` (the probe measures with and without it and keeps the faster).

The GPU's compute mode decides how many processes may open it:

* ``Default``: any number; MPS optional.
* ``Exclusive_Process``: one process. With an MPS daemon the runs connect through
  it (the daemon is that one process), so N > 1 works; without it runs 2..N fail
  at their first CUDA call, so N = 1.
* ``Prohibited``: no process at all.

Everything here is plain command construction and parsing, so it is tested
without a GPU (the runner that executes commands is injectable).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("loss_slope.probe")

MPS_SETTINGS = ("off", "on", "auto")
CONTROL = "nvidia-cuda-mps-control"

Runner = Callable[..., subprocess.CompletedProcess]


def query_compute_mode_command(gpu: int | str = 0) -> list[str]:
    return ["nvidia-smi", "--query-gpu=compute_mode", "--format=csv,noheader", "-i", str(gpu)]


def parse_compute_mode(text: str) -> str:
    """``nvidia-smi`` output → ``Default`` / ``Exclusive_Process`` / ``Prohibited`` (first GPU listed)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    norm = line.replace(" ", "_").lower()
    for mode in ("Default", "Exclusive_Process", "Prohibited"):
        if norm == mode.lower():
            return mode
    if norm in ("exclusive_thread", "exclusive"):  # old drivers
        return "Exclusive_Process"
    raise ValueError(f"unknown GPU compute mode {line!r}")


def compute_mode(gpu: int | str = 0, *, run: Runner = subprocess.run) -> str:
    out = run(query_compute_mode_command(gpu), capture_output=True, text=True, check=True)
    return parse_compute_mode(out.stdout)


@dataclass(frozen=True)
class PackDecision:
    runs: int  # runs of the pack allowed on the GPU
    mps: bool  # start an MPS daemon for the pack
    message: str  # why (empty when nothing had to change)


def decide(requested_runs: int, mode: str, mps: str) -> PackDecision:
    """How many runs a pack may start on a GPU in compute mode ``mode``, and whether under MPS.

    ``mps`` is the setting (``off``/``on``), or ``auto`` after the probe chose (pass what it chose).
    """
    if mps not in MPS_SETTINGS:
        raise ValueError(f"packing.mps must be one of {MPS_SETTINGS}, got {mps!r}")
    if requested_runs < 1:
        raise ValueError(f"runs per GPU must be >= 1, got {requested_runs}")
    use_mps = mps == "on" and requested_runs > 1
    if mode == "Prohibited":
        raise RuntimeError("the GPU's compute mode is Prohibited: no process may use it (nvidia-smi -c)")
    if mode == "Exclusive_Process" and requested_runs > 1 and not use_mps:
        return PackDecision(
            1,
            False,
            f"the GPU is in Exclusive_Process compute mode: one process only, so 1 run "
            f"per GPU instead of {requested_runs} (set packing.mps: on to pack runs "
            "through an MPS daemon)",
        )
    return PackDecision(requested_runs, use_mps, "")


def mps_environment(job_tmp: str | Path) -> dict[str, str]:
    """The daemon's pipe and log folders inside the job's temporary folder (created)."""
    root = Path(job_tmp)
    pipe, logs = root / "mps-pipe", root / "mps-log"
    pipe.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    return {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}


def start_command() -> list[str]:
    return [CONTROL, "-d"]


def stop_command() -> tuple[list[str], str]:
    """The command and its standard input that stop the daemon."""
    return [CONTROL], "quit\n"


class MpsDaemon:
    """``with MpsDaemon(job_tmp) as env:`` start the pack's runs with ``env`` added to their environment."""

    def __init__(
        self, job_tmp: str | Path, *, run: Runner = subprocess.run, environ: dict[str, str] | None = None
    ) -> None:
        self.job_tmp, self.run = Path(job_tmp), run
        self.base = dict(os.environ if environ is None else environ)
        self.env: dict[str, str] = {}

    def __enter__(self) -> dict[str, str]:
        self.env = mps_environment(self.job_tmp)
        self.run(start_command(), env={**self.base, **self.env}, check=True, capture_output=True, text=True)
        log.info("MPS daemon started (pipe %s)", self.env["CUDA_MPS_PIPE_DIRECTORY"])
        return dict(self.env)

    def __exit__(self, *exc) -> None:
        cmd, stdin = stop_command()
        try:
            self.run(cmd, input=stdin, env={**self.base, **self.env}, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as err:  # never mask the pack's own error
            log.warning("could not stop the MPS daemon: %s", err)


def runs_environment(base: dict[str, str], mps_env: dict[str, str] | None) -> dict[str, str]:
    """The environment of each run of the pack: the daemon's folders when MPS is on."""
    return {**base, **(mps_env or {})}


def choose_with_and_without(throughputs: dict[bool, float | None]) -> bool:
    """``auto``: the probe's aggregate samples/s without (False) and with (True) MPS → use MPS?

    MPS is kept only when it was measured and is faster; a failed MPS measurement means off.
    """
    with_mps, without = throughputs.get(True), throughputs.get(False)
    return bool(with_mps) and (not without or with_mps > without)


__all__: Sequence[str] = (
    "MPS_SETTINGS",
    "PackDecision",
    "MpsDaemon",
    "choose_with_and_without",
    "compute_mode",
    "decide",
    "mps_environment",
    "parse_compute_mode",
    "query_compute_mode_command",
    "runs_environment",
    "start_command",
    "stop_command",
)
