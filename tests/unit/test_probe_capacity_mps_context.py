"""The probe's levels under an MPS daemon are charged the CUDA context measured at k = 1 without one."""

import subprocess

from loss_slope.probe.capacity import level_from_workers, measure_levels, probe_capacity

RESERVED, CONTEXT, TOTAL = 1000.0, 500.0, 4000.0  # MiB; headroom 0.9 of TOTAL holds 2 runs of 1500, not 3


class FakeRun:
    """nvidia-smi reports the Default compute mode; the MPS control tool starts and stops."""

    def __init__(self):
        self.calls = []

    def __call__(self, cmd, **kw):
        self.calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="Default\n", stderr="")


def _has_smi(name):
    return f"/usr/bin/{name}" if name in ("nvidia-smi", "nvidia-cuda-mps-control") else None


def _worker(k, *, measured_context):
    """A GPU worker's report: reserved memory, and its own context only where it could measure it."""
    return {
        "device": "cuda:0",
        "gpu_total_mb": TOTAL,
        "oom": False,
        "samples_per_s": 100.0,
        "seconds": 1.0,
        "step_ms": 5.0,
        "peak_mem_mb": RESERVED + (CONTEXT if measured_context else 0.0),
        "context_mb": CONTEXT if measured_context else None,
    }


def test_auto_charges_the_mps_levels_the_context_of_k1_without_mps():
    seen = []

    def level(overrides, k, *, env=None, context_mb=None, **kw):
        under = bool(env and "CUDA_MPS_PIPE_DIRECTORY" in env)
        seen.append((k, under, context_mb))
        # only the k = 1 worker without MPS can measure its context (NVML names no MPS client)
        workers = [_worker(k, measured_context=k == 1 and not under) for _ in range(k)]
        rate = {1: 100.0, 2: 150.0, 3: 160.0}[k] if not under else {2: 190.0, 3: 200.0}[k]
        lv = level_from_workers(k, workers, [], [], context_mb=context_mb)
        lv.aggregate_samples_per_s = rate
        return lv, workers

    res = probe_capacity(["x=1"], variant="V", k_max=3, steps=5, mps="auto", run=FakeRun(), which=_has_smi, level=level)
    assert seen == [(1, False, None), (2, False, CONTEXT), (3, False, CONTEXT), (2, True, CONTEXT), (3, True, CONTEXT)]
    with_mps = res["mps_compared"]["with"]["levels"]
    assert [lv["peak_mem_mb"] for lv in with_mps] == [[RESERVED + CONTEXT] * k for k in (1, 2, 3)]
    # three runs of 1500 MiB exceed 0.9 x 4000 MiB: under MPS as without, N = 2
    assert res["mps_compared"]["with"]["runs_per_gpu"] == 2 and res["runs_per_gpu"] == 2 and res["mps"] is True


def test_measure_levels_keeps_a_given_context_over_the_first_levels():
    seen = []

    def level(overrides, k, *, context_mb=None, **kw):
        seen.append((k, context_mb))
        workers = [_worker(k, measured_context=False) for _ in range(k)]
        return level_from_workers(k, workers, [], [], context_mb=context_mb), workers

    levels, first = measure_levels([], [2, 3], steps=1, warmup=1, timeout=1, level=level, context_mb=CONTEXT)
    assert seen == [(2, CONTEXT), (3, CONTEXT)] and len(first) == 2
    assert [lv.peak_mem_mb for lv in levels] == [[RESERVED + CONTEXT] * 2, [RESERVED + CONTEXT] * 3]


def _cpu_worker():
    return {"device": "cpu", "oom": False, "samples_per_s": 100.0, "seconds": 1.0, "step_ms": 5.0, "peak_mem_mb": 100.0}


def test_a_probe_whose_single_run_fails_is_an_error_not_n_equal_1():
    # a broken override (or node) makes the k = 1 worker exit 1: the probe job fails, naming the error,
    # instead of planning every run of the variant one per GPU for good
    import pytest

    from loss_slope.probe.capacity import ProbeFailed

    def level(overrides, k, **kw):
        return level_from_workers(k, [], ["worker 0 exited 1: full_key: model.base_width"], []), []

    with pytest.raises(ProbeFailed, match="k = 1.*full_key: model.base_width"):
        probe_capacity(["trainer.accelerator=cpu"], variant="V", k_max=2, steps=5, level=level)


def test_a_single_run_out_of_memory_still_gives_n_equal_1():
    # out of memory alone: the run trains with smaller micro-batches, one per GPU
    def level(overrides, k, **kw):
        return level_from_workers(k, [], ["worker 0 exited 1: torch.OutOfMemoryError: CUDA out of memory"], []), []

    res = probe_capacity(["trainer.accelerator=cpu"], variant="V", k_max=2, steps=5, level=level)
    assert res["runs_per_gpu"] == 1 and "no level ran cleanly" in res["reason"]


def test_a_single_run_out_of_memory_on_a_gpu_is_a_gpu_plan():
    # on a GPU node the worker died of the OOM before its report: the plan is N = 1 on the GPU,
    # which a SLURM study accepts (it was recorded as a CPU probe, which it refuses)
    from loss_slope.probe.plan import check_plan, measured_from_probe

    def level(overrides, k, **kw):
        return level_from_workers(k, [], ["worker 0 exited 1: torch.OutOfMemoryError: CUDA out of memory"], []), []

    res = probe_capacity(["x=1"], variant="V", k_max=3, steps=5, level=level, run=FakeRun(), which=_has_smi)
    assert res["runs_per_gpu"] == 1 and res["device"] == "cuda" and res["on_cpu"] is False and res["note"] is None
    assert "no worker of k = 1 reported (out of memory)" in res["reason"]
    check_plan({"variant": "V", "source": "probe", **measured_from_probe(res, 1)}, slurm=True)


def test_a_failed_second_level_still_chooses_from_the_first():
    def level(overrides, k, **kw):
        if k == 1:
            return level_from_workers(1, [_cpu_worker()], [], []), [_cpu_worker()]
        return level_from_workers(k, [_cpu_worker()], ["worker 1 exited -9: "], []), [_cpu_worker()]

    res = probe_capacity(["trainer.accelerator=cpu"], variant="V", k_max=2, steps=5, level=level)
    # chosen from the clean k = 1 level, not the fallback when no level ran cleanly
    assert res["runs_per_gpu"] == 1 and res["reason"].startswith("k=1 reaches 100 samples/s")
