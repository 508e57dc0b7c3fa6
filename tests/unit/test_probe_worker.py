"""The probe worker measures what a training process holds: with monitors on, one curvature event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _util import PYTHON, REPO, run_cmd

DEMO = [
    "experiment=s_core",
    "data=digits",
    "data.batch_size=32",
    "trainer.threads=1",
    "trainer.precision=32-true",
    "model.base_width=4",
    "trainer.monitors.curvature_every_steps=220",
    "trainer.monitors.hutch_matvecs=6",
    "trainer.monitors.lambda_iters=3",
    "trainer.monitors.lambda_min_iters=2",
    "trainer.monitors.noise_every_epochs=2",
]


def probe(tmp_path, *overrides):
    out = tmp_path / "w.json"
    run_cmd(
        [
            PYTHON,
            "-m",
            "loss_slope.probe.worker",
            "--out",
            out,
            "--steps",
            "3",
            "--warmup",
            "1",
            "--",
            *DEMO,
            *overrides,
        ],
        cwd=REPO,
        timeout=300,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("batch", ["8", "null"])
def test_probe_runs_one_curvature_event_inside_its_peak_memory(tmp_path, batch):
    w = probe(tmp_path, f"trainer.monitors.curvature_batch_size={batch}")
    assert w["monitors"] == {"noise": True, "curvature": True}
    assert w["curvature_seconds"] > 0 and w["curvature_matvecs"] >= 6 + 2
    assert w["peak_mem_mb"] >= w["peak_mem_train_mb"] > 0  # the event is inside the measured peak
    assert w["step_ms"] > 0 and not w["oom"]


def test_probe_without_monitors_runs_no_event(tmp_path):
    w = probe(tmp_path, "trainer.monitors.enabled=false")
    assert w["monitors"] == {"noise": False, "curvature": False}
    assert "curvature_seconds" not in w and "peak_mem_train_mb" not in w


@pytest.mark.gpu
def test_on_a_gpu_the_curvature_event_raises_the_measured_peak(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    w = probe(tmp_path, "trainer.accelerator=gpu", "model.base_width=16", "trainer.monitors.curvature_batch_size=32")
    assert w["device"].startswith("cuda")
    assert w["peak_mem_mb"] > w["peak_mem_train_mb"]


def test_aggregate_rate_is_all_samples_over_the_shared_window():
    from loss_slope.probe.capacity import aggregate_rate

    # two processes of 1,000 samples each: one done in 1 s, the other in 2 s
    workers = [{"samples_per_s": 1000.0, "seconds": 1.0}, {"samples_per_s": 500.0, "seconds": 2.0}]
    assert aggregate_rate(workers) == pytest.approx(1000.0)  # not 1,500 (the sum of the rates)
    assert aggregate_rate([{"samples_per_s": 800.0, "seconds": 3.0}]) == pytest.approx(800.0)
    # a worker's training loop (events at the training's cadence) takes its own time for the window's steps
    loop = [
        {"samples_per_s": 1000.0, "seconds": 0.9, "loop_seconds": 1.0},
        {"samples_per_s": 500.0, "seconds": 1.5, "loop_seconds": 2.0},
    ]
    assert aggregate_rate(loop) == pytest.approx(1000.0)


def test_probe_runs_the_training_step_of_train_pack(monkeypatch):
    """The probe trains through CurveModule.training_step, the step every run of a pack takes
    (loss_slope.train.run builds the same CurveModule), with validations and a checkpoint in its window."""
    from loss_slope.probe import worker
    from loss_slope.train.checkpoint_io import AtomicCheckpointIO
    from loss_slope.train.module import CurveModule

    calls, saves, validations = [], [], []
    real_step, real_save = CurveModule.training_step, AtomicCheckpointIO.save_checkpoint
    real_val = CurveModule.validation_step

    def step(self, batch, batch_idx):
        calls.append(self.global_step)
        return real_step(self, batch, batch_idx)

    def save(self, checkpoint, path, storage_options=None):
        saves.append((checkpoint["global_step"], Path(path).name))
        return real_save(self, checkpoint, path, storage_options)

    def val(self, batch, batch_idx):
        validations.append(self.global_step)
        return real_val(self, batch, batch_idx)

    monkeypatch.setattr(CurveModule, "training_step", step)
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    monkeypatch.setattr(CurveModule, "validation_step", val)
    w = worker.measure([*DEMO, "trainer.monitors.enabled=false"], steps=4, warmup=2, barrier=None, index=0, k=1)
    assert calls == list(range(6))  # warm-up and timed steps: all through the training step
    # inside the window (steps 2..6): two validations, each timed with a best save, and one latest
    assert {2, 4} <= set(validations)
    assert sorted(saves) == [(2, "best.ckpt"), (4, "best.ckpt"), (4, "latest.ckpt")]
    loop = w["loop"]
    assert len(loop["validation_seconds"]) == 2 and loop["checkpoint_seconds"] > 0
    assert w["step_ms"] == pytest.approx(
        loop["plain_step_ms"] + loop["validation_ms"] + loop["checkpoint_ms"] + loop["curvature_ms"]
    )
    assert w["samples_per_s"] == pytest.approx(1e3 * 32 / w["step_ms"]) and not w["oom"]


def test_probe_level_runs_on_the_cpus_of_a_pack_of_k(monkeypatch, tmp_path):
    """Level k of the probe runs its k workers on k x training.threads CPUs, what a pack of k runs gets
    (train_pack asks for N x threads), not on all probe_k_max x threads CPUs of the probe job."""
    from loss_slope.probe import capacity

    assert capacity.pack_cpu_set(2, ["trainer.threads=3"], available={7, 0, 1, 2, 3, 4, 5, 6}) == [0, 1, 2, 3, 4, 5]
    assert capacity.pack_cpu_set(1, [], available={4, 5}) == [4]
    assert capacity.pack_cpu_set(3, ["trainer.threads=2"], available={0, 1}) is None  # fewer CPUs: no pinning
    cmds = []

    class Done:
        returncode, stdout = 1, None

        def __init__(self, cmd, **kw):
            cmds.append(cmd)

        def poll(self):
            return 1

        def wait(self):
            return 1

    monkeypatch.setattr(capacity.subprocess, "Popen", Done)
    monkeypatch.setattr(capacity.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    capacity.run_level(["trainer.threads=2"], 2, steps=1, warmup=1, timeout=5)
    assert all(c[c.index("--cpus") + 1] == "0,1,2,3" for c in cmds) and len(cmds) == 2


def test_gpu_memory_is_reserved_plus_the_cuda_context():
    """A GPU worker that could not measure its own context gets the k = 1 worker's; CPU workers keep RSS."""
    from loss_slope.probe.capacity import level_from_workers, measure_levels

    gpu = {"device": "cuda:0", "oom": False, "samples_per_s": 10.0, "seconds": 1.0, "step_ms": 5.0}
    own = {**gpu, "peak_mem_mb": 1500.0, "context_mb": 500.0}  # reserved 1000 + its own context 500
    unknown = {**gpu, "peak_mem_mb": 1000.0, "context_mb": None}  # reserved 1000, context not measured
    lv = level_from_workers(2, [own, unknown], [], [], context_mb=480.0)
    assert lv.peak_mem_mb == [1500.0, 1480.0]
    cpu = {"device": "cpu", "oom": False, "samples_per_s": 1.0, "seconds": 1.0, "peak_mem_mb": 700.0}
    assert level_from_workers(1, [cpu], [], [], context_mb=480.0).peak_mem_mb == [700.0]

    seen = []

    def level(overrides, k, *, context_mb=None, **kw):
        seen.append((k, context_mb))
        w = own if k == 1 else unknown
        return level_from_workers(k, [w] * k, [], [], context_mb=context_mb), [w] * k

    levels, _ = measure_levels([], [1, 2, 3], steps=1, warmup=1, timeout=1, level=level)
    assert seen == [(1, None), (2, 500.0), (3, 500.0)]  # the k = 1 worker's context, for the later levels
    assert levels[2].peak_mem_mb == [1500.0] * 3


@pytest.mark.gpu
def test_on_a_gpu_the_peak_counts_reserved_memory_and_the_context(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    w = probe(tmp_path, "trainer.accelerator=gpu", "trainer.monitors.enabled=false")
    assert w["context_mb"] and w["context_mb"] > 50  # driver, kernels, library handles
    # measured again after the steps: kernels and cuDNN/cuBLAS handles load lazily, at their first use
    assert w["context_mb"] >= w["context_start_mb"]
    assert w["peak_mem_mb"] == pytest.approx(w["peak_reserved_mb"] + w["context_mb"])
    assert w["peak_reserved_mb"] >= w["peak_allocated_mb"]


def test_nvml_is_asked_about_the_gpu_cuda_uses(monkeypatch):
    """NVML numbers every GPU of the node, CUDA the visible ones: with CUDA_VISIBLE_DEVICES=2,3 the
    probe's CUDA device 0 is NVML's GPU 2, for the device's used memory and for this process's own."""
    import sys
    import types

    from loss_slope.probe import worker

    asked = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: asked.append(i) or f"gpu{i}",
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=3 * 2**20),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [types.SimpleNamespace(pid=-1, usedGpuMemory=1)],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert worker._device_used_mb() == 3.0
    assert worker._process_gpu_mb(types.SimpleNamespace(index=1)) is None  # not listed: no figure
    assert asked == [2, 3]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert worker._nvml_index(0) == 0


def test_the_context_without_nvml_is_an_upper_bound_and_never_unknown_alone(monkeypatch):
    import torch

    from loss_slope.probe import worker

    mib = 2**20
    monkeypatch.setattr(worker, "_process_gpu_mb", lambda device: None)  # NVML missing, or blind to this pid
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 1000 * mib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (78000 * mib, 80000 * mib))
    # 2000 MiB used on the device: 1000 reserved, 300 used before this process, so a 700 MiB context
    assert worker.context_mb("cuda:0", used_before_mb=300.0, alone=True) == 700.0
    assert worker.context_mb("cuda:0", used_before_mb=None, alone=True) == 1000.0  # nothing taken off
    assert worker.context_mb("cuda:0", used_before_mb=300.0, alone=False) is None  # left to the probe
    monkeypatch.setattr(worker, "_process_gpu_mb", lambda device: 1450.0)
    assert worker.context_mb("cuda:0", used_before_mb=None, alone=False) == 450.0


def test_the_context_is_the_largest_of_its_measurements():
    from loss_slope.probe.worker import largest_context

    assert largest_context(310.0, 780.0) == 780.0  # the handles and kernels of the first steps
    assert largest_context(None, 512.0) == 512.0 and largest_context(512.0, None) == 512.0
    assert largest_context(None, None) is None and largest_context() is None


def test_loop_time_charges_each_event_at_the_training_cadence():
    """Known answer: a 1 s window of 10 steps holding three validations (the first one sets up the
    loop) and a checkpoint; the run validates every 20 steps, saves `latest` every 100 and measures
    the curvature every 500."""
    from loss_slope.probe.worker import loop_time

    cadence = {"validation": 20, "latest_steps": 100, "latest_minutes": None, "curvature": 500}
    loop = loop_time(
        window_s=1.0, steps=10, validation_s=[0.3, 0.1, 0.1], checkpoint_s=0.05, curvature_s=2.0, cadence=cadence
    )
    assert loop["plain_step_ms"] == pytest.approx(45.0)  # (1.0 - 0.5 - 0.05) s / 10 steps
    assert loop["validation_ms"] == pytest.approx(5.0)  # the median of the later ones, 0.1 s, per 20 steps
    assert loop["checkpoint_ms"] == pytest.approx(0.5)
    assert loop["curvature_ms"] == pytest.approx(4.0)
    assert loop["step_ms"] == pytest.approx(54.5)
    # a minutes cadence that comes first: 0.6 s of 50 ms loop steps = 12 steps, so 8 saves by time
    # and the epoch's own in every 100 steps
    by_time = loop_time(
        window_s=1.0,
        steps=10,
        validation_s=[0.3, 0.1, 0.1],
        checkpoint_s=0.05,
        curvature_s=None,
        cadence={**cadence, "latest_minutes": 0.01},
    )
    assert by_time["checkpoint_ms"] == pytest.approx(50.0 * 9 / 100) and by_time["curvature_ms"] == 0.0
    # a curvature event of the run's own schedule inside the window is not a step's time (it is charged apart)
    inside = loop_time(
        window_s=1.0,
        steps=10,
        validation_s=[0.3, 0.1, 0.1],
        checkpoint_s=0.05,
        monitor_s=0.2,
        curvature_s=2.0,
        cadence=cadence,
    )
    assert inside["plain_step_ms"] == pytest.approx(25.0) and inside["step_ms"] == pytest.approx(34.5)
    # no events: the window's own step
    bare = loop_time(window_s=0.5, steps=10, validation_s=[], checkpoint_s=0.0, curvature_s=None, cadence={})
    assert bare["step_ms"] == pytest.approx(50.0)


def test_latest_every_steps_follows_the_runs_schedule():
    from loss_slope.probe.worker import latest_every_steps

    assert latest_every_steps({"latest_steps": 390, "latest_minutes": 10.0}, 0.03) == 390  # an epoch < 10 min
    # 2 min per epoch of 100 steps, a save every minute: one by time inside each epoch, and the epoch's
    assert latest_every_steps({"latest_steps": 100, "latest_minutes": 1.0}, 1.2) == pytest.approx(50.0)
    assert latest_every_steps({"latest_steps": None, "latest_minutes": 1.0}, 0.5) == pytest.approx(120.0)
    assert latest_every_steps({"latest_steps": 44, "latest_minutes": None}, 0.02) == 44
    assert latest_every_steps({}, 0.02) is None


def test_the_probe_times_a_diverging_configuration_to_the_end_of_its_window():
    """The variant's default LR may diverge: the run would stop, the probe measures time and goes on;
    the curvature event on non-finite weights fails, is recorded and is not charged."""
    from loss_slope.probe import worker

    overrides = [*DEMO, "optimizer.lr=1e9", "trainer.flush_every_steps=1"]
    w = worker.measure(overrides, steps=6, warmup=2, barrier=None, index=0, k=1)
    assert w["step_ms"] > 0 and not w["oom"]
    assert w["curvature_error"].startswith("failed: CurvatureError") and w["loop"]["curvature_ms"] == 0.0


def test_the_runs_own_monitor_events_inside_the_window_are_charged_once():
    """A curvature event due inside the window (every 3 steps here) is taken out of the steps' time:
    the window is exactly its steps, validations, checkpoint and monitor events."""
    from loss_slope.probe import worker

    w = worker.measure(
        [*DEMO, "trainer.monitors.curvature_every_steps=3"], steps=6, warmup=2, barrier=None, index=0, k=1
    )
    loop = w["loop"]
    assert loop["monitor_seconds"] > 0 and w["curvature_seconds"] > 0 and loop["curvature_every"] == 3
    parts = 6 * loop["plain_step_ms"] / 1e3 + sum(loop["validation_seconds"]) + loop["checkpoint_seconds"]
    assert parts + loop["monitor_seconds"] == pytest.approx(w["seconds"])
    assert loop["curvature_ms"] == pytest.approx(1e3 * w["curvature_seconds"] / 3)


def test_the_probe_report_shows_where_a_step_goes(tmp_path):
    """The probe's table shows the training loop's step time, and its k = 1 step part by part (real PNG too)."""
    from dataclasses import asdict

    from loss_slope.probe.capacity import level_from_workers, write_probe

    loop = {"step_ms": 26.0, "plain_step_ms": 20.0, "validation_ms": 4.0, "checkpoint_ms": 0.5, "curvature_ms": 1.5}
    worker = {
        "oom": False,
        "device": "cpu",
        "step_ms": 26.0,
        "samples_per_s": 32e3 / 26.0,
        "seconds": 1.0,
        "loop_seconds": 1.04,
        "peak_mem_mb": 500.0,
        "peak_rss_mb": 500.0,
        "loop": loop,
    }
    level = level_from_workers(1, [worker], [], [])
    assert level.loop == [loop] and level.aggregate_samples_per_s == pytest.approx(32e3 / 26.0)
    result = {"variant": "S-core", "device": "cpu", "gpu_name": None, "levels": [asdict(level)]}
    result.update(runs_per_gpu=1, reason="only k = 1", note=None)
    write_probe(result, tmp_path / "p.json", tmp_path / "p.png", tmp_path / "p.md")
    md = (tmp_path / "p.md").read_text()
    assert "| 1 | 1231 | 26.0 |" in md
    assert "k = 1: 26.0 = steps 20.0 + validation 4.0 + checkpoint 0.50 + curvature 1.50" in md
    assert (tmp_path / "p.png").stat().st_size > 0


def test_a_worker_killed_at_the_time_limit_says_so():
    from loss_slope.probe.capacity import run_level

    level, workers = run_level(["trainer.accelerator=cpu"], 1, steps=5, warmup=1, timeout=1.0)
    assert workers == [] and level.errors == ["worker 0 exited -9: killed at the probe's time limit (1 s)"]


def test_a_worker_killed_before_the_time_limit_is_not_blamed_on_it():
    from loss_slope.probe.capacity import _worker_error

    assert _worker_error(-9, "", False, 600).startswith("killed by SIGKILL (sent by the host's out-of-memory killer")
    assert _worker_error(-9, "", True, 600) == "killed at the probe's time limit (600 s)"
    assert _worker_error(1, "x\nValueError: bad\n", False, 600) == "ValueError: bad"


def test_n_1_for_memory_says_how_much_one_run_needs():
    from loss_slope.probe.capacity import ProbeLevel, choose_runs_per_gpu

    alone = ProbeLevel(k=1, aggregate_samples_per_s=500.0, step_ms=[60.0], peak_mem_mb=[74000.0], oom=False)
    n, reason = choose_runs_per_gpu([alone], total_mem_mb=81559, headroom=0.9)
    assert n == 1 and reason == "one run alone needs 74000 MiB, more than 90% of the GPU's 81559 MiB; one run per GPU"
