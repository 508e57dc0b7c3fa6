"""Turn the probe's N (or a user's fixed N) and the run list into packs."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    return f"pack{i:03d}"


def make_packs(runs: list[str], n: int) -> dict[str, list[str]]:
    """Consecutive groups of ``n`` runs, in run-table order (seeds of one setting stay together)."""
    if n < 1:
        raise PlanError(f"runs per GPU must be >= 1, got {n}")
    return {pack_id(i // n): runs[i : i + n] for i in range(0, len(runs), n)}


def write_plan(path, *, variant: str, runs: list[dict], n: int, source: str, probe: str | None = None) -> dict:
    """``runs``: dicts with ``run`` and ``overrides`` (the Hydra overrides of that run)."""
    packs = make_packs([r["run"] for r in runs], n)
    by_id = {r["run"]: r for r in runs}
    plan = {
        "variant": variant, "runs_per_gpu": n, "source": source, "probe": probe,
        "packs": {p: [{"run": r, "overrides": list(by_id[r]["overrides"])} for r in members]
                  for p, members in packs.items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(plan, indent=2) + "\n")
    return plan


def read_plan(path) -> dict:
    return json.loads(Path(path).read_text())


def pack_of(plan: dict, run: str) -> str:
    for p, members in plan["packs"].items():
        if any(m["run"] == run for m in members):
            return p
    raise PlanError(f"run {run} is in no pack of {plan['variant']}'s plan")
