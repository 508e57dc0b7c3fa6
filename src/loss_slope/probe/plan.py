"""Packs: which runs share one GPU job. Stable and append-only.

A pack keeps its members for the life of the study. When runs are added to
the config, the existing packs are kept as they are and the new runs form new
packs, each named by a digest of its members (``pack-<10 hex>``). So adding a
seed never resubmits a pack whose runs are already trained.

Files (``results/plan/{variant}/``):

* ``runs_per_gpu.json``: N and what the probe measured (GPU model, time per
  step, host memory); the output of ``plan_packs`` (a checkpoint when N is
  measured). It does not depend on the run list, so adding runs never reruns it.
* ``packs/{pack}.json``: one pack's runs and their Hydra overrides (rule
  ``pack_spec``), read by the pack's GPU job. Nothing measured: the pack job reads
  ``runs_per_gpu.json`` itself when it starts, so a probe rerun changes no spec.
* ``packs.json``: the registry of every pack planned so far, ``{pack: [{run, settings}, ...]}``
  (runs removed from the config stay listed, ``dropped`` once their pack was planned again
  without them: a run added back returns to its pack).
  Not a declared output (Snakemake never deletes it); the Snakefile reads it to
  keep existing packs, ``pack_spec`` adds to it.

No torch here: the Snakefile imports this module.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from loss_slope.jsonio import write_json
from loss_slope.study.run_control import is_run_control

ENV_OVERRIDE = "WORKERS_PER_GPU"


class PlanError(ValueError):
    pass


def fixed_runs_per_gpu(config_value: int | None, environ=os.environ) -> tuple[int | None, str | None]:
    """N fixed without probing: ``WORKERS_PER_GPU`` in the environment wins over the config key."""
    env = environ.get(ENV_OVERRIDE)
    if env not in (None, ""):
        try:
            n = int(env)
        except ValueError:
            raise PlanError(f"{ENV_OVERRIDE}={env!r} is not an integer; allowed: an integer >= 1") from None
        if n < 1:
            raise PlanError(f"{ENV_OVERRIDE}={n} must be >= 1")
        return n, "env"
    if config_value is not None:
        return int(config_value), "config"
    return None, None


def pack_id(i: int) -> str:
    """Name of the i-th positional pack (plans written before packs were named by members)."""
    return f"pack{i:03d}"


def pack_name(members: list[str]) -> str:
    """A pack named by its members: the same runs always give the same name."""
    return "pack-" + hashlib.sha1(",".join(members).encode()).hexdigest()[:10]


PACK_WILDCARD = r"pack[0-9]+|pack-[0-9a-f]{10}"


def run_settings_digest(overrides) -> str:
    """Digest of what one run trains: its Hydra overrides, minus run control (where the data
    lives, threads, flushing, ...: :mod:`loss_slope.study.run_control`, the keys the run's
    fingerprint leaves out too)."""
    kept = [o for o in overrides if not is_run_control(o)]
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:12]


def make_packs(runs: list[str], n: int) -> dict[str, list[str]]:
    """Consecutive groups of ``n`` runs, in run-table order (seeds of one setting stay together)."""
    return extend_packs({}, runs, n)


def kept_packs(previous: dict[str, list[str]], runs: list[str]) -> dict[str, list[str]]:
    """The packs planned before, each minus the runs no longer in ``runs`` (a pack left empty disappears).

    Needs no N: a run planned before stays in its pack whatever N is now, so the
    workflow can find its pack without waiting for a probe (a probe rerun, or a
    switch between a fixed and a measured N, then resubmits no planned pack).
    """
    current = set(runs)
    out: dict[str, list[str]] = {}
    placed: set[str] = set()
    for name, members in previous.items():
        keep = [r for r in members if r in current and r not in placed]
        if keep:
            out[name] = keep
            placed.update(keep)
    return out


def extend_packs(previous: dict[str, list[str]], runs: list[str], n: int) -> dict[str, list[str]]:
    """Keep every previous pack (:func:`kept_packs`); the other runs form new packs of ``n``.

    Runs removed from the config leave their pack (a pack left empty disappears);
    a run added back returns to its pack (the registry keeps it listed).
    """
    if n < 1:
        raise PlanError(f"runs per GPU must be >= 1, got {n}")
    out = kept_packs(previous, runs)
    placed = {r for members in out.values() for r in members}
    new = [r for r in runs if r not in placed]
    for i in range(0, len(new), n):
        chunk = new[i : i + n]
        out[pack_name(chunk)] = chunk
    return out


def read_registry(plan_path) -> dict[str, list[dict]]:
    """The packs planned so far for a variant, ``{pack: [{"run", "settings"}, ...]}`` (none: ``{}``).

    ``settings``: the run's settings digest when its pack was planned (``None`` in a
    registry written before digests were recorded).
    """
    try:
        data = json.loads(Path(plan_path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {
        p: [m if isinstance(m, dict) else {"run": m, "settings": None} for m in members]
        for p, members in data.get("packs", {}).items()
    }


def membership(registry: dict[str, list[dict]]) -> dict[str, list[str]]:
    """The runs of each pack of a registry (:func:`read_registry`), ``{pack: [run, ...]}``."""
    return {p: [m["run"] for m in members] for p, members in registry.items()}


def pack_plan_key(planned: list[dict], members: list[str], settings: dict[str, str], finished) -> str:
    """What a pack still trains, as one string (the pack's Snakemake params): ``run:digest,...``.

    ``planned``: the pack's registry entries; ``members``: its runs still in the config
    (``settings``: their digests now). A run removed from the config after it finished
    (``finished(run)``) keeps its place with the digest it was planned with, so removing a
    grid value re-plans (and so resubmits) no pack whose runs are done; a removed run not
    finished drops out, and its pack is re-planned without it.
    """
    current, listed = set(members), {m["run"] for m in planned}
    parts = []
    # in the order planned (the registry's), so that a removal leaves the others' string as it was
    for m in planned + [{"run": r} for r in members if r not in listed]:
        r = m["run"]
        if r in current:
            parts.append(f"{r}:{settings[r]}")
        elif m.get("settings") and finished(r):
            parts.append(f"{r}:{m['settings']}")
    return ",".join(parts)


def _locked_update(path: Path, update) -> dict:
    """Read-modify-write ``path`` (JSON) under an exclusive lock on a sidecar file (local jobs, one host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        data = update(data)
        write_json(data, path, indent=1, strict=False)
    return data


def write_pack_spec(spec_path, registry_path, *, variant: str, pack: str, runs: list[dict]) -> dict:
    """Write one pack's spec (its runs with their overrides) and record the pack in the variant's registry.

    ``runs``: dicts with ``run`` and ``overrides``. The registry
    (``results/plan/{variant}/packs.json``) lists every pack ever planned with its
    runs; the next plan keeps them (append-only).
    """
    members = [
        {"run": r["run"], "overrides": list(r["overrides"]), "settings": run_settings_digest(r["overrides"])}
        for r in runs
    ]
    spec = {"variant": variant, "pack": pack, "packs": {pack: members}}
    write_json(spec, spec_path, indent=2, strict=False)

    def register(data):
        data.setdefault("variant", variant)
        entries = {m["run"]: {"run": m["run"], "settings": m["settings"]} for m in members}
        # runs removed from the config stay listed in the planned order, marked dropped (this spec
        # does not train them; pack_plan_key keeps the finished ones; one added back returns here)
        before = [m if isinstance(m, dict) else {"run": m} for m in data.setdefault("packs", {}).get(pack, [])]
        listed = [entries.pop(m["run"], None) or {**m, "dropped": True} for m in before]
        data["packs"][pack] = listed + list(entries.values())
        return data

    _locked_update(Path(registry_path), register)
    return spec


def write_runs_per_gpu(path, *, variant: str, n: int, source: str, probe=None, probe_result=None) -> dict:
    """The checkpoint's output: N for the variant and what the probe measured."""
    out = {
        "variant": variant,
        "runs_per_gpu": int(n),
        "source": source,
        "probe": str(probe) if probe else None,
        **(measured_from_probe(probe_result, int(n)) if probe_result else {}),
    }
    write_json(out, path, indent=2, strict=False)
    return out


def measured_from_probe(probe: dict, n: int) -> dict:
    """GPU model, seconds per step with ``n`` runs sharing the GPU (and with each number of runs
    the probe measured: ``step_s_by_k``, for packs planned with another N), host memory per run."""
    level = next((lv for lv in probe.get("levels", []) if lv.get("k") == n), None)
    steps = [s for s in (level or {}).get("step_ms", []) if s]
    host = [m for m in (level or {}).get("host_rss_mb", []) or [] if m]
    by_k = {}
    for lv in probe.get("levels", []):
        times = [s for s in lv.get("step_ms") or [] if s]
        if times and lv.get("k") and lv.get("aggregate_samples_per_s") is not None:  # every worker ran
            by_k[str(int(lv["k"]))] = max(times) / 1000.0
    return {
        "gpu_name": probe.get("gpu_name"),
        "on_cpu": bool(probe.get("on_cpu")),
        "step_s": max(steps) / 1000.0 if steps else None,
        "step_s_by_k": by_k,
        "host_mem_mb_per_run": max(host) if host else None,
        # packing.mps auto: whether the probe measured the packs faster under an MPS daemon
        "mps": probe.get("mps"),
    }


def plan_runs_per_gpu(path, *, variant: str, n: int | None, source: str, probe=None) -> dict:
    """Write ``runs_per_gpu.json``: a fixed ``n``, or the probe's (``probe``: its JSON file).

    Whether a plan may be used where it is (a SLURM study needs a GPU measurement) is
    :func:`check_plan`'s question, asked by the workflow when it reads the plan: the
    executor is not a property of the plan, and as a job parameter it would rerun the
    plan (and every pack) whenever the study is planned or reported from another executor.
    """
    probe_result = None
    if n is None:
        probe_result = json.loads(Path(probe).read_text())
        n = int(probe_result["runs_per_gpu"])
    return write_runs_per_gpu(path, variant=variant, n=n, source=source, probe=probe, probe_result=probe_result)


def check_plan(plan: dict, *, slurm: bool) -> None:
    """A SLURM study must be planned from a probe that ran on a GPU (``plan``: ``runs_per_gpu.json``)."""
    if slurm and plan.get("source") == "probe" and plan.get("on_cpu", True):
        raise PlanError(
            f"the probe of {plan.get('variant')} ran on the CPU, not on a GPU: refusing to plan GPU packs from a "
            "CPU measurement (fix the node/driver and rerun the probe, or fix N with WORKERS_PER_GPU / "
            "packing.runs_per_gpu to skip the probe)"
        )


def read_plan(path) -> dict:
    return json.loads(Path(path).read_text())


def pack_of(plan: dict, run: str) -> str:
    for p, members in plan["packs"].items():
        if any(m["run"] == run for m in members):
            return p
    raise PlanError(f"run {run} is in no pack of {plan['variant']}'s plan")
