"""MPS for packs: command construction and the compute-mode branch, without a GPU (fake runner)."""

import subprocess

import pytest

from loss_slope.probe import mps


class FakeRun:
    def __init__(self, stdout=""):
        self.calls, self.stdout = [], stdout

    def __call__(self, cmd, **kw):
        self.calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, stdout=self.stdout, stderr="")


@pytest.mark.parametrize(
    "text, mode",
    [
        ("Default\n", "Default"),
        ("Exclusive_Process", "Exclusive_Process"),
        ("Exclusive Process\n", "Exclusive_Process"),
        ("Prohibited", "Prohibited"),
    ],
)
def test_compute_mode_is_parsed(text, mode):
    run = FakeRun(text)
    assert mps.compute_mode(1, run=run) == mode
    assert run.calls[0][0] == ["nvidia-smi", "--query-gpu=compute_mode", "--format=csv,noheader", "-i", "1"]


def test_unknown_compute_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown GPU compute mode"):
        mps.parse_compute_mode("Weird")


def test_exclusive_process_without_mps_gives_one_run_with_a_message():
    d = mps.decide(4, "Exclusive_Process", "off")
    assert d.runs == 1 and not d.mps and "Exclusive_Process" in d.message and "packing.mps: on" in d.message
    d = mps.decide(4, "Exclusive_Process", "on")  # the daemon is the one process: runs connect through it
    assert d.runs == 4 and d.mps and d.message == ""
    assert mps.decide(4, "Default", "off") == mps.PackDecision(4, False, "")
    assert mps.decide(1, "Default", "on").mps is False  # nothing to overlap with a single run
    with pytest.raises(RuntimeError, match="Prohibited"):
        mps.decide(2, "Prohibited", "on")
    with pytest.raises(ValueError, match="packing.mps"):
        mps.decide(2, "Default", "maybe")


def test_daemon_lives_in_the_job_folder_and_is_stopped(tmp_path):
    run = FakeRun()
    with mps.MpsDaemon(tmp_path / "job", run=run, environ={"PATH": "/bin"}) as env:
        assert env == {
            "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "job" / "mps-pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "job" / "mps-log"),
        }
        assert (tmp_path / "job" / "mps-pipe").is_dir() and (tmp_path / "job" / "mps-log").is_dir()
        assert mps.runs_environment({"PATH": "/bin"}, env)["CUDA_MPS_PIPE_DIRECTORY"].startswith(str(tmp_path))
    (start, skw), (stop, tkw) = run.calls
    assert (
        start == ["nvidia-cuda-mps-control", "-d"]
        and skw["env"]["CUDA_MPS_PIPE_DIRECTORY"] == env["CUDA_MPS_PIPE_DIRECTORY"]
        and skw["env"]["PATH"] == "/bin"
    )
    assert stop == ["nvidia-cuda-mps-control"] and tkw["input"] == "quit\n" and tkw["env"] == skw["env"]


def test_daemon_is_stopped_when_the_pack_fails(tmp_path):
    run = FakeRun()
    with pytest.raises(RuntimeError, match="run failed"):
        with mps.MpsDaemon(tmp_path, run=run, environ={}):
            raise RuntimeError("run failed")
    assert [c[0] for c in run.calls] == [["nvidia-cuda-mps-control", "-d"], ["nvidia-cuda-mps-control"]]


def test_auto_keeps_mps_only_when_measured_faster():
    assert mps.choose_with_and_without({False: 100.0, True: 130.0}) is True
    assert mps.choose_with_and_without({False: 100.0, True: 90.0}) is False
    assert mps.choose_with_and_without({False: 100.0, True: None}) is False
    assert mps.runs_environment({"A": "1"}, None) == {"A": "1"}
