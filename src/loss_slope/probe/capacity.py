"""How many runs fit on one GPU: measured, not guessed.

For k = 1..K the probe starts k worker processes that train the variant at
the same time on the same device and records, per k, the aggregate
samples/s, each process's step time and peak memory, GPU utilisation (NVML,
where available) and out-of-memory errors. :func:`choose_runs_per_gpu` picks
N: the k with the largest throughput, preferring the smaller k when within
``tolerance`` of the best, never one that hit OOM, and only when the measured
memory of k processes stays under ``headroom`` of the device.

Sharing the GPU (``packing.mps``, :mod:`loss_slope.probe.mps`): before k > 1
the GPU's compute mode is read; in ``Exclusive_Process`` mode without MPS only
k = 1 is measured (N = 1, with the reason). ``on`` measures every level under
an MPS daemon of the probe job's own (pipe and log folders in its temporary
folder); ``auto`` measures k = 1..K without and k = 2..K with a daemon, and
keeps MPS only when its chosen N is faster (the result's ``mps``). On the CPU
(no ``nvidia-smi``, or runs asking for the CPU) the setting is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loss_slope.jsonio import write_json
from loss_slope.probe import mps as MPS
from loss_slope.study.run_control import last_value
from loss_slope.train.exit_codes import killed_by


@dataclass
class ProbeLevel:
    k: int
    aggregate_samples_per_s: float | None
    step_ms: list[float]
    peak_mem_mb: list[float]
    oom: bool
    gpu_util_percent: float | None = None
    errors: list[str] = field(default_factory=list)
    #: each process's peak host memory (resident set, MiB): what a pack's --mem must hold per run
    host_rss_mb: list[float] = field(default_factory=list)
    #: each process's step time, part by part (:func:`loss_slope.probe.worker.loop_time`)
    loop: list[dict] = field(default_factory=list)


def _gpu_util_sampler():
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        torch.cuda.utilization()  # needs NVML (pynvml); raises without it
        return lambda: float(torch.cuda.utilization())
    except Exception:  # NVML is optional
        return None


def pack_cpu_set(k: int, overrides: list[str], available=None) -> list[int] | None:
    """The CPUs a pack of ``k`` runs gets: ``k x training.threads`` of this job's CPUs (the probe's
    level k runs on exactly these, not on all ``probe_k_max x threads`` the probe job holds).
    None when the job has fewer (no pinning) or the platform cannot pin."""
    if available is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        available = os.sched_getaffinity(0)
    need = k * int(last_value(overrides, "trainer.threads") or 1)
    cpus = sorted(available)
    return cpus[:need] if need <= len(cpus) else None


def run_level(
    overrides: list[str],
    k: int,
    *,
    steps: int,
    warmup: int,
    timeout: float,
    env: dict | None = None,
    context_mb: float | None = None,
) -> tuple[ProbeLevel, list[dict]]:
    cpus = pack_cpu_set(k, overrides)
    with tempfile.TemporaryDirectory(prefix=f"probe-k{k}-") as tmp:
        tmp = Path(tmp)
        procs = []
        for i in range(k):
            cmd = [
                sys.executable,
                "-m",
                "loss_slope.probe.worker",
                "--out",
                str(tmp / f"w{i}.json"),
                "--barrier",
                str(tmp / "barrier"),
                "--index",
                str(i),
                "--k",
                str(k),
                "--steps",
                str(steps),
                "--warmup",
                str(warmup),
                *(["--cpus", ",".join(map(str, cpus))] if cpus else []),
                "--",
                *overrides,
            ]
            # to a file, not a pipe: a worker writing more than a pipe holds (compile warnings) would block
            with open(tmp / f"w{i}.log", "w") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
        sampler, utils = _gpu_util_sampler(), []
        deadline = time.monotonic() + timeout
        timed_out = [False] * len(procs)  # per worker: still running at the deadline, so killed by it
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                timed_out = [p.poll() is None for p in procs]
                for p in procs:
                    p.kill()
                break
            if sampler and (tmp / "barrier").exists():
                try:
                    utils.append(sampler())
                except Exception:
                    sampler = None
            time.sleep(0.2)
        workers, errors = [], []
        for i, p in enumerate(procs):
            p.wait()
            text = (tmp / f"w{i}.log").read_text(errors="replace")
            f = tmp / f"w{i}.json"
            if p.returncode == 0 and f.exists():
                workers.append(json.loads(f.read_text()))
            else:
                why = _worker_error(p.returncode, text, timed_out[i], timeout)
                errors.append(f"worker {i} exited {p.returncode}: {why}")
                tail = "\n".join(text.strip().splitlines()[-30:])
                print(f"--- probe worker {i} of k = {k} exited {p.returncode}; its log ends:\n{tail}", file=sys.stderr)
    return level_from_workers(k, workers, errors, utils, context_mb=context_mb), workers


def _worker_error(code: int, log: str, timed_out: bool, timeout: float) -> str:
    """Why a probe worker gave no report: its log's last line, or what ended it from outside."""
    if timed_out and code == -signal.SIGKILL:
        return f"killed at the probe's time limit ({timeout:.0f} s)"
    if code is not None and code < 0:
        return killed_by(code)
    return log.strip().splitlines()[-1] if log.strip() else "(no output)"


def level_from_workers(
    k: int, workers: list[dict], errors: list[str], utils: list[float], *, context_mb: float | None = None
) -> ProbeLevel:
    """One probe level from its k workers' reports (and the GPU utilisation samples).

    Memory per worker: its ``peak_mem_mb`` (GPU: peak reserved + its CUDA context); a GPU
    worker that could not measure its own context gets ``context_mb`` (the k = 1 worker's)."""
    oom = any(w["oom"] for w in workers) or any("OutOfMemoryError" in e for e in errors)
    ok = [w for w in workers if not w["oom"]]
    agg = None
    if not oom and not errors and len(ok) == k:
        agg = aggregate_rate(ok)
    return ProbeLevel(
        k=k,
        aggregate_samples_per_s=agg,
        step_ms=[w.get("step_ms") for w in ok],
        peak_mem_mb=[_footprint(w, context_mb) for w in workers],
        oom=oom,
        gpu_util_percent=(sum(utils) / len(utils)) if utils else None,
        errors=errors,
        host_rss_mb=[w["peak_rss_mb"] for w in workers if w.get("peak_rss_mb")],
        loop=[w["loop"] for w in ok if w.get("loop")],
    )


class ProbeFailed(RuntimeError):
    """One run alone (k = 1) did not run, for a reason other than running out of memory: a
    broken config or a broken node. N is not guessed from that: the probe job fails, naming the
    worker's error, and no pack is planned for the variant until it is fixed."""


def _footprint(worker: dict, context_mb: float | None) -> float:
    on_gpu = str(worker.get("device", "")).startswith("cuda")
    if on_gpu and worker.get("context_mb") is None and context_mb:
        return worker["peak_mem_mb"] + context_mb
    return worker["peak_mem_mb"]


def aggregate_rate(workers: list[dict]) -> float:
    """Samples per second of k processes together: all their samples over the
    shared window. They start together (barrier) and the window ends when the
    slowest one is done; a sum of per-process rates would credit the slowest
    one's tail with the GPU time the others had already freed. A worker's
    seconds are its training loop's for the window's steps (``loop_seconds``:
    validations, checkpoints and curvature at the training's cadence,
    :func:`loss_slope.probe.worker.loop_time`), else the window's."""
    seconds = [w.get("loop_seconds", w["seconds"]) for w in workers]
    return sum(w["samples_per_s"] * t for w, t in zip(workers, seconds)) / max(seconds)


def choose_runs_per_gpu(
    levels: list[ProbeLevel], *, total_mem_mb: float | None, tolerance: float = 0.03, headroom: float = 0.9
) -> tuple[int, str]:
    """Pick N from the measured levels; returns (N, reason)."""
    usable = []
    for lv in levels:
        if lv.oom or lv.aggregate_samples_per_s is None:
            continue
        if total_mem_mb and lv.peak_mem_mb and max(lv.peak_mem_mb) * lv.k > headroom * total_mem_mb:
            continue
        usable.append(lv)
    if not usable:
        alone = next((lv for lv in levels if lv.k == 1 and not lv.oom and lv.aggregate_samples_per_s), None)
        if alone is not None and total_mem_mb and alone.peak_mem_mb:
            return 1, (
                f"one run alone needs {max(alone.peak_mem_mb):.0f} MiB, more than {headroom:.0%} of the GPU's "
                f"{total_mem_mb:.0f} MiB; one run per GPU"
            )
        return 1, "no level ran cleanly; falling back to one run per GPU"
    best = max(lv.aggregate_samples_per_s for lv in usable)
    for lv in sorted(usable, key=lambda lv: lv.k):
        if lv.aggregate_samples_per_s >= (1 - tolerance) * best:
            gain = lv.aggregate_samples_per_s / usable[0].aggregate_samples_per_s if usable[0].k == 1 else float("nan")
            return lv.k, (
                f"k={lv.k} reaches {lv.aggregate_samples_per_s:.0f} samples/s, within {tolerance:.0%} of "
                f"the best ({best:.0f}); packing gain vs k=1: {gain:.2f}x"
            )
    raise AssertionError("unreachable")


def measure_levels(
    overrides: list[str],
    ks,
    *,
    steps: int,
    warmup: int,
    timeout: float,
    env: dict | None = None,
    level=None,
    context_mb: float | None = None,
) -> tuple[list[ProbeLevel], list[dict]]:
    """Levels k in ``ks`` (in order), stopping at the first OOM; also the first level's workers.

    A GPU worker that cannot measure its own CUDA context is charged ``context_mb`` (the k = 1
    worker's, measured alone) when given, else the context the first level's workers measured."""
    level = level or run_level
    levels, first_workers, context = [], [], context_mb
    for k in ks:
        lv, workers = level(overrides, k, steps=steps, warmup=warmup, timeout=timeout, env=env, context_mb=context)
        levels.append(lv)
        if not first_workers:
            first_workers = workers
            if context is None:
                context = measured_context(workers)
        if lv.oom:
            break
    return levels, first_workers


def measured_context(workers: list[dict]) -> float | None:
    """The CUDA context (MiB) the first of ``workers`` that measured one reports; None when none did."""
    return next((w.get("context_mb") for w in workers if w.get("context_mb") is not None), None)


def sharing_plan(
    overrides: list[str], k_max: int, mps: str, *, run=subprocess.run, which=shutil.which, environ=os.environ
) -> dict:
    """What the probe measures: ``k_max`` (1 on an exclusive-process GPU without MPS), the
    compute mode, and whether to measure with (``on``), with and without (``auto``) or
    without (``off``) an MPS daemon. No GPU tool here (the CPU): the setting is ignored."""
    if mps not in MPS.MPS_SETTINGS:
        raise ValueError(f"packing.mps must be one of {MPS.MPS_SETTINGS}, got {mps!r}")
    on_cpu = "trainer.accelerator=cpu" in overrides
    # gpu: the runs train on an NVIDIA GPU here (its tool is found and they are not told to use the CPU)
    out = {"k_max": k_max, "compute_mode": None, "mps": mps, "note": None, "gpu": False}
    if on_cpu or which("nvidia-smi") is None:
        out["mps"] = "off"
        if mps != "off":
            why = "the runs train on the CPU" if on_cpu else "no NVIDIA GPU tool (nvidia-smi) here"
            out["note"] = f"packing.mps={mps} ignored: {why}"
        return out
    out["gpu"] = True
    if k_max <= 1:  # one process: a daemon changes nothing
        out["mps"] = "off"
        return out
    notes = []
    if mps != "off" and which(MPS.CONTROL) is None:
        notes.append(f"packing.mps={mps} ignored: no {MPS.CONTROL} here, measured without MPS")
        out["mps"] = mps = "off"
    out["note"] = "; ".join(notes) or None
    gpu = (environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    try:
        mode = out["compute_mode"] = MPS.compute_mode(gpu, run=run)
    except (OSError, subprocess.CalledProcessError, ValueError) as err:
        out["note"] = "; ".join([*notes, f"could not read the GPU's compute mode ({err}); measured as if Default"])
        return out
    if mode == "Exclusive_Process" and mps == "off":
        out["k_max"] = 1
        out["note"] = "; ".join([*notes, MPS.decide(k_max, mode, "off").message])
    elif mode == "Exclusive_Process" and mps == "auto":
        out["mps"] = "on"  # without a daemon only one process may open the GPU: nothing to compare
        out["note"] = "the GPU is in Exclusive_Process compute mode: measured under MPS only"
    elif mode == "Prohibited":
        MPS.decide(k_max, mode, mps)  # raises, naming the mode
    return out


def probe_capacity(
    overrides: list[str],
    *,
    variant: str,
    k_max: int,
    steps: int,
    warmup: int = 5,
    timeout: float = 900,
    tolerance: float = 0.03,
    headroom: float = 0.9,
    mps: str = "off",
    run=subprocess.run,
    which=shutil.which,
    level=None,
) -> dict:
    """Measure k = 1..k_max and choose N (with / without an MPS daemon per ``mps``). Stops at the first OOM."""
    plan = sharing_plan(overrides, k_max, mps, run=run, which=which)
    kw = {"steps": steps, "warmup": warmup, "timeout": timeout, "level": level}
    choose = {"tolerance": tolerance, "headroom": headroom}
    k_max, use_mps, compared = plan["k_max"], False, None
    notes = [plan["note"]] if plan["note"] else []
    measured = None
    if plan["mps"] == "on":
        measured, why = _under_daemon(overrides, range(1, k_max + 1), run=run, **kw)
        use_mps = measured is not None
        if why:
            notes.append(why)
            if plan["compute_mode"] == "Exclusive_Process":  # without a daemon only one process may open it
                k_max = 1
    if measured is None:
        measured = measure_levels(overrides, range(1, k_max + 1), **kw)
    levels, first_workers = measured
    alone = levels[0] if levels else None
    if alone is not None and alone.k == 1 and alone.errors and not alone.oom:
        raise ProbeFailed(
            f"probe of {variant}: one run alone (k = 1) did not run: {'; '.join(alone.errors)}. "
            "Not a CUDA out-of-memory error, so N is not guessed: fix the cause (the worker's log is above; a kill "
            "by the host's out-of-memory killer or the probe's time limit is named in it) and rerun"
        )
    w0 = first_workers[0] if first_workers else {}
    total = w0.get("gpu_total_mb")
    n, reason = choose_runs_per_gpu(levels, total_mem_mb=total, **choose)
    shared = None
    if plan["mps"] == "auto" and k_max > 1:
        # MPS clients are never named by NVML: the levels under MPS are charged the context of k = 1 without it
        context = measured_context(first_workers)
        shared, why = _under_daemon(overrides, range(2, k_max + 1), run=run, context_mb=context, **kw)
        if why:
            notes.append(why)
    if shared is not None:
        shared_levels, _ = shared
        with_mps = [levels[0], *shared_levels]  # k = 1 is one process: a daemon changes nothing for it
        n_mps, reason_mps = choose_runs_per_gpu(with_mps, total_mem_mb=total, **choose)
        rate = {
            False: _rate(levels, n),
            True: _rate(with_mps, n_mps) if n_mps > 1 else None,
        }
        use_mps = MPS.choose_with_and_without(rate)
        compared = {
            "without": {"runs_per_gpu": n, "samples_per_s": rate[False], "levels": [asdict(lv) for lv in levels]},
            "with": {"runs_per_gpu": n_mps, "samples_per_s": rate[True], "levels": [asdict(lv) for lv in with_mps]},
        }
        if use_mps:
            levels, n, reason = with_mps, n_mps, f"under MPS: {reason_mps}"
    device = w0.get("device", "unknown")
    if not first_workers and plan["gpu"]:
        # every worker of k = 1 died before its report (out of memory: N = 1): the GPU is still the device
        device = "cuda"
        notes.append("no worker of k = 1 reported (out of memory): device and GPU model not measured")
    if notes:
        reason = f"{reason} ({'; '.join(notes)})"
    return {
        "variant": variant,
        "device": device,
        "gpu_name": w0.get("gpu_name"),
        "gpu_total_mb": total,
        "on_cpu": not device.startswith("cuda"),
        "note": None if device.startswith("cuda") else "no GPU here: measured concurrent processes on the CPU",
        "k_max": k_max,
        "steps": steps,
        "warmup": warmup,
        "tolerance": tolerance,
        "headroom": headroom,
        "levels": [asdict(lv) for lv in levels],
        "runs_per_gpu": n,
        "reason": reason,
        "source": "probe",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "compute_mode": plan["compute_mode"],
        "mps_setting": mps,
        "mps": use_mps and n > 1,
        "mps_compared": compared,
    }


def _under_daemon(overrides: list[str], ks, *, run, **kw):
    """``measure_levels`` of ``ks`` under an MPS daemon of the probe's own, and None; or None and why,
    when the daemon does not start (then nothing was measured)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="probe-mps-"))
        try:
            menv = stack.enter_context(MPS.MpsDaemon(tmp, run=run))
        except (OSError, subprocess.CalledProcessError) as err:
            return None, f"the MPS daemon did not start ({err}): measured without MPS"
        return measure_levels(overrides, ks, env=MPS.runs_environment(dict(os.environ), menv), **kw), None


def _rate(levels: list[ProbeLevel], k: int) -> float | None:
    return next((lv.aggregate_samples_per_s for lv in levels if lv.k == k), None)


def plot_probe(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = [x for x in result["levels"]]
    ks = [x["k"] for x in lv]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ks, [x["aggregate_samples_per_s"] or 0 for x in lv], "o-")
    for x in lv:
        if x["oom"]:
            a.annotate("OOM", (x["k"], 0), color="red")
    a.axvline(result["runs_per_gpu"], color="grey", ls="--", label=f"chosen N = {result['runs_per_gpu']}")
    a.set(xlabel="concurrent runs k", ylabel="aggregate samples / s", xticks=ks)
    a.legend()
    b.plot(ks, [max(x["peak_mem_mb"]) if x["peak_mem_mb"] else 0 for x in lv], "o-")
    b.set(xlabel="concurrent runs k", ylabel="peak memory per process (MiB)", xticks=ks)
    dev = result.get("gpu_name") or result["device"]
    fig.suptitle(f"{result['variant']}: {result['runs_per_gpu']} run(s) per device on {dev}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_probe(result: dict, json_path, png_path, md_path) -> None:
    write_json(result, json_path, indent=2, strict=False)
    plot_probe(result, png_path)
    lines = [
        f"### Probe: {result['variant']} on {result.get('gpu_name') or result['device']}",
        "",
        "| k | samples/s (all) | step ms (each) | peak MiB (each; GPU: reserved + CUDA context) | GPU util % | OOM |",
        "|---|---:|---|---|---:|---|",
    ]
    for x in result["levels"]:
        sps = f"{x['aggregate_samples_per_s']:.0f}" if x["aggregate_samples_per_s"] else "—"
        util = f"{x['gpu_util_percent']:.0f}" if x["gpu_util_percent"] is not None else "n/a"
        lines.append(
            f"| {x['k']} | {sps} | {', '.join(f'{v:.1f}' for v in x['step_ms'] if v)} | "
            f"{', '.join(f'{v:.0f}' for v in x['peak_mem_mb'])} | {util} | {'yes' if x['oom'] else 'no'} |"
        )
    lines += ["", f"Chosen N = **{result['runs_per_gpu']}**: {result['reason']}."]
    one = next((x["loop"][0] for x in result["levels"] if x["k"] == 1 and x.get("loop")), None)
    if one:
        lines.append(
            "Step ms: the training loop's time per step, each event at the training's cadence; k = 1: "
            f"{one['step_ms']:.1f} = steps {one['plain_step_ms']:.1f} + validation {one['validation_ms']:.1f} + "
            f"checkpoint {one['checkpoint_ms']:.2f} + curvature {one['curvature_ms']:.2f}."
        )
    if result.get("note"):
        lines.append(f"Note: {result['note']}.")
    Path(md_path).write_text("\n".join(lines) + "\n")
