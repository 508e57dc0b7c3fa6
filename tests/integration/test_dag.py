"""The real Snakemake DAG on a tiny config, plus dry-run planning of the study."""

import json
import time

import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from _util import REPO, run_cmd, snakemake_bin

TINY = {
    "study": "tiny",
    "data": {"name": "digits"},
    "training": {
        "epochs": 3,
        "batch_size": 32,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "threads": 1,
        "flush_every_steps": 20,
        "hydra_overrides": ["model.base_width=4"],
    },
    "variants": {"S-core": {"experiment": "s_core"}, "S-bn-off": {"experiment": "s_bn_off"}},
    "grid": {"lr": [0.05], "weight_decay": [0.0005], "seed": [0, 1]},
    "packing": {"probe_k_max": 2, "probe_steps": 5, "probe_warmup_steps": 2},
    "analysis": {"fit": {"early_window": [1, 3], "window_shift": 1}},  # pre-flight: within the 3 epochs
}


def snakemake(workdir, *args, timeout=900):
    return run_cmd(
        [snakemake_bin(), "-s", REPO / "Snakefile", "--directory", workdir, "--cores", "2", *args], timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    wd = tmp_path_factory.mktemp("dag")
    (wd / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(wd, "--configfile", wd / "tiny.yaml")
    return wd


RUNS = [
    ("S-core", "lr0.05-wd0.0005-s0"),
    ("S-core", "lr0.05-wd0.0005-s1"),
    ("S-bn-off", "lr0.05-wd0.0005-s0"),
    ("S-bn-off", "lr0.05-wd0.0005-s1"),
]


@pytest.mark.parametrize("variant,run", RUNS)
def test_every_run_has_parquet_and_a_passed_validation(tiny_study, variant, run):
    rep = json.loads((tiny_study / f"results/validation/{variant}/{run}/validation.json").read_text())
    assert rep["passed"], rep["reasons"]
    assert rep["n_steps"] == 132 and rep["n_val"] == 12
    steps = pd.read_parquet(tiny_study / f"results/parquet/steps/variant={variant}/run={run}/part-0.parquet")
    assert steps.step.tolist() == list(range(132))
    assert (
        (steps.loss_train_bits - steps.loss_train_nats / 0.6931471805599453).abs() <= 1e-9 * steps.loss_train_bits.abs()
    ).all()


def test_parquet_is_one_queryable_dataset(tiny_study):
    d = ds.dataset(tiny_study / "results/parquet/steps", format="parquet", partitioning="hive")
    t = d.to_table(columns=["variant", "run", "step", "loss_train_nats"]).to_pandas()
    assert len(t) == 4 * 132
    assert set(t.variant) == {"S-core", "S-bn-off"}
    assert t.groupby(["variant", "run"]).step.nunique().eq(132).all()


def test_rerun_is_a_noop(tiny_study):
    out = snakemake(tiny_study, "--configfile", tiny_study / "tiny.yaml", "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def _job_counts(text):
    return {
        line.split()[0]: int(line.split()[1])
        for line in text.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def test_study_dry_run_lists_every_run_identifiably(tmp_path):
    base = [
        snakemake_bin(),
        "-s",
        REPO / "Snakefile",
        "--directory",
        tmp_path,
        "-n",
        "--configfile",
        REPO / "config" / "study.yaml",
    ]
    # N measured by the probe: the dry-run shows the probes and stops at the plan checkpoint
    t0 = time.perf_counter()
    probed = run_cmd([*base, "--quiet", "rules"], timeout=120)
    counts = _job_counts(probed.stdout + probed.stderr)
    assert counts["probe_capacity"] == 4 and counts["plan_packs"] == 4
    # N fixed (WORKERS_PER_GPU): the whole sweep is planned, every run named
    full = run_cmd([*base, "-p"], timeout=120, env={"WORKERS_PER_GPU": "1"})
    elapsed = time.perf_counter() - t0
    text = full.stdout + full.stderr
    counts = _job_counts(text)
    assert counts["train_pack"] == 216 and counts["to_parquet"] == 216, text[-3000:]
    assert "wildcards: variant=S-adamw, run=lr0.002-wd0.01-s5" in text  # AdamW has its own LR grid
    assert "wildcards: variant=S-adamw, pack=pack-" in text  # packs named by their members
    three = run_cmd([*base, "--quiet", "rules"], timeout=120, env={"WORKERS_PER_GPU": "3"})
    assert _job_counts(three.stdout + three.stderr)["train_pack"] == 72
    print(f"two dry-runs of the 216-run study: {elapsed:.2f} s")


def test_without_a_configfile_the_demo_study_is_planned_from_any_directory(tmp_path):
    # the default config is the one beside the Snakefile, not ./config/config.yaml of the working directory
    out = run_cmd([snakemake_bin(), "-s", REPO / "Snakefile", "--directory", tmp_path, "-n", "--quiet", "rules"])
    counts = _job_counts(out.stdout + out.stderr)
    assert counts["probe_capacity"] == len(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["variants"])


def test_bad_config_stops_before_any_job(tmp_path):
    bad = dict(TINY, grid={"lr": [-0.1], "weight_decay": [0.0005], "seed": [0]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = run_cmd(
        [
            snakemake_bin(),
            "-s",
            REPO / "Snakefile",
            "--directory",
            tmp_path,
            "--cores",
            "1",
            "--configfile",
            tmp_path / "bad.yaml",
        ],
        check=False,
        timeout=120,
    )
    assert out.returncode != 0
    assert "grid.lr[0]" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()
