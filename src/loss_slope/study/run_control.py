"""What is run control, not science: the config keys that say where or how a run is written,
stopped or resourced, not what it trains.

One list for both judges of a run's identity: the run's fingerprint
(:func:`loss_slope.train.fingerprint.config_fingerprint`, over its composed config), which
decides whether a work tree holds this run, and the settings digest of its overrides
(:func:`loss_slope.probe.plan.run_settings_digest`), which decides whether the workflow
re-plans its pack and reruns its jobs. Changing a key listed here does neither.
"""

from __future__ import annotations

__all__ = [
    "NOT_SCIENCE",
    "NOT_SCIENCE_DATA",
    "NOT_SCIENCE_SIMULATION",
    "NOT_SCIENCE_TRAINER",
    "is_run_control",
    "last_value",
]

#: top-level keys: where the run is written, and Hydra's own settings
NOT_SCIENCE = frozenset({"run_dir", "output", "hydra"})
#: ``trainer.*``: how the run is written, stopped and resourced
NOT_SCIENCE_TRAINER = frozenset(
    {
        "max_time_s",
        "flush_every_steps",
        "log_every_steps",
        "threads",
        "accelerator",
        "fault",
        "best_top_k",  # checkpoint retention
        "checkpoint",  # when and how the latest checkpoint is written
        "oom",  # the smallest micro-batch an out-of-memory fallback may use (the micro-batch in use is checkpointed)
    }
)
#: ``data.*``: where the data is (it enters by its checksum), evaluation chunking, and the builder
#: (``_target_``: code, named once per data.name)
NOT_SCIENCE_DATA = frozenset({"root", "eval_batch_size", "download", "_target_"})
#: ``data.simulation.*``: how fast or how durably a simulated run is written, not what it simulates
NOT_SCIENCE_SIMULATION = frozenset({"pace_s_per_chunk", "fsync"})


def is_run_control(override: str) -> bool:
    """Whether a Hydra override (``trainer.threads=2``, ``+trainer.fault.fail_run=r``, ``~key``)
    sets a run-control key or one inside it."""
    parts = override.lstrip("+~").split("=", 1)[0].strip().split(".")
    if parts[0] in NOT_SCIENCE:
        return True
    if len(parts) > 1 and parts[0] == "trainer":
        return parts[1] in NOT_SCIENCE_TRAINER
    if len(parts) > 1 and parts[0] == "data":
        if parts[1] == "simulation":
            return len(parts) > 2 and parts[2] in NOT_SCIENCE_SIMULATION
        return parts[1] in NOT_SCIENCE_DATA
    return False


def last_value(overrides, key: str) -> str | None:
    """The value of ``key`` a list of Hydra overrides leaves (``trainer.threads=2``, ``+key=v``,
    ``++key=v``; the last one wins, as in Hydra), as written; None when none sets it or a later
    ``~key`` deletes it."""
    value = None
    for o in overrides:
        name, eq, v = o.partition("=")
        if name.strip() == "~" + key:
            value = None
        elif eq and name.lstrip("+").strip() == key:
            value = v.strip()
    return value
