"""Schema rejections: each bad value stops before any job with a message naming the key."""

import copy

import pytest
import yaml

from _util import REPO
from loss_slope.study.config import SCHEMA_PATH, ConfigError, load_config, validate_config
from loss_slope.study.runs import build_runs

SCHEMA = SCHEMA_PATH


def demo():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_demo_and_study_configs_are_valid():
    d = load_config(REPO / "config" / "config.yaml", SCHEMA)
    assert len(build_runs(d)) == 16
    s = load_config(REPO / "config" / "study.yaml", SCHEMA)
    runs = build_runs(s)
    assert len(runs) == 216
    assert len({r.key for r in runs}) == 216
    assert {r.variant for r in runs} == {"S-core", "S-adamw", "S-bn-off", "S-narrow"}


def test_defaults_are_filled():
    cfg = validate_config({"variants": {"A": {"experiment": "s_core"}}}, SCHEMA)
    assert cfg["training"]["epochs"] == 50 and cfg["grid"]["seed"] == [0, 1, 2, 3, 4, 5]
    assert cfg["variants"]["A"]["hydra_overrides"] == []


def _set(cfg, dotted, value):
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


BAD = [
    ("grid.lr", [-0.1], "grid.lr[0]"),
    ("grid.lr", [0], "grid.lr[0]"),
    ("grid.weight_decay", ["1e-4"], "grid.weight_decay[0]"),
    ("grid.seed", [], "grid.seed"),
    ("grid.seed", [0, 0], "grid.seed"),
    ("training.epochs", 0, "training.epochs"),
    ("training.warmup_epochs", 40, "training.warmup_epochs"),
    ("training.schedule", "linear", "training.schedule"),
    ("training.val_per_epoch", 0, "training.val_per_epoch"),
    ("training.epoch", 3, "epoch"),
    ("data.name", "imagenet", "data.name"),
    ("variants.S-core.experiment", "s_core_typo", "variants.S-core.experiment"),
    ("variants.bad name;rm", {"experiment": "s_core"}, "variants"),
    ("training.hydra_overrides", ["model.x=1; rm -rf /"], "training.hydra_overrides[0]"),
    ("training.precision", "fp8", "training.precision"),
    ("training.precision", "16-mixed", "training.precision"),  # fp16: loss scaling syncs every step
    ("study", "a b", "study"),
    ("grid.lr", [float("nan")], "grid.lr[0]"),  # NaN passes every range check
    ("grid.weight_decay", [float("inf")], "grid.weight_decay[0]"),
    ("analysis.study.h2_min_abs_rho", float("nan"), "analysis.study.h2_min_abs_rho"),
    # a whole-number float is not an integer: the probe's range() and the worker's argparse refuse it
    ("packing.probe_k_max", 2.0, "packing.probe_k_max: 2.0 has the wrong type; expected integer"),
    ("training.epochs", 30.0, "training.epochs: 30.0 has the wrong type"),
    ("grid.seed", [0, 1.0], "grid.seed[1]"),
    ("grid.seed", [4294967296], "grid.seed[0]"),  # numpy's seeding takes 0 .. 2^32 - 1
    ("variants.S-adamw.grid", {"seed": [2**32]}, "variants.S-adamw.grid.seed[0]"),
    (
        "variants",
        [{"experiment": "s_core"}],
        "variants: [{'experiment': 's_core'}] has the wrong type; expected object",
    ),
]


@pytest.mark.parametrize("key,value,named", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_values_are_rejected_naming_the_key(key, value, named):
    cfg = _set(copy.deepcopy(demo()), key, value)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA)
    assert named in str(err.value)


def test_unknown_top_level_key_lists_allowed_keys():
    cfg = demo()
    cfg["grdi"] = {}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['grdi'\].*allowed keys"):
        validate_config(cfg, SCHEMA)


def test_empty_variants_rejected():
    cfg = demo()
    cfg["variants"] = {}
    with pytest.raises(ConfigError, match="variants"):
        validate_config(cfg, SCHEMA)


def test_the_first_run_is_named_by_its_grid_point():
    cfg = validate_config(demo(), SCHEMA)
    run = build_runs(cfg)[0]
    assert run.run == "lr0.05-wd0.0005-s0"
    assert "optimizer.lr=0.05" in run.overrides and "seed=0" in run.overrides


def test_variant_grid_override():
    cfg = validate_config(demo(), SCHEMA)
    adamw = [r for r in build_runs(cfg) if r.variant == "S-adamw"]
    assert sorted({r.lr for r in adamw}) == [0.001, 0.003]
    assert {r.optimizer for r in adamw} == {"adamw"}


def test_a_numeric_variant_name_is_rejected():
    cfg = copy.deepcopy(demo())
    cfg["variants"][2024] = {"experiment": "s_core"}  # YAML reads `2024:` as a number
    with pytest.raises(ConfigError, match="variants: names must be strings"):
        validate_config(cfg, SCHEMA)


@pytest.mark.parametrize("name", ["1e5", "1_000", "true", "False", "null", "nan", "inf", "0", "0.50"])
def test_a_variant_name_hydra_would_retype_is_rejected(name):
    """The trainer gets ``variant=<name>``: Hydra would record 1e5 as 100000.0, true as True."""
    cfg = copy.deepcopy(demo())
    cfg["variants"][name] = {"experiment": "s_core"}
    with pytest.raises(ConfigError, match=f"variants: \\['{name}'\\]: Hydra reads these names as numbers"):
        validate_config(cfg, SCHEMA)


def test_grid_values_are_trained_exactly_as_given():
    cfg = validate_config(demo(), SCHEMA)
    cfg["grid"]["lr"] = [0.1, 0.1000001, 0.0001234567]  # format "g" keeps 6 significant digits
    runs = [r for r in build_runs(cfg) if r.variant == "S-core"]
    for r in runs:
        (trained,) = [float(o.split("=", 1)[1]) for o in r.overrides if o.startswith("optimizer.lr=")]
        assert trained == r.lr
    assert {r.run.split("-")[0] for r in runs} == {"lr0.1", "lr0.1000001", "lr0.0001234567"}
