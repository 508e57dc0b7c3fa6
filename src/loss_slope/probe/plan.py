"""Packs: which runs share one GPU job. Stable and append-only.

A pack keeps its members for the life of the study. When runs are added to
the config, the existing packs are kept as they are and the new runs form new
packs, each named by a digest of its members (``pack-<10 hex>``). So adding a
seed never resubmits a pack whose runs are already trained.

The membership history lives in ``membership.json`` next to the plan
(``results/plan/{variant}/``). It is not a declared output, so Snakemake does
not delete it when ``plan_packs`` reruns; the Snakefile reads it when the
number of runs per GPU is fixed (packs known at parse time), ``plan_packs``
reads and extends it. No torch here: the Snakefile imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ENV_OVERRIDE = "WORKERS_PER_GPU"

#: overrides that say where data lives, not what a run trains: moving the data
#: must not rerun anything (the dataset is identified by its checksum instead)
_NOT_RUN_SETTINGS = ("data.root=",)


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
    """Digest of what one run trains (its Hydra overrides, minus where the data lives)."""
    kept = [o for o in overrides if not o.startswith(_NOT_RUN_SETTINGS)]
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:12]


def make_packs(runs: list[str], n: int) -> dict[str, list[str]]:
    """Consecutive groups of ``n`` runs, in run-table order (seeds of one setting stay together)."""
    return extend_packs({}, runs, n)


def extend_packs(previous: dict[str, list[str]], runs: list[str], n: int) -> dict[str, list[str]]:
    """Keep every previous pack (minus runs no longer in ``runs``); the other runs form new packs of ``n``.

    Runs removed from the config leave their pack (a pack left empty disappears);
    a run added back goes to a new pack.
    """
    if n < 1:
        raise PlanError(f"runs per GPU must be >= 1, got {n}")
    current = set(runs)
    out: dict[str, list[str]] = {}
    placed: set[str] = set()
    for name, members in previous.items():
        keep = [r for r in members if r in current and r not in placed]
        if keep:
            out[name] = keep
            placed.update(keep)
    new = [r for r in runs if r not in placed]
    for i in range(0, len(new), n):
        chunk = new[i : i + n]
        out[pack_name(chunk)] = chunk
    return out


def membership_path(plan_path) -> Path:
    return Path(plan_path).with_name("membership.json")


def read_membership(plan_path) -> dict[str, list[str]]:
    """Previous packs of a variant: the membership history, else an older plan file, else none."""
    for path in (membership_path(plan_path), Path(plan_path)):
        try:
            data = json.loads(Path(path).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        packs = data.get("packs", {})
        return {p: [m["run"] if isinstance(m, dict) else m for m in members] for p, members in packs.items()}
    return {}


def write_plan(path, *, variant: str, runs: list[dict], n: int, source: str, probe: str | None = None,
               probe_result: dict | None = None, previous: dict[str, list[str]] | None = None,
               packs: dict[str, list[str]] | None = None) -> dict:
    """``runs``: dicts with ``run`` and ``overrides`` (the Hydra overrides of that run).

    The packs are ``packs`` when given (the Snakefile computed them), else the
    previous membership extended by the runs not yet in a pack. What the probe
    measured (GPU model, step time, host memory per run) travels with the plan,
    so the packs can size their jobs and check their GPU.
    """
    if previous is None:
        previous = read_membership(path)
    by_id = {r["run"]: r for r in runs}
    if packs is None:
        packs = extend_packs(previous, [r["run"] for r in runs], n)
    measured = measured_from_probe(probe_result, n) if probe_result else {}
    plan = {
        "variant": variant, "runs_per_gpu": n, "source": source, "probe": probe, **measured,
        "packs": {p: [{"run": r, "overrides": list(by_id[r]["overrides"]),
                       "settings": run_settings_digest(by_id[r]["overrides"])} for r in members]
                  for p, members in packs.items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # history first: every pack ever planned keeps its members (append-only)
    history = {**read_membership(path), **packs}
    tmp = membership_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps({"variant": variant, "packs": history}, indent=1) + "\n")
    os.replace(tmp, membership_path(path))
    Path(path).write_text(json.dumps(plan, indent=2) + "\n")
    return plan


def measured_from_probe(probe: dict, n: int) -> dict:
    """GPU model, seconds per step with ``n`` runs sharing the GPU, host memory per run."""
    level = next((lv for lv in probe.get("levels", []) if lv.get("k") == n), None)
    steps = [s for s in (level or {}).get("step_ms", []) if s]
    host = [m for m in (level or {}).get("host_rss_mb", []) or [] if m]
    return {
        "gpu_name": probe.get("gpu_name"),
        "on_cpu": bool(probe.get("on_cpu")),
        "step_s": max(steps) / 1000.0 if steps else None,
        "host_mem_mb_per_run": max(host) if host else None,
    }


def check_probe(probe: dict, *, slurm: bool) -> None:
    """A SLURM study must be planned from a probe that ran on a GPU."""
    if slurm and (probe.get("on_cpu") or not str(probe.get("device", "")).startswith("cuda")):
        raise PlanError(
            f"the probe of {probe.get('variant')} ran on {probe.get('device')!r}, not on a GPU: refusing to plan "
            "GPU packs from a CPU measurement (fix the node/driver, or fix N with WORKERS_PER_GPU / "
            "packing.runs_per_gpu to skip the probe)")


def read_plan(path) -> dict:
    return json.loads(Path(path).read_text())


def pack_of(plan: dict, run: str) -> str:
    for p, members in plan["packs"].items():
        if any(m["run"] == run for m in members):
            return p
    raise PlanError(f"run {run} is in no pack of {plan['variant']}'s plan")


def plan_variant(config: dict, variant: str, path, *, n: int | None, source: str, probe=None,
                 slurm: bool = False) -> dict:
    """Write ``variant``'s plan: its runs from the config, its packs extended from the history.

    ``n`` None: N is the probe's (``probe`` is its JSON file); a SLURM study refuses a
    probe measured on the CPU unless the runs ask for the CPU explicitly.
    """
    from loss_slope.study.runs import build_runs

    specs = [s for s in build_runs(config) if s.variant == variant]
    probe_result = None
    if n is None:
        probe_result = json.loads(Path(probe).read_text())
        explicit_cpu = any(o in ("trainer.accelerator=cpu",) for o in (specs[0].overrides if specs else ()))
        check_probe(probe_result, slurm=slurm and not explicit_cpu)
        n = int(probe_result["runs_per_gpu"])
    return write_plan(path, variant=variant, runs=[{"run": s.run, "overrides": list(s.overrides)} for s in specs],
                      n=n, source=source, probe=str(probe) if probe else None, probe_result=probe_result)


def ensure_membership(plan_path) -> None:
    """Start the membership history from a plan written before there was one (a one-time migration)."""
    hist = membership_path(plan_path)
    if hist.exists() or not Path(plan_path).exists():
        return
    packs = read_membership(plan_path)
    if packs:
        tmp = hist.with_suffix(".tmp")
        tmp.write_text(json.dumps({"packs": packs}, indent=1) + "\n")
        os.replace(tmp, hist)
