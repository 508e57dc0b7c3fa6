"""Pre-flight: a bad config stops `snakemake -n` before any job, naming the key."""

import copy
import os
import re
import subprocess

import pytest
import yaml

from _util import REPO, snakemake_bin
from loss_slope.study.config import ConfigError, load_config
from loss_slope.study.preflight import preflight
from loss_slope.study.runs import build_runs


def _by_variant(cfg):
    out = {}
    for r in build_runs(cfg):
        out.setdefault(r.variant, []).append(r)
    return out


@pytest.fixture(scope="module")
def demo():
    return load_config(REPO / "config" / "config.yaml")


def test_demo_and_study_pass_and_give_the_run_sizes(demo):
    facts = preflight(demo, _by_variant(demo), runtime_minutes=720)
    assert {f.steps_per_epoch for f in facts.values()} == {44}
    study = load_config(REPO / "config" / "study.yaml")
    facts = preflight(study, _by_variant(study), runtime_minutes=720)
    assert facts["S-core"].steps_per_epoch == 391 and facts["S-core"].total_steps == 19550


@pytest.mark.parametrize(
    "edit, key",
    [
        (
            lambda c: c["training"]["hydra_overrides"].append("model.base_widht=8"),
            "training.hydra_overrides: model.base_widht=8",
        ),
        (
            lambda c: c["variants"]["S-core"]["hydra_overrides"].append("trainer.nope=1"),
            "variants.S-core.hydra_overrides: trainer.nope=1",
        ),
        # a value of another type than the key's default: found before any job, not by the first trainer
        (
            lambda c: c["training"]["hydra_overrides"].append("model.base_width=abc"),
            "training.hydra_overrides: model.base_width=abc: expected an integer (its default is 64), got 'abc'",
        ),
        (
            lambda c: c["variants"]["S-bn-off"]["hydra_overrides"].append("trainer.epochs=2.5"),
            "variants.S-bn-off.hydra_overrides: trainer.epochs=2.5: expected an integer",
        ),
        (
            lambda c: c["training"]["hydra_overrides"].append("trainer.channels_last=1"),
            "trainer.channels_last=1: expected true or false (its default is false), got 1",
        ),
        (lambda c: c["training"].update(val_per_epoch=45), "training.val_per_epoch"),
        (lambda c: c["training"].update(batch_size=5000), "training.batch_size: 5000 is larger than"),
        # 1408 digits in batches of 128: 11 steps, 4 a validation every 2 steps, which Lightning does 5 times
        (lambda c: c["training"].update(batch_size=128), "training.val_per_epoch: 4 validations per epoch of 11 steps"),
        (lambda c: c["analysis"]["fit"].update(early_window=[5, 31]), "analysis.fit.early_window"),
        (lambda c: c["packing"].update(time_margin_minutes=720), "packing.time_margin_minutes"),
    ],
)
def test_each_problem_names_its_key(demo, edit, key):
    cfg = copy.deepcopy(demo)
    edit(cfg)
    with pytest.raises(ConfigError, match=re.escape(key)):
        preflight(cfg, _by_variant(cfg), runtime_minutes=720)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.lr=1", "optimizer.weight_decay=0"],  # an integer where the default is a float
        ["trainer.gradient_clip_val=2.0", "trainer.max_time_s=60"],  # null defaults: any value
        ["trainer.epochs=abc", "trainer.epochs=3"],  # only the last override of a key trains
        ["trainer.epochs=${trainer.val_per_epoch}", "+trainer.extra=x", "~trainer.compile"],
        ["experiment=s_bn_off", "model.batchnorm=false", "trainer.precision=bf16-mixed"],
    ],
)
def test_overrides_of_the_right_type_pass(overrides):
    from loss_slope.study.preflight import _compose, _mistyped_overrides

    cfg = _compose(overrides)
    assert _mistyped_overrides(cfg, overrides) == []


def test_the_default_is_the_groups_own(demo):
    """The default a value is checked against is the one its chosen groups give (here the
    experiment's own ``model.batchnorm: false``), and each mistyped override is named."""
    from loss_slope.study.preflight import _compose, _mistyped_overrides

    overrides = ["experiment=s_bn_off", "model.batchnorm=0", "seed=x", "trainer.monitors.hutch_matvecs=1.5"]
    found = dict(_mistyped_overrides(_compose(overrides), overrides))
    assert found == {
        "model.batchnorm=0": "expected true or false (its default is false), got 0",
        "seed=x": "expected an integer (its default is 0), got 'x'",
        "trainer.monitors.hutch_matvecs=1.5": "expected an integer (its default is 50), got 1.5",
    }


@pytest.mark.parametrize(
    "edit, key",
    [
        ({"training": {"hydra_overrides": ["model.base_widht=8"]}}, "model.base_widht"),
        ({"training": {"hydra_overrides": ["model.base_width=abc"]}}, "model.base_width=abc: expected an integer"),
        ({"training": {"val_per_epoch": 50}}, "training.val_per_epoch"),
        ({"analysis": {"fit": {"early_window": [5, 40]}}}, "analysis.fit.early_window"),
    ],
)
def test_snakemake_dry_run_stops_before_any_job(tmp_path, edit, key):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for top, sub in edit.items():
        for k, v in sub.items():
            if isinstance(v, dict):
                cfg[top][k].update(v)
            else:
                cfg[top][k] = v
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run(
        [snakemake_bin(), "-n", "-s", REPO / "Snakefile", "--configfile", "c.yaml", "--cores", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = p.stdout + p.stderr
    assert p.returncode != 0 and key in out and "config error" in out, out[-3000:]
    assert "Job stats" not in out and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "edit, key",
    [
        (
            lambda c: c["training"]["hydra_overrides"].append("data.simulation.h2.rho_cell=2"),
            "data.simulation.h2.rho_cell: 2 must be in [-1, 1]",
        ),
        (
            lambda c: c["training"]["hydra_overrides"].append("data.simulation.noise.ar_phi=1.5"),
            "data.simulation.noise.ar_phi: 1.5 must be in [0, 1)",
        ),
        (
            lambda c: c["training"]["hydra_overrides"].append("data.simulation.knee_epochs=0.5"),
            "data.simulation.knee_epochs: 0.5 must be a pair of numbers [lo, hi]",
        ),
        (
            lambda c: c["training"]["hydra_overrides"].append("data.simulation.second_break_epochs=[20]"),
            "data.simulation.second_break_epochs: [20] must be a pair of numbers [lo, hi]",
        ),
        (
            lambda c: c["training"]["hydra_overrides"].append("data.simulation.alpha=0.6"),
            "data.simulation.alpha: 0.6 must be a mapping of cell_sd, mean, within_sd",
        ),
        (
            lambda c: c["analysis"]["fit"].update(early_window=[2, 6]),
            "data.simulation.early_window: [5.0, 15.0] differs from analysis.fit.early_window [2, 6]: the truth's "
            "alpha_early_true would be over another window than the fits' alpha_early; "
            "add data.simulation.early_window=[2,6] to training.hydra_overrides",
        ),
    ],
)
def test_a_simulated_study_s_settings_are_checked_before_any_job(edit, key):
    cfg = copy.deepcopy(load_config(REPO / "config" / "simulated.yaml"))
    preflight(cfg, _by_variant(cfg), runtime_minutes=720)
    edit(cfg)
    with pytest.raises(ConfigError, match=re.escape(key)):
        preflight(cfg, _by_variant(cfg), runtime_minutes=720)


def test_the_time_margin_must_leave_a_whole_minute(demo):
    from loss_slope.study.resources import pack_runtime_minutes, pack_time_budget_s

    cfg = copy.deepcopy(demo)
    cfg["packing"]["time_margin_minutes"] = 10
    preflight(cfg, _by_variant(cfg), runtime_minutes=11.5)  # asks for 11 min: 1 min of training
    assert pack_runtime_minutes(0, None, margin_min=10, cap_min=11.5) == 11
    assert pack_time_budget_s(11, 10) == 60
    # 10.9 min is asked as 10, which the pack job's budget refuses: the dry-run says so first
    with pytest.raises(ConfigError, match=r"packing\.time_margin_minutes: 10 leaves less than a minute"):
        preflight(cfg, _by_variant(cfg), runtime_minutes=10.9)
    assert pack_runtime_minutes(19550, 5.0, margin_min=10, cap_min=10.9) == 10  # never above the cap


def test_a_warm_up_that_rounds_to_the_whole_run_is_refused(demo):
    # 44 steps an epoch, 30 epochs: 29.99 epochs round to all 1320 steps (the schedule would raise in every job)
    cfg = copy.deepcopy(demo)
    cfg["training"]["warmup_epochs"] = 29.99
    with pytest.raises(ConfigError, match=r"training\.warmup_epochs: 29\.99 epochs round to 1320 warm-up steps"):
        preflight(cfg, _by_variant(cfg), runtime_minutes=720)


def test_a_simulated_study_needs_a_fixed_n_before_any_job(tmp_path):
    """The capacity probe times a training step the simulated backend does not have: a simulated
    study whose N would be measured stops at the dry-run, not in a probe job after the queue."""
    cfg = yaml.safe_load((REPO / "config" / "simulated.yaml").read_text())
    cfg["packing"]["runs_per_gpu"] = None
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [snakemake_bin(), "-n", "-s", REPO / "Snakefile", "--configfile", "c.yaml", "--cores", "1"]
    env = {k: v for k, v in os.environ.items() if k != "WORKERS_PER_GPU"}
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "config error" in out, out[-3000:]
    assert "packing.runs_per_gpu: a simulated study has no training step for the capacity probe" in out
    p = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**env, "WORKERS_PER_GPU": "6"}
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
