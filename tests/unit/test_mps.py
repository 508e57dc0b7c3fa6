"""MPS for packs: command construction and the compute-mode branch, without a GPU (fake runner)."""

import json
import subprocess
from pathlib import Path

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


# ---- wired into the pack job (loss_slope.train.pack) and the probe (loss_slope.probe.capacity)
def _has_smi(name):
    return f"/usr/bin/{name}" if name in ("nvidia-smi", "nvidia-cuda-mps-control") else None


def _smi_without_mps_control(name):
    return "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None


def _no_smi(name):
    return None


def test_pack_sharing_reads_the_compute_mode_only_where_it_matters():
    from loss_slope.train.pack import gpu_sharing

    run = FakeRun("Exclusive_Process\n")
    d = gpu_sharing(3, "off", run=run, which=_has_smi, environ={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert d.runs == 1 and not d.mps and "Exclusive_Process" in d.message
    assert run.calls[0][0][-2:] == ["-i", "2"]  # the job's first visible GPU
    assert gpu_sharing(3, "on", run=FakeRun("Exclusive_Process"), which=_has_smi, environ={}) == mps.PackDecision(
        3, True, ""
    )
    # auto: what the probe chose; without a measurement (N fixed) auto means off
    assert gpu_sharing(2, "auto", chosen=True, run=FakeRun("Default"), which=_has_smi, environ={}).mps is True
    assert gpu_sharing(2, "auto", chosen=None, run=FakeRun("Default"), which=_has_smi, environ={}).mps is False
    # nothing read for one run, for runs on the CPU, or without nvidia-smi
    for kw in (
        {"requested": 1, "which": _has_smi},
        {"requested": 2, "which": _has_smi, "overrides": ["trainer.accelerator=cpu"]},
        {"requested": 2, "which": _no_smi},
    ):
        run = FakeRun("Exclusive_Process")
        d = gpu_sharing(kw.pop("requested"), "on", run=run, environ={}, **kw)
        assert not d.mps and d.message == "" and run.calls == []


def test_pack_sharing_survives_an_unreadable_compute_mode():
    from loss_slope.train.pack import gpu_sharing

    def broken(cmd, **kw):
        raise subprocess.CalledProcessError(9, cmd)

    d = gpu_sharing(2, "on", run=broken, which=_has_smi, environ={})
    assert d.runs == 2 and d.mps and "could not read" in d.message


class FakeTrainer:
    """A training process that ends with exit 0 after a few polls; counts how many run at once."""

    alive, most, envs = 0, 0, []

    def __init__(self, cmd, stdout=None, stderr=None, env=None):
        self.cmd, self.polls, self.returncode, self.pid = cmd, 0, None, 1000 + len(FakeTrainer.envs)
        FakeTrainer.envs.append(env)
        FakeTrainer.alive += 1
        FakeTrainer.most = max(FakeTrainer.most, FakeTrainer.alive)

    def poll(self):
        if self.returncode is None:
            self.polls += 1
            if self.polls >= 2:
                self.returncode = 0
                FakeTrainer.alive -= 1
        return self.returncode

    def send_signal(self, signum):
        pass


@pytest.fixture
def fake_trainers(monkeypatch):
    import loss_slope.train.pack as pack

    FakeTrainer.alive, FakeTrainer.most, FakeTrainer.envs = 0, 0, []
    monkeypatch.setattr(pack.subprocess, "Popen", FakeTrainer)
    monkeypatch.setattr(pack.time, "sleep", lambda s: None)
    return FakeTrainer


def _pack(tmp_path, n):
    from loss_slope.probe.plan import write_pack_spec

    spec = tmp_path / "spec.json"
    runs = [{"run": f"r{i}", "overrides": ["experiment=s_core"]} for i in range(n)]
    write_pack_spec(spec, tmp_path / "registry.json", variant="V", pack="pack-x", runs=runs)
    return spec


class DaemonFails(FakeRun):
    """nvidia-smi answers; the MPS daemon does not start."""

    def __call__(self, cmd, **kw):
        if cmd == ["nvidia-cuda-mps-control", "-d"]:
            self.calls.append((cmd, kw))
            raise subprocess.CalledProcessError(1, cmd, stderr="permission denied")
        return super().__call__(cmd, **kw)


def _launch(tmp_path, plan_path=None, **kw):
    """The pack launcher on a pack of 3 runs (fake trainers), its output and logs in ``tmp_path``."""
    from loss_slope.train.pack import launch_pack

    return launch_pack(
        plan_path=plan_path or _pack(tmp_path, 3),
        pack="pack-x",
        variant="V",
        output=tmp_path / "out.json",
        log_dir=tmp_path / "logs",
        work_root=tmp_path / "work",
        **kw,
    )


@pytest.mark.parametrize(
    "mode, setting, most, daemon",
    [("Default", "off", 3, False), ("Exclusive_Process", "off", 1, False), ("Exclusive_Process", "on", 3, True)],
)
def test_pack_job_trains_one_at_a_time_on_an_exclusive_gpu_and_starts_its_own_daemon(
    tmp_path, fake_trainers, capsys, mode, setting, most, daemon
):

    run = FakeRun(mode)
    code = _launch(tmp_path, mps=setting, mps_runner=run, which=_has_smi)
    assert code == 0 and fake_trainers.most == most and len(fake_trainers.envs) == 3
    out = json.loads((tmp_path / "out.json").read_text())
    assert sorted(out["runs"]) == ["r0", "r1", "r2"] and {r["status"] for r in out["runs"].values()} == {"complete"}
    cmds = [c[0] for c in run.calls]
    if daemon:
        assert cmds[1:] == [["nvidia-cuda-mps-control", "-d"], ["nvidia-cuda-mps-control"]]  # started, then stopped
        pipe = run.calls[1][1]["env"]["CUDA_MPS_PIPE_DIRECTORY"]
        assert all(env["CUDA_MPS_PIPE_DIRECTORY"] == pipe for env in fake_trainers.envs)
        assert not Path(pipe).exists()  # the job's temporary folder went with the job
    else:
        assert cmds == [mps.query_compute_mode_command("0")]
        assert all("CUDA_MPS_PIPE_DIRECTORY" not in env for env in fake_trainers.envs)
    assert ("Exclusive_Process" in capsys.readouterr().err) == (most == 1)


@pytest.mark.parametrize("chosen, daemon", [(True, True), (False, False)])
def test_pack_job_with_auto_follows_the_plan_it_reads_when_it_starts(tmp_path, fake_trainers, chosen, daemon):
    # the probe's choice is read from runs_per_gpu.json by the job, not copied into the pack's spec:
    # a probe rerun that changes it reaches the next pack job without re-planning the pack
    plan = tmp_path / "plan" / "V" / "runs_per_gpu.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(json.dumps({"variant": "V", "runs_per_gpu": 3, "source": "probe", "mps": chosen}))
    run = FakeRun("Default")
    template = str(tmp_path / "plan" / "{variant}" / "runs_per_gpu.json")
    assert _launch(tmp_path, mps="auto", mps_runner=run, which=_has_smi, measured_plan=template) == 0
    assert (["nvidia-cuda-mps-control", "-d"] in [c[0] for c in run.calls]) is daemon


def test_pack_job_without_a_measured_plan_trains_unmeasured(tmp_path, fake_trainers, capsys):
    # a pack planned while N was fixed, started while the probe now measures: no plan yet
    run = FakeRun("Default")
    template = str(tmp_path / "{variant}" / "runs_per_gpu.json")
    assert _launch(tmp_path, mps="auto", mps_runner=run, which=_has_smi, measured_plan=template) == 0
    assert len(fake_trainers.envs) == 3 and ["nvidia-cuda-mps-control", "-d"] not in [c[0] for c in run.calls]
    assert "runs_per_gpu.json does not exist (yet)" in capsys.readouterr().err


def _level(k, rate, mem=1000.0):
    from loss_slope.probe.capacity import ProbeLevel

    return ProbeLevel(k=k, aggregate_samples_per_s=rate, step_ms=[10.0] * k, peak_mem_mb=[mem] * k, oom=False)


def test_probe_auto_measures_with_and_without_a_daemon_and_keeps_the_faster():
    from loss_slope.probe.capacity import probe_capacity

    calls = []

    def level(overrides, k, *, steps, warmup, timeout, env=None, **kw):
        under = bool(env and "CUDA_MPS_PIPE_DIRECTORY" in env)
        calls.append((k, under))
        rate = {1: 100.0, 2: 150.0 if not under else 190.0, 3: 150.0 if not under else 200.0}[k]
        return _level(k, rate), [{"device": "cuda:0", "gpu_total_mb": 80_000.0, "gpu_name": "G"}]

    run = FakeRun("Default")
    res = probe_capacity(["x=1"], variant="V", k_max=3, steps=5, mps="auto", run=run, which=_has_smi, level=level)
    assert calls == [(1, False), (2, False), (3, False), (2, True), (3, True)]
    assert res["mps"] is True and res["runs_per_gpu"] == 3 and res["compute_mode"] == "Default"
    assert res["mps_compared"]["without"]["runs_per_gpu"] == 2 and res["reason"].startswith("under MPS")
    assert [c[0] for c in run.calls][1:] == [["nvidia-cuda-mps-control", "-d"], ["nvidia-cuda-mps-control"]]


def test_probe_on_an_exclusive_gpu_without_mps_measures_one_process_only():
    from loss_slope.probe.capacity import probe_capacity
    from loss_slope.probe.plan import measured_from_probe

    ks = []

    def level(overrides, k, **kw):
        ks.append(k)
        return _level(k, 100.0 * k), [{"device": "cuda:0", "gpu_total_mb": 80_000.0}]

    res = probe_capacity(
        ["x=1"], variant="V", k_max=4, steps=5, mps="off", run=FakeRun("Exclusive_Process"), which=_has_smi, level=level
    )
    assert ks == [1] and res["runs_per_gpu"] == 1 and "Exclusive_Process" in res["reason"] and res["mps"] is False
    assert measured_from_probe(res, 1)["mps"] is False
    # on the CPU (no nvidia-smi) the setting is ignored, and said so
    res = probe_capacity(["x=1"], variant="V", k_max=2, steps=5, mps="on", run=FakeRun(), which=_no_smi, level=level)
    assert res["mps"] is False and "ignored" in res["reason"]


def test_runs_left_waiting_for_a_slot_when_the_budget_ends_are_unfinished_not_done(tmp_path, fake_trainers):
    """One at a time on an exclusive GPU: a run not started before the time budget ran out makes the
    pack exit 3 (resubmit; the next attempt trains it), never a complete pack output."""
    from loss_slope.train.pack import EXIT_UNFINISHED

    code = _launch(
        tmp_path,
        plan_path=_pack(tmp_path, 2),
        extra_overrides=["trainer.max_time_s=30"],  # less than the minute a run needs to be started
        mps_runner=FakeRun("Exclusive_Process"),
        which=_has_smi,
    )
    assert code == EXIT_UNFINISHED and len(fake_trainers.envs) == 1 and not (tmp_path / "out.json").exists()


def test_without_the_mps_control_tool_the_probe_and_the_packs_go_without_mps():
    """A GPU node without nvidia-cuda-mps-control: `auto` and `on` measure and train by time-slicing,
    and say so; on an exclusive-process GPU that means one run at a time."""
    from loss_slope.probe.capacity import probe_capacity
    from loss_slope.train.pack import gpu_sharing

    calls = []

    def level(overrides, k, *, env=None, **kw):
        calls.append((k, bool(env and "CUDA_MPS_PIPE_DIRECTORY" in env)))
        return _level(k, 100.0 * k), [{"device": "cuda:0", "gpu_total_mb": 80_000.0}]

    for setting in ("auto", "on"):
        calls.clear()
        run = FakeRun("Default")
        res = probe_capacity(
            ["x=1"], variant="V", k_max=2, steps=5, mps=setting, run=run, which=_smi_without_mps_control, level=level
        )
        assert calls == [(1, False), (2, False)] and res["mps"] is False and res["mps_compared"] is None
        assert "no nvidia-cuda-mps-control here" in res["reason"]
        assert all("mps-control" not in c[0][0] for c in run.calls)  # no daemon was started
        d = gpu_sharing(3, setting, chosen=True, run=FakeRun("Default"), which=_smi_without_mps_control, environ={})
        assert d.runs == 3 and d.mps is False and "time-slice" in d.message
    res = probe_capacity(
        ["x=1"],
        variant="V",
        k_max=3,
        steps=5,
        mps="auto",
        run=FakeRun("Exclusive_Process"),
        which=_smi_without_mps_control,
        level=level,
    )
    assert res["runs_per_gpu"] == 1 and "mps-control" in res["reason"] and "Exclusive_Process" in res["reason"]
    d = gpu_sharing(3, "on", run=FakeRun("Exclusive_Process"), which=_smi_without_mps_control, environ={})
    assert d.runs == 1 and d.mps is False and "time-slice" in d.message and "Exclusive_Process" in d.message


def test_a_daemon_that_does_not_start_leaves_the_probe_measuring_without_mps():
    from loss_slope.probe.capacity import probe_capacity

    calls = []

    def level(overrides, k, *, env=None, **kw):
        calls.append((k, bool(env and "CUDA_MPS_PIPE_DIRECTORY" in env)))
        return _level(k, 100.0 * k), [{"device": "cuda:0", "gpu_total_mb": 80_000.0}]

    for setting, mode, ks in (
        ("auto", "Default", [1, 2, 3]),
        ("on", "Default", [1, 2, 3]),
        ("on", "Exclusive_Process", [1]),
    ):
        calls.clear()
        res = probe_capacity(
            ["x=1"], variant="V", k_max=3, steps=5, mps=setting, run=DaemonFails(mode), which=_has_smi, level=level
        )
        assert calls == [(k, False) for k in ks], (setting, mode)
        assert res["mps"] is False and res["mps_compared"] is None and "did not start" in res["reason"]
        assert res["runs_per_gpu"] == ks[-1]
    # one process: no daemon is started, whatever the setting (and none is needed)
    calls.clear()
    res = probe_capacity(
        ["x=1"], variant="V", k_max=1, steps=5, mps="on", run=DaemonFails(), which=_no_smi, level=level
    )
    res = probe_capacity(
        ["x=1"], variant="V", k_max=1, steps=5, mps="on", run=DaemonFails("Default"), which=_has_smi, level=level
    )
    assert calls == [(1, False), (1, False)] and res["mps"] is False and res["runs_per_gpu"] == 1


@pytest.mark.parametrize("mode, most", [("Default", 3), ("Exclusive_Process", 1)])
def test_a_pack_whose_daemon_does_not_start_trains_its_runs_by_time_slicing(
    tmp_path, fake_trainers, capsys, mode, most
):

    code = _launch(tmp_path, mps="on", mps_runner=DaemonFails(mode), which=_has_smi)
    assert code == 0 and fake_trainers.most == most and len(fake_trainers.envs) == 3
    assert all("CUDA_MPS_PIPE_DIRECTORY" not in env for env in fake_trainers.envs)
    out = json.loads((tmp_path / "out.json").read_text())
    assert {r["status"] for r in out["runs"].values()} == {"complete"}
    assert "the MPS daemon did not start" in capsys.readouterr().err


def test_the_pack_records_how_each_run_ended_for_the_next_memory_request(tmp_path, fake_trainers):
    from loss_slope.probe.plan import read_plan
    from loss_slope.study.resources import memory_attempt
    from loss_slope.train.attempts import read_launcher
    from loss_slope.train.pack import _record_error

    spec = _pack(tmp_path, 3)
    settings = next(m.get("settings") for m in read_plan(spec)["packs"]["pack-x"] if m["run"] == "r2")
    # r2 failed twice before with the same error: given up, not started again
    for _ in range(2):
        _record_error(tmp_path / "work" / "V" / "r2", attempt=1, exit_code=1, error="boom", settings=settings)
    code = _launch(tmp_path, plan_path=spec, attempt=2, which=_no_smi)
    assert code == 0 and len(fake_trainers.envs) == 2
    outcomes = {
        run: [
            (r["attempt"], r["status"]) for r in read_launcher(tmp_path / "work" / "V" / run) if r["event"] == "outcome"
        ]
        for run in ("r0", "r1", "r2")
    }
    assert outcomes == {"r0": [(2, "complete")], "r1": [(2, "complete")], "r2": [(2, "not_started")]}
    # each trainer is told the digest its pack planned it with (its start record keeps it for
    # study.resources.steps_done)
    planned = {m["run"]: m["settings"] for m in read_plan(spec)["packs"]["pack-x"]}
    assert sorted(env["LOSS_SLOPE_SETTINGS"] for env in fake_trainers.envs) == sorted([planned["r0"], planned["r1"]])
    runs = [tmp_path / "work" / "V" / r for r in ("r0", "r1")]
    assert memory_attempt(runs, 3) == 2  # attempt 2 clean; attempt 1 left no record of these runs


MEASURED_GPU, OTHER_GPU = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"


def _launch_on_gpu(tmp_path, monkeypatch, got, gpu_mismatch):
    """The pack launcher (3 fake trainers) in a job whose GPU is ``got``, the probe having measured
    N on ``MEASURED_GPU`` (runs_per_gpu.json); no CUDA needed: torch.cuda answers as that GPU would."""
    import torch

    plan = tmp_path / "plan" / "V" / "runs_per_gpu.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(
        json.dumps({"variant": "V", "runs_per_gpu": 3, "source": "probe", "mps": False, "gpu_name": MEASURED_GPU})
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: got)
    return _launch(
        tmp_path,
        mps="off",
        mps_runner=FakeRun("Default"),
        which=_has_smi,
        measured_plan=str(tmp_path / "plan" / "{variant}" / "runs_per_gpu.json"),
        gpu_mismatch=gpu_mismatch,
    )


def test_a_pack_on_another_gpu_model_than_the_probe_measured_fails_before_training(
    tmp_path, monkeypatch, fake_trainers, capsys
):
    from loss_slope.train.pack import EXIT_ERROR

    code = _launch_on_gpu(tmp_path, monkeypatch, OTHER_GPU, "fail")
    assert code == EXIT_ERROR
    assert fake_trainers.envs == [] and not (tmp_path / "out.json").exists()  # no run trained on the wrong model
    err = capsys.readouterr().err
    assert f"error: this pack got GPU {OTHER_GPU!r} but the probe measured N on {MEASURED_GPU!r}" in err
    assert "LOSS_SLOPE_SLURM_GPU_MODEL" in err and "(fail)" in err


def test_with_gpu_mismatch_warn_a_pack_on_another_gpu_model_trains_and_says_so(
    tmp_path, monkeypatch, fake_trainers, capsys
):
    code = _launch_on_gpu(tmp_path, monkeypatch, OTHER_GPU, "warn")
    assert code == 0 and len(fake_trainers.envs) == 3
    out = json.loads((tmp_path / "out.json").read_text())
    assert {r["status"] for r in out["runs"].values()} == {"complete"}
    err = capsys.readouterr().err
    assert f"warning: this pack got GPU {OTHER_GPU!r} but the probe measured N on {MEASURED_GPU!r}" in err
    assert "(warn)" in err and "error:" not in err


@pytest.mark.parametrize("gpu_mismatch", ["fail", "warn"])
def test_a_pack_on_the_measured_gpu_model_trains_without_a_word(
    tmp_path, monkeypatch, fake_trainers, capsys, gpu_mismatch
):
    assert _launch_on_gpu(tmp_path, monkeypatch, MEASURED_GPU, gpu_mismatch) == 0
    assert len(fake_trainers.envs) == 3
    assert "this pack got GPU" not in capsys.readouterr().err
