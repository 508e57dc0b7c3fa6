"""Study-level configuration: schema validation and the run table (no torch here)."""

from loss_slope.study.config import ConfigError, load_config, validate_config
from loss_slope.study.runs import RunSpec, build_runs, run_id

__all__ = ["ConfigError", "RunSpec", "build_runs", "load_config", "run_id", "validate_config"]
