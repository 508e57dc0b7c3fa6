"""The whole DAG on the simulated backend (no GPU, no dataset): every table exactly once, the truth recovered."""

import json

import pandas as pd
import pytest
import yaml

from _util import REPO, run_cmd, snakemake_bin
from loss_slope.report.truth import compare_with_truth, load_truths

EPOCHS, SPE = 10, 391
CONFIG = {
    "study": "simulated-tiny",
    "data": {"name": "simulated"},
    "training": {
        "epochs": EPOCHS,
        "batch_size": 128,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "threads": 1,
        "flush_every_steps": 391,
        # knees within the first epochs, as in the study; no divergence in a 6-run study
        # the truth's alpha_early window must be the analysis window (analysis.fit.early_window)
        "hydra_overrides": [
            "data.simulation.diverge_share=0",
            "data.simulation.second_break_epochs=[4,6]",
            "data.simulation.early_window=[2,6]",
        ],
    },
    "variants": {"S-core": {"experiment": "s_core"}},
    "grid": {"lr": [0.1, 0.2], "weight_decay": [0.001], "seed": [0, 1, 2]},
    "packing": {"runs_per_gpu": 3},
    "analysis": {"fit": {"early_window": [2, 6], "window_shift": 1}, "study": {"n_boot": 200}},
}
RUNS = [f"lr{lr}-wd0.001-s{s}" for lr in (0.1, 0.2) for s in range(3)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    wd = tmp_path_factory.mktemp("simdag")
    (wd / "sim.yaml").write_text(yaml.safe_dump(CONFIG))
    run_cmd(
        [snakemake_bin(), "-s", REPO / "Snakefile", "--directory", wd, "--cores", "2", "--configfile", wd / "sim.yaml"],
        timeout=900,
    )
    return wd


@pytest.mark.parametrize("run", RUNS)
def test_every_table_exactly_once_and_validated(study, run):
    rep = json.loads((study / f"results/validation/S-core/{run}/validation.json").read_text())
    assert rep["passed"], rep["reasons"]
    assert rep["n_steps"] == EPOCHS * SPE and rep["n_val"] == 4 * EPOCHS
    steps = pd.read_parquet(study / f"results/parquet/steps/variant=S-core/run={run}/part-0.parquet")
    assert steps.step.tolist() == list(range(EPOCHS * SPE))
    info = json.loads((study / f"results/export/S-core/{run}/run_info.json").read_text())
    assert info["backend"] == "simulated" and info["outcome"]["status"] == "complete"
    assert (study / f"work/S-core/{run}/truth.json").exists()


def test_report_built_and_truth_recovered(study):
    from loss_slope.report.registry import FIGURES

    assert (study / "results/report/summary.md").exists()
    figures = sorted(p.name for p in (study / "results/report/figures").glob("*.*"))
    assert figures == sorted(f"{name}.{ext}" for name in FIGURES for ext in ("png", "svg"))
    table = pd.read_parquet(study / "results/report/runs.parquet")
    truths = load_truths(study)
    assert len(truths) == len(RUNS)
    r = compare_with_truth(table, truths)
    assert r["n_ok"] == len(RUNS)
    assert r["knee"]["n_found"] == len(RUNS) and r["knee"]["median_error_decades"] <= 0.05
    assert abs(r["exponent"]["alpha_early"]["median_error"]) < 0.02


def test_the_report_reads_each_truth_from_its_exported_run_info_only(study, tmp_path):
    """The truth is recomputed from the run_info.json the report declares; a truth.json left in
    ./work by another study (paths.work_root moved) is never read in its place."""
    import shutil

    from loss_slope.report.truth import truths_from_run_infos

    infos = sorted(study.glob("results/export/S-core/*/run_info.json"))
    truths = truths_from_run_infos(infos)
    assert sorted(truths) == sorted(f"S-core/{r}" for r in RUNS)
    for run in RUNS:  # the same truth the backend wrote when it simulated the run
        assert truths[f"S-core/{run}"] == json.loads((study / f"work/S-core/{run}/truth.json").read_text())
    stats = json.loads((study / "results/report/stats.json").read_text())
    assert stats["truth"]["n_ok"] == len(RUNS)
    # another study's truth.json in ./work, this study's run_info.json in the export
    run = RUNS[0]
    shutil.copytree(study / f"results/export/S-core/{run}", tmp_path / f"results/export/S-core/{run}")
    stale = tmp_path / f"work/S-core/{run}/truth.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({**truths[f"S-core/{run}"], "best_val_ce_true": 99.0}))
    assert load_truths(tmp_path)[f"S-core/{run}"] == truths[f"S-core/{run}"]


def test_rehearsal_summary(study, capsys):
    from loss_slope.simulate.rehearsal import exactly_once, job_times, main, stage_table

    log = next((study / ".snakemake" / "log").glob("*.snakemake.log"))
    rules = {r["rule"]: r["jobs"] for r in stage_table(job_times(log))}
    assert rules["train_pack"] == 2 and rules["to_parquet"] == rules["fit_run"] == len(RUNS)
    assert exactly_once(study)["passed"] == len(RUNS)
    assert main([str(study)]) == 0
    assert "Against the known truth" in capsys.readouterr().out
