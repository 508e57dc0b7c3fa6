"""summary.md text, the report targets / partial-sweep inputs, and the analysis config schema."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import yaml

from loss_slope.pipeline.settings import analysis_problems, fit_settings, study_settings
from loss_slope.pipeline.targets import finished_runs, fit_inputs, report_targets, training_state
from loss_slope.report.registry import FIGURES
from loss_slope.report.summarize import run_table, study_statistics
from loss_slope.report.summary_md import render_summary
from loss_slope.study.config import ConfigError, load_config, load_schema, validate_config

from .conftest import STUDY, partial_sweep

FIGS = {name: f"figures/{name}.png" for name in FIGURES}


@pytest.fixture(scope="module")
def partial_summary():
    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    stats = study_statistics(table, study=STUDY, early_window=[5, 15], study_name="syn")
    return table, stats, render_summary(table, stats, FIGS, partial=True)


def test_summary_answers_h1_and_h2_in_sentences_with_numbers(partial_summary):
    _, stats, md = partial_summary
    h1, h2 = stats.h1.main.overall, stats.h2.main.overall
    assert "## H1" in md and "## H2" in md
    assert f"{h1.k} of {h1.n} decided runs" in md
    assert "cluster-aware interval" in md and "against 80 %" in md and "against 90 %" in md
    assert "**The protocol's literal criterion**" in md and "**The protocol's literal rule**" in md
    assert f"Spearman ρ = {h2.spearman_rho:.2f}" in md
    assert f"**Defensible verdict: {stats.h2.main.verdict}.**" in md
    assert "within cells" in md and "Slope or level?" in md and "Leave-one-cell-out" in md
    assert "α_full" in md and "diverged runs with an α_early, at the worst CE rank" in md
    assert "Runs excluded per cell" in md
    assert "partial, given additive variant, LR and WD effects" in md and "removes only additive effects" in md
    # the row to read when seeds matter (docs/analysis.md), with its own numbers
    adj = stats.h2.main.within_cell_seed_adjusted
    row = next(line for line in md.splitlines() if line.startswith("| within cells, net of the seeds"))
    assert f"| {adj.n} | {adj.spearman_rho:.2f} [" in row, row


def test_summary_names_every_variant_without_a_per_variant_estimate(partial_summary):
    _, stats, md = partial_summary
    skipped = stats.h2.main.skipped_variants
    assert {s["variant"] for s in skipped} == {"S-core", "S-adamw"}
    assert (
        "No per-variant estimate for S-adamw (need at least 4 cells, got 3); S-core (need at least 4 cells, got 3)."
        in md
    )


def test_summary_embeds_every_figure_and_lists_every_excluded_run(partial_summary):
    table, _, md = partial_summary
    for path in FIGS.values():
        assert f"]({path})" in md
    assert "Partial sweep" in md
    for r in table[table.status != "ok"].itertuples():
        assert f"| {r.variant} | {r.run} | {r.status} | {r.reason} |" in md


def test_the_h1_table_has_a_verdict_for_every_target_share():
    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    stats = study_statistics(table, study={**STUDY, "h1_target_shares": [0.5, 0.8, 0.9]}, early_window=[5, 15])
    md = render_summary(table, stats, FIGS)
    header = next(ln for ln in md.splitlines() if ln.startswith("| criterion | runs |"))
    assert header.count("| verdict") == 3
    row = next(ln for ln in md.splitlines() if ln.startswith("| one power law after the knee"))
    for target in ("50 %", "80 %", "90 %"):
        assert f"(vs {target})" in row
    assert row.count("|") == header.count("|")


def test_complete_sweep_says_nothing_is_excluded():
    runs, fits = partial_sweep()
    rows = [f["row"] for f in fits if f["row"]["status"] == "ok"]
    runs = [r for r in runs if any(r["run"] == x["run"] and r["variant"] == x["variant"] for x in rows)]
    table = run_table(rows, runs)
    md = render_summary(table, study_statistics(table, study=STUDY), FIGS)
    assert "None: every run of the config" in md and "Partial sweep" not in md


def test_summary_lists_runs_that_fell_back_to_a_smaller_micro_batch():
    from loss_slope.pipeline.fit_run import micro_batch_fields

    runs, fits = partial_sweep()
    rows = [dict(f["row"]) for f in fits]
    info = {
        "outcome": {
            "micro_batch": {
                "batch": 128,
                "final": 32,
                "changes": [{"step": 40, "from": 128, "to": 64}, {"step": 40, "from": 64, "to": 32}],
            }
        }
    }
    assert micro_batch_fields(info) == {"micro_batch": 32, "oom_fallbacks": 2}
    assert micro_batch_fields({}) == {"micro_batch": None, "oom_fallbacks": 0}
    for i, r in enumerate(rows):
        r.update(micro_batch_fields(info) if i == 0 else {"micro_batch": 128, "oom_fallbacks": 0})
    table = run_table(rows, runs)
    md = render_summary(table, study_statistics(table, study=STUDY), FIGS)
    assert "## Out-of-memory fallbacks" in md
    assert f"| {rows[0]['variant']} | {rows[0]['run']} | {rows[0]['status']} | 32 | 2 |" in md
    assert md.count("| 128 | 0 |") == 0  # only the runs that fell back are listed
    table.loc[:, "oom_fallbacks"] = 0
    assert "Out-of-memory" not in render_summary(table, study_statistics(table, study=STUDY), FIGS)


def test_report_targets():
    assert report_targets() == [
        "results/report/summary.md",
        "results/report/runs.csv",
        "results/report/runs.parquet",
        "results/report/stats.json",
    ]
    assert report_targets("report_partial")[0] == "results/report_partial/summary.md"
    with pytest.raises(ValueError):
        report_targets("elsewhere")


def _plan(root, variant, packs):
    p = root / f"results/plan/{variant}/packs.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"variant": variant, "packs": {k: [{"run": r} for r in v] for k, v in packs.items()}}))


def _done(root, variant, run):
    p = root / f"results/runs/{variant}/{run}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("{}")


def test_partial_inputs_are_the_runs_that_finished_not_their_packs(tmp_path, monkeypatch):
    runs = [("A", "r0"), ("A", "r1"), ("A", "r2"), ("B", "r0")]
    _plan(tmp_path, "A", {"pack000": ["r0", "r1"], "pack001": ["r2"]})  # B: no plan yet
    (tmp_path / "results/packs/A").mkdir(parents=True)
    (tmp_path / "results/packs/A/pack000.json").write_text("{}")
    _done(tmp_path, "A", "r0")  # r1 was given up inside a pack that finished for r0
    assert finished_runs(runs, root=tmp_path) == [("A", "r0")]
    state = training_state(runs, root=tmp_path)
    assert "ended without this run" in state[("A", "r1")][1] and "logs/run_done/A/r1.log" in state[("A", "r1")][1]
    assert "pack001" in state[("A", "r2")][1] and "does not exist yet" in state[("B", "r0")][1]
    monkeypatch.chdir(tmp_path)
    assert fit_inputs(runs, SimpleNamespace(reportdir="report_partial")) == ["results/fits/A/r0.json"]
    assert len(fit_inputs(runs, SimpleNamespace(reportdir="report"))) == 4


def test_partial_inputs_with_a_fixed_pack_size(tmp_path):
    _done(tmp_path, "A", "r0")

    def run_pack(w):
        return f"results/runs/{w.variant}/{w.run}.json"

    assert finished_runs([("A", "r0"), ("A", "r1")], fixed_pack=run_pack, root=tmp_path) == [("A", "r0")]
    why = training_state([("A", "r1")], fixed_pack=run_pack, root=tmp_path)[("A", "r1")][1]
    assert why.startswith("training not finished: no completion marker results/runs/A/r1.json")


def test_analysis_block_is_strict_with_defaults(repo):
    config = load_config(repo / "config" / "config.yaml")
    a = config["analysis"]
    assert a["fit"]["early_window"] == [5, 15] and a["study"]["r2_threshold"] == 0.98
    assert set(fit_settings(config)) == {"loss_unit", "fit", "divergence", "time_axis", "compare_time_axes"}
    assert set(study_settings(config)) == {"study", "early_window", "time_axis"}
    raw = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad.setdefault("analysis", {}).setdefault("study", {})["r2_treshold"] = 0.9
    with pytest.raises(ConfigError, match="r2_treshold"):
        validate_config(bad)
    bad = copy.deepcopy(raw)
    bad.setdefault("analysis", {}).setdefault("fit", {})["knee_methods"] = ["elbow"]
    with pytest.raises(ConfigError, match="knee_methods"):
        validate_config(bad)
    study = load_config(repo / "config" / "study.yaml")
    assert study["analysis"]["fit"]["early_window"] == [5, 15]


def test_every_analysis_key_has_a_description_and_a_default(repo):
    schema = load_schema()
    block = schema["properties"]["analysis"]
    assert block["additionalProperties"] is False

    def walk(node, path):
        assert "description" in node, path
        assert "default" in node, path
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, path
            for k, sub in node.get("properties", {}).items():
                walk(sub, f"{path}.{k}")

    walk(block, "analysis")


def test_cross_key_check_of_the_early_window(repo):
    config = load_config(repo / "config" / "config.yaml")
    assert analysis_problems(config) == []
    config["analysis"]["fit"]["early_window"] = [15, 5]
    assert "start < end" in analysis_problems(config)[0]


def test_params_do_not_depend_on_the_order_of_keys_in_the_config(repo):
    a = load_config(repo / "config" / "config.yaml")
    b = copy.deepcopy(a)
    b["analysis"]["fit"] = dict(reversed(list(b["analysis"]["fit"].items())))
    b["analysis"] = dict(reversed(list(b["analysis"].items())))
    assert repr(fit_settings(a)) == repr(fit_settings(b))
    assert repr(study_settings(a)) == repr(study_settings(b))


def test_the_literal_rule_names_its_thresholds_when_the_clustered_h2_cannot_be_computed():
    runs, fits = partial_sweep()
    # one variant: 3 cells, too few for the clustered statistics
    rows = [f["row"] for f in fits if f["row"]["variant"] == "S-adamw"]
    table = run_table(rows, [r for r in runs if r["variant"] == "S-adamw"])
    stats = study_statistics(table, study=STUDY, early_window=[5, 15], study_name="syn")
    assert not stats.h2.main.computable and stats.h2.main.error and stats.h2.h2_literal.computable
    md = render_summary(table, stats, FIGS, partial=True)
    rule = f"|Spearman ρ| ≥ {STUDY['h2_min_abs_rho']:g}, {STUDY['h2_sign']} with p < {STUDY['h2_max_p']:g}"
    assert rule in md and "n/a with" not in md


def test_one_run_identity_and_one_list_of_monitor_tables():
    from dataclasses import fields

    from loss_slope.pipeline.settings import run_identity
    from loss_slope.study.runs import RunSpec
    from loss_slope.tables.schema import MONITOR_TABLES, RUN_IDENTITY, TABLES

    assert set(RUN_IDENTITY) <= {f.name for f in fields(RunSpec)}
    spec = RunSpec("V", "lr0.1-wd0-s0", "s_core", "sgd", 0.1, 0.0, 0, ())
    assert tuple(run_identity(spec)) == RUN_IDENTITY
    assert spec.expected() == {"variant": "V", "run": "lr0.1-wd0-s0", "lr": 0.1, "weight_decay": 0.0, "seed": 0}
    assert MONITOR_TABLES == ("curvature", "noise", "checkpoints") and set(MONITOR_TABLES) < set(TABLES)


def test_the_calibrated_lrt_threshold_has_one_source():
    from pathlib import Path

    from loss_slope.analysis.search import LRT_THRESHOLD

    repo = Path(__file__).resolve().parents[2]
    # the config key's default (and config/*.yaml) repeat the calibrated value for users
    fit = load_schema()["properties"]["analysis"]["properties"]["fit"]["properties"]
    assert fit["lrt_threshold"]["default"] == LRT_THRESHOLD
    for name in ("config.yaml", "study.yaml", "simulated.yaml"):
        cfg = yaml.safe_load((repo / "config" / name).read_text())
        assert cfg["analysis"]["fit"]["lrt_threshold"] == LRT_THRESHOLD, name


def test_summary_sums_the_checkpoint_files_per_variant():
    from loss_slope.pipeline.fit_run import checkpoint_fields

    runs, fits = partial_sweep()
    rows = [dict(f["row"]) for f in fits]
    info = {"outcome": {"checkpoints": {"files": 72, "written_mb": 86.75, "snapshot_s": 0.19, "wait_s": 0.11}}}
    assert checkpoint_fields(info) == {"checkpoint_files": 72, "checkpoint_written_mb": 86.75}
    assert checkpoint_fields({"outcome": {}}) == {"checkpoint_files": None, "checkpoint_written_mb": None}
    for i, r in enumerate(rows):  # one run trained before the record existed
        r.update(checkpoint_fields(info if i else {}))
    table = run_table(rows, runs)
    md = render_summary(table, study_statistics(table, study=STUDY), FIGS)
    assert "## Checkpoints written" in md
    recorded = table[table.checkpoint_files.notna()]
    assert f"{86.75 * len(recorded) / 1e3:,.2f} GB in {72 * len(recorded)} files over {len(recorded)} run(s)" in md
    first = table.variant.iloc[0]
    mine = table[table.variant == first]
    n_rec = int(mine.checkpoint_files.notna().sum())
    assert f"| {first} | {n_rec} of {len(mine)} | {72 * n_rec} | {86.75 * n_rec:,.1f} | 86.8 |" in md
    # a variant without any record: unknown, not zero
    table.loc[table.variant == first, ["checkpoint_files", "checkpoint_written_mb"]] = float("nan")
    md = render_summary(table, study_statistics(table, study=STUDY), FIGS)
    assert f"| {first} | 0 of {len(mine)} | — | — | — |" in md
    table.loc[:, ["checkpoint_files", "checkpoint_written_mb"]] = float("nan")
    assert "Checkpoints written" not in render_summary(table, study_statistics(table, study=STUDY), FIGS)


def test_a_statistic_that_cannot_be_computed_names_the_runs_without_its_inputs():
    """All α_early missing: H2 is not computable, and the summary says which runs lack what, instead
    of 'every run is in the statistics'."""
    runs, fits = partial_sweep()
    rows = [{**f["row"], "alpha_early": None} for f in fits if f["row"]["status"] == "ok"]
    runs = [r for r in runs if any(r["run"] == x["run"] and r["variant"] == x["variant"] for x in rows)]
    table = run_table(rows, runs)
    stats = study_statistics(table, study=STUDY)
    assert not stats.h2.h2.computable
    md = render_summary(table, stats, FIGS)
    assert "None: every run of the config" not in md and "could not be computed" in md
    listed = [line for line in md.splitlines() if line.startswith("| H2 |")]
    assert len(listed) == len(rows) and all(line.endswith("| no alpha_early |") for line in listed), listed


def test_the_other_statistics_say_which_runs_and_variants_they_leave_out():
    runs, fits = partial_sweep()
    rows = [f["row"] for f in fits]
    table = run_table(rows, runs)
    # the check that drops fits on a bound undecided for two more usable runs
    usable = table.index[(table["status"] == "ok") & table["h1_single_power_law_interior"].notna()]
    table.loc[usable[:2], "h1_single_power_law_interior"] = None
    n = int(((table["status"] == "ok") & table["h1_single_power_law_interior"].isna()).sum())
    stats = study_statistics(table, study=STUDY)
    check = stats.h1.criteria["single_power_law_interior"]
    assert check.computable and n >= 2
    md = render_summary(table, stats, FIGS)
    row = next(line for line in md.splitlines() if line.startswith(f"| {check.label} | ") and "undecided" in line)
    assert f"| {n} h1_single_power_law_interior undecided |" in row, row
    # a variant with too few cells has no estimate of its own, and the table says so
    row = next(line for line in md.splitlines() if line.startswith("| H2 (α_early) | "))
    skipped = stats.h2.h2.skipped_variants
    assert skipped and all(f"{v['variant']} ({v['reason']})" in row for v in skipped), row
