"""A run's identity: what it trains, independent of where it is written."""

from __future__ import annotations

import hashlib
import json

# keys that say where/how a run is written or stopped, not what it trains
_NOT_SCIENCE = {"run_dir", "output", "hydra"}
_NOT_SCIENCE_TRAINER = {"max_time_s", "flush_every_steps", "log_every_steps", "threads", "accelerator", "fault"}


def config_fingerprint(cfg: dict) -> str:
    """SHA-256 (16 hex) of the resolved config minus output paths and run-control knobs."""
    d = {k: v for k, v in cfg.items() if k not in _NOT_SCIENCE}
    if isinstance(d.get("trainer"), dict):
        d["trainer"] = {k: v for k, v in d["trainer"].items() if k not in _NOT_SCIENCE_TRAINER}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
