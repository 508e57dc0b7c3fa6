"""The run table: every (variant, lr, weight decay, seed) of a study.

Run ids are deterministic strings used as the ``{run}`` wildcard, e.g.
``lr0.1-wd0.0001-s0``. Each run carries the Hydra overrides that train it, so
Snakemake can pass them as per-run ``params`` (changing one run's settings
never touches another run).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from loss_slope.study.run_control import is_run_control, last_value
from loss_slope.tables.schema import RUN_IDENTITY

EXPERIMENT_OPTIMIZER = {"s_core": "sgd", "s_adamw": "adamw", "s_bn_off": "sgd", "s_narrow": "sgd"}


def exact_str(x: float) -> str:
    """``x`` as the shortest string that reads back as exactly ``x``: ``format(x, "g")`` (run names
    and overrides of ordinary values, e.g. ``0.1``, ``5e-05``) unless that rounds (it keeps 6
    significant digits), then ``repr`` (``0.0001234567``): a run trains the value the grid names."""
    x = float(x)
    short = format(x, "g")
    return short if float(short) == x else repr(x)


#: overrides that say where the data lives, not what a run trains (moving the data reruns nothing)
DATA_LOCATION_KEYS = ("data.root=",)
#: the overrides one run of a variant has of its own (the grid point), besides the data's location
PER_RUN_KEYS = ("optimizer.lr=", "optimizer.weight_decay=", "seed=")


def hydra_path(path) -> str:
    """A path as a quoted Hydra override value: a comma, ``=``, brackets or ``#`` in it would otherwise
    make a sweep or a parse error (the config schema keeps quotes and backslashes out of paths)."""
    text = str(path)
    if "'" in text or "\\" in text:
        raise ValueError(f"a path with a quote or a backslash cannot be passed to Hydra: {text!r}")
    return f"'{text}'"


def data_location_overrides(config: dict) -> list[str]:
    """Where the study's data lives now, as Hydra overrides (empty for a dataset in the package)."""
    data = config["data"]
    return [f"data.root={hydra_path(data['root'])}"] if data["name"] == "cifar10" else []


def variant_overrides(spec: RunSpec) -> list[str]:
    """``spec``'s overrides less its grid point and the data's location: what every run of its
    variant shares (a run's speed and memory depend on nothing else)."""
    return [o for o in spec.overrides if not o.startswith(PER_RUN_KEYS + DATA_LOCATION_KEYS)]


def run_id(lr: float, weight_decay: float, seed: int) -> str:
    return f"lr{exact_str(lr)}-wd{exact_str(weight_decay)}-s{int(seed)}"


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    variant: str
    run: str
    experiment: str
    optimizer: str
    lr: float
    weight_decay: float
    seed: int
    overrides: tuple[str, ...] = field(repr=False)

    @property
    def key(self) -> str:
        return f"{self.variant}/{self.run}"

    def identity(self) -> dict:
        """The run's :data:`~loss_slope.tables.schema.RUN_IDENTITY` columns, in that order."""
        return {k: getattr(self, k) for k in RUN_IDENTITY}

    def expected(self) -> dict:
        """What validation checks the logged run against (its identity less experiment and optimizer)."""
        return {k: v for k, v in self.identity().items() if k not in ("experiment", "optimizer")}


def training_overrides(config: dict) -> list[str]:
    """Hydra overrides shared by every run of the study (from ``training`` and ``data``)."""
    tr, data = config["training"], config["data"]
    out = [
        f"data={data['name']}",
        f"data.batch_size={tr['batch_size']}",
        f"trainer.epochs={tr['epochs']}",
        f"trainer.val_per_epoch={tr['val_per_epoch']}",
        f"trainer.threads={tr['threads']}",
        f"trainer.flush_every_steps={tr['flush_every_steps']}",
        f"trainer.precision={tr['precision']}",
        f"schedule={tr['schedule']}",
        f"schedule.warmup_epochs={tr['warmup_epochs']}",
    ]
    if tr["schedule"] == "cosine":
        out.append(f"schedule.min_lr_ratio={tr['min_lr_ratio']}")
    out.extend(data_location_overrides(config))
    out.extend(tr.get("hydra_overrides", []))
    return out


def planned_overrides(spec: RunSpec) -> list[str]:
    """What a pack's spec holds of ``spec``'s overrides: what the run trains, without run control.
    The pack command passes the run control and the data's location as configured when it runs
    (:func:`run_control_overrides`, :func:`data_location_overrides`), so a run-control key removed
    from the config is gone from a pack planned before the removal, as a changed one is changed
    (a spec written by an older version keeps its run control until its pack is re-planned)."""
    return [o for o in spec.overrides if not is_run_control(o)]


def run_control_overrides(config: dict, variant: str | None = None) -> list[str]:
    """The run-control overrides of ``variant``'s runs as now configured: the study-wide ones
    (``training.threads``, ``flush_every_steps``, run-control keys in ``training.hydra_overrides``),
    then the run-control keys of the variant's own ``hydra_overrides``, in the order
    :func:`build_runs` gives them, so that the variant's value wins as it does there (the data's
    location has :func:`data_location_overrides`). They are left out of a run's settings digest,
    so changing one re-plans no pack: the pack command passes them after each run's planned
    overrides, and the current values win."""
    location = set(data_location_overrides(config))
    out = [o for o in training_overrides(config) if is_run_control(o) and o not in location]
    if variant is not None:
        out += [o for o in config["variants"][variant].get("hydra_overrides", []) if is_run_control(o)]
    return out


def run_threads(config: dict, variant: str) -> int:
    """The CPU threads each of ``variant``'s trainings uses: the last ``trainer.threads`` of its
    run control (its own ``hydra_overrides`` win over ``training.threads``)."""
    return int(last_value(run_control_overrides(config, variant), "trainer.threads") or config["training"]["threads"])


def build_runs(config: dict) -> list[RunSpec]:
    """Expand a validated config into its run table (variant-major, then lr, wd, seed)."""
    shared = training_overrides(config)
    runs = []
    for variant, spec in config["variants"].items():
        grid = {**config["grid"], **spec.get("grid", {})}
        exp = spec["experiment"]
        opt = EXPERIMENT_OPTIMIZER[exp]
        for lr, wd, seed in itertools.product(grid["lr"], grid["weight_decay"], grid["seed"]):
            overrides = [f"experiment={exp}", *shared]
            if opt == "sgd":
                overrides.append(f"optimizer.momentum={config['training']['momentum']}")
            overrides += [
                *spec.get("hydra_overrides", []),
                f"optimizer.lr={exact_str(lr)}",
                f"optimizer.weight_decay={exact_str(wd)}",
                f"seed={int(seed)}",
            ]
            runs.append(
                RunSpec(
                    variant=variant,
                    run=run_id(lr, wd, seed),
                    experiment=exp,
                    optimizer=opt,
                    lr=float(lr),
                    weight_decay=float(wd),
                    seed=int(seed),
                    overrides=tuple(overrides),
                )
            )
    ids = [r.key for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"grid: values that format identically give duplicate runs {dup}")
    return runs


def wildcard_regex(names) -> str:
    """An anchored alternation of the given names, each escaped."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
