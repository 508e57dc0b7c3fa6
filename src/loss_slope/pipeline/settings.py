"""The slices of the config's ``analysis`` block each stage receives as params.

Imported by the Snakefile (keep it free of numpy/matplotlib): each rule gets only
the settings it uses, so changing one reruns only the stages that read it and
never training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["analysis_problems", "canonical", "fit_settings", "study_settings", "run_identity"]


def analysis_problems(config: Mapping[str, Any]) -> list[str]:
    """Cross-key checks the JSON schema cannot express (empty list = fine)."""
    a = config["analysis"]
    problems = []
    start, end = a["fit"]["early_window"]
    if not end > start:
        problems.append(f"analysis.fit.early_window: {[start, end]} must have start < end (epochs)")
    # a window past training.epochs is refused by pre-flight (study.preflight), which knows the epochs
    return problems


def canonical(value: Any) -> Any:
    """Mappings with sorted keys, recursively.

    Snakemake compares params by their text, so the order of keys in the config
    file (or a default written out explicitly) must not make them differ.
    """
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def fit_settings(config: Mapping[str, Any]) -> dict:
    """Params of rule ``fit_run``: loss unit, fit options, divergence thresholds, time axes."""
    a = config["analysis"]
    return canonical(
        {
            "loss_unit": a["loss_unit"],
            "fit": a["fit"],
            "divergence": a["divergence"],
            "time_axis": a["time_axis"],
            "compare_time_axes": a["compare_time_axes"],
        }
    )


def study_settings(config: Mapping[str, Any]) -> dict:
    """Params of rule ``summarize``: the H1/H2 settings (and the α_early window, for the record)."""
    a = config["analysis"]
    return canonical({"study": a["study"], "early_window": list(a["fit"]["early_window"]), "time_axis": a["time_axis"]})


def run_identity(spec) -> dict:
    """The identifiers of a run (a :class:`loss_slope.study.runs.RunSpec`) for its table row
    (:data:`loss_slope.tables.schema.RUN_IDENTITY`)."""
    return spec.identity()
