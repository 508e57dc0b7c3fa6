"""Pre-flight: compose every variant's training config before any job starts.

The Snakefile calls :func:`preflight` while it builds the DAG. It composes the
Hydra config of one run per variant (Hydra and OmegaConf only, no torch, about
0.1 s per variant), so a typo in ``hydra_overrides`` stops ``snakemake -n``
instead of every probe after a queue wait. An override whose value has another
type than its key's default (``trainer.epochs=3O``, ``model.batchnorm=1``) stops
it too; keys whose default is null, a string, a list or a mapping are not
type-checked. It checks the keys that depend on each other: validations per
epoch against the steps of an epoch, the warm-up and the analysis early window
against the epochs, the time margin against the job runtime, and a simulated
dataset's settings and truth window. Each problem names the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from loss_slope.study.config import ConfigError
from loss_slope.train.compose import compose_train_config
from loss_slope.train.schedule import warmup_steps
from loss_slope.train.val_schedule import exact_val_per_epoch, steps_per_epoch

#: training images per dataset (the split the loaders use)
N_TRAIN = {"digits": 1408, "cifar10": 50000}


@dataclass(frozen=True)
class VariantFacts:
    """What the composed config of a variant says about the size of its runs."""

    variant: str
    steps_per_epoch: int
    epochs: int
    accelerator: str

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def _override_key(override: str, config: dict, variant: str) -> str:
    if override in config["training"].get("hydra_overrides", []):
        return "training.hydra_overrides"
    if override in config["variants"][variant].get("hydra_overrides", []):
        return f"variants.{variant}.hydra_overrides"
    return f"variants.{variant}"


def _compose(overrides):
    return compose_train_config(list(overrides) + ["run_dir=preflight"])


def _expected_kind(default, value) -> str | None:
    """What ``value`` should have been, given its key's default (``None``: it fits, or unchecked)."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    return None


def _mistyped_overrides(cfg, overrides) -> list[tuple[str, str]]:
    """``(override, message)`` for each value override whose value's type differs from its key's default.

    Only the last override of a key is checked (it is the one that trains). The defaults are
    the config composed with the override list's group choices only (``experiment=``,
    ``data=``, ...), so an experiment's or a dataset's own values count as defaults.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups, last = [], {}
    for text, ov in zip(overrides, parsed):
        key = ov.key_or_group
        if ov.is_add() or ov.is_delete() or ov.package or key.startswith("hydra."):
            continue
        if "." not in key and (key not in cfg or isinstance(cfg[key], DictConfig)):
            groups.append(text)  # a config group choice (``experiment`` is not a key of the result)
        else:
            last[key] = (text, ov.value())
    if not last:
        return []
    base = _compose(groups)
    out = []
    for key, (text, value) in last.items():
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: typed when resolved
        default = OmegaConf.select(base, key, default=None)
        kind = _expected_kind(default, value)
        if kind:
            out.append((text, f"expected {kind} (its default is {json.dumps(default)}), got {value!r}"))
    return out


def _simulation_problem(data, config: dict) -> str | None:
    """What is wrong with a simulated dataset's ``data.simulation`` (None: nothing): its own
    ranges (``simulate.model.settings``), and its truth's α window against the analysis's."""
    from omegaconf import OmegaConf

    from loss_slope.simulate.model import settings

    try:
        sim = settings(OmegaConf.to_container(data.get("simulation"), resolve=True))
    except ValueError as exc:
        return str(exc)
    window = config.get("analysis", {}).get("fit", {}).get("early_window")
    if window and [float(v) for v in sim["early_window"]] != [float(v) for v in window]:
        return (
            f"data.simulation.early_window: {list(sim['early_window'])} differs from analysis.fit.early_window "
            f"{list(window)}: the truth's alpha_early_true would be over another window than the fits' alpha_early; "
            f"add data.simulation.early_window=[{window[0]:g},{window[1]:g}] to training.hydra_overrides"
        )
    return None


def _first_bad_override(overrides) -> str | None:
    """The first override that alone breaks composition (to name it in the error)."""
    base = [o for o in overrides if o.startswith("experiment=")]
    for o in overrides:
        if o in base:
            continue
        try:
            _compose(base + [o])
        except Exception:  # any composition error
            return o
    return None


def preflight(
    config: dict, runs_by_variant: dict, *, runtime_minutes: float | None = None, probed: bool = False
) -> dict[str, VariantFacts]:
    """Compose each variant's first run and check the cross-key rules; raise :class:`ConfigError`.

    ``probed``: N runs per GPU is to be measured by the capacity probe (not fixed), which a
    simulated dataset cannot give it: it has no training step to time."""
    from omegaconf import OmegaConf

    problems, facts, compose_errors = [], {}, {}
    for variant, specs in runs_by_variant.items():
        if not specs:
            problems.append(f"variants.{variant}: its grid gives no runs")
            continue
        overrides = list(specs[0].overrides)
        try:
            cfg = _compose(overrides)
            OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:  # Hydra/OmegaConf composition errors
            bad = _first_bad_override(overrides)
            where = _override_key(bad, config, variant) if bad else f"variants.{variant}"
            text = str(exc) + ("\n" + str(exc.__cause__) if exc.__cause__ else "")
            lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
            # Hydra's "To append to your config use +key=value" misleads for a typo
            msg = " ".join(
                ln for ln in lines if not ln.startswith(("To append", "full_key:", "object_type=", "reference_type="))
            )[:300]
            compose_errors.setdefault(f"{where}: {bad + ': ' if bad else ''}{msg}", []).append(variant)
            continue
        mistyped = _mistyped_overrides(cfg, overrides)
        for o, msg in mistyped:
            compose_errors.setdefault(f"{_override_key(o, config, variant)}: {o}: {msg}", []).append(variant)
        if mistyped:
            continue
        data = cfg.data
        if data.name == "simulated":
            sim_problem = _simulation_problem(data, config)
            if probed and not sim_problem:
                sim_problem = (
                    "packing.runs_per_gpu: a simulated study has no training step for the capacity probe "
                    "to time; fix N runs per GPU (packing.runs_per_gpu, or WORKERS_PER_GPU=N)"
                )
            if sim_problem:
                compose_errors.setdefault(sim_problem, []).append(variant)
                continue
        # a dataset that states its size (the simulated backend's n_train) is taken at its word
        n_train = int(data.n_train) if "n_train" in data else N_TRAIN.get(data.name)
        if n_train is None:
            problems.append(f"variants.{variant}: unknown dataset {data.name!r}")
            continue
        spe = steps_per_epoch(n_train, int(data.batch_size), bool(data.drop_last))
        vpe = int(cfg.trainer.val_per_epoch)
        if spe < 1:
            compose_errors.setdefault(
                f"training.batch_size: {int(data.batch_size)} is larger than the {n_train} training images of "
                f"{data.name} (no full batch: 0 steps per epoch)",
                [],
            ).append(variant)
            continue
        if vpe > spe:
            compose_errors.setdefault(
                f"training.val_per_epoch: {vpe} validations per epoch exceed the {spe} steps of an epoch "
                f"({data.name}, batch {int(data.batch_size)})",
                [],
            ).append(variant)
        elif spe // (spe // vpe) != vpe:
            compose_errors.setdefault(
                f"training.val_per_epoch: {vpe} validations per epoch of {spe} steps ({data.name}, batch "
                f"{int(data.batch_size)}) come every {spe // vpe} steps, and Lightning validates at each of its "
                f"{spe // (spe // vpe)} multiples; use one of {exact_val_per_epoch(spe, near=vpe)}",
                [],
            ).append(variant)
        epochs = int(cfg.trainer.epochs)
        facts[variant] = VariantFacts(variant, spe, epochs, str(cfg.trainer.accelerator))
        warmup = warmup_steps(cfg.schedule.warmup_epochs, spe)
        if warmup >= spe * epochs:
            compose_errors.setdefault(
                f"training.warmup_epochs: {float(cfg.schedule.warmup_epochs):g} epochs round to {warmup} "
                f"warm-up steps, not fewer than the {spe * epochs} steps of training",
                [],
            ).append(variant)
        window = config.get("analysis", {}).get("fit", {}).get("early_window")
        if window and window[1] > epochs:
            compose_errors.setdefault(
                f"analysis.fit.early_window: ends at epoch {window[1]:g}, past the last epoch ({epochs}): "
                "every run would be too_short",
                [],
            ).append(variant)
    problems = [f"{msg} (variant(s) {', '.join(vs)})" for msg, vs in compose_errors.items()] + problems
    margin = config["packing"]["time_margin_minutes"]
    # the rule the pack job's time budget applies (study.resources.pack_time_budget_s), on the
    # whole minutes a job asks for
    if runtime_minutes is not None and math.floor(runtime_minutes) - margin < 1:
        problems.append(
            f"packing.time_margin_minutes: {margin:g} leaves less than a minute of training in the pack runtime "
            f"({math.floor(runtime_minutes):g} min, whole minutes); lower it or raise the runtime"
        )
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(dict.fromkeys(problems)))
    return facts
