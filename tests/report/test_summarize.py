"""summarize: per-run table and H1/H2 statistics on synthetic tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from loss_slope.analysis.stats import wilson_interval
from loss_slope.jsonio import jsonable
from loss_slope.pipeline.fit_run import fit_run_tables
from loss_slope.report.registry import FIGURES
from loss_slope.report.summarize import run_table, study_statistics, summarize, variant_table
from loss_slope.report.summary_md import render_summary

from .conftest import DIVERGENCE, FIT, STUDY, fit_row, identity, partial_sweep, run_tables


def _complete(r2s=None, singles=None):
    """2 variants x 3 LRs x 2 seeds = 12 runs in 6 cells."""
    runs, rows = [], []
    k = 0
    for v, opt in (("A", "sgd"), ("B", "adamw")):
        for lr in (0.05, 0.1, 0.2):
            for seed in (0, 1):
                run = f"lr{lr:g}-wd0-s{seed}"
                runs.append(identity(v, run, opt, lr, 0.0, seed))
                r2 = r2s[k] if r2s is not None else 0.99
                ae = 0.5 + 0.1 * k
                rows.append(
                    fit_row(
                        v,
                        run,
                        optimizer=opt,
                        lr=lr,
                        wd=0.0,
                        seed=seed,
                        r2=r2,
                        alpha_early=ae,
                        alpha_full=1.0 + 0.01 * (k % 3),
                        best_val=1.0 / (1 + ae),
                        single="auto" if singles is None else singles[k],
                    )
                )
                k += 1
    return runs, rows


def test_run_table_has_one_row_per_config_run_with_status_and_reason():
    runs, fits = partial_sweep()
    t = run_table([f["row"] for f in fits], runs)
    assert len(t) == len(runs) == 12
    assert list(zip(t.variant, t.run)) == [(r["variant"], r["run"]) for r in runs]  # config order
    assert t.status.value_counts().to_dict() == {"ok": 8, "invalid": 1, "diverged": 1, "too_short": 1, "missing": 1}
    miss = t[t.status == "missing"].iloc[0]
    assert (miss.variant, miss.run) == ("S-adamw", "lr0.2-wd0.0005-s1")
    assert "training" in miss.reason
    # identifiers come from the config even for a run without a fit
    assert miss.optimizer == "adamw" and miss.lr == 0.2 and miss.seed == 1
    assert t.excluded_reason.isna().sum() == 8
    assert t.loc[t.status == "diverged", "excluded_reason"].iloc[0].startswith("diverged: non-finite")
    assert list(t.columns[:10]) == [
        "variant",
        "run",
        "experiment",
        "optimizer",
        "lr",
        "weight_decay",
        "seed",
        "status",
        "reason",
        "excluded_reason",
    ]


def test_h1_defensible_and_literal_criteria_known_answer():
    r2s = [0.99] * 7 + [0.95] * 3 + [0.985] * 2  # literal: A 6 of 6, B 1 + 2 of 6
    singles = [True] * 11 + [None]  # defensible: 11 of 11 decided, one undecided
    runs, rows = _complete(r2s=r2s, singles=singles)
    stats = study_statistics(run_table(rows, runs), study=STUDY)
    lit = stats.h1.literal
    assert lit.overall.k == 9 and lit.overall.n == 12
    assert lit.overall.share == pytest.approx(0.75)
    assert lit.overall.n_cells == 6
    lo, hi = lit.overall.ci_low, lit.overall.ci_high
    wlo, whi = wilson_interval(9, 12)
    assert lo <= wlo and hi >= whi  # cluster-aware: never narrower than Wilson over runs
    assert lit.by_variant["A"].k == 6 and lit.by_variant["B"].k == 3
    assert lo < 0.9 <= hi and lit.verdicts["0.9"] == "inconclusive"  # the interval straddles the target
    main = stats.h1.main
    assert main.overall.k == 11 and main.overall.n == 11
    assert main.with_excluded_as_failures.n == 12 and main.with_excluded_as_failures.k == 11
    assert set(main.verdicts) == {"0.8", "0.9"}
    # 11 of 11 over 6 cells: the interval reaches 100 % but not above 80 % from below
    assert main.overall.ci_low < 0.8 <= main.overall.ci_high
    assert dict(main.verdicts) == {"0.8": "inconclusive", "0.9": "inconclusive"}
    assert list(stats.h1.criteria)[0] == "single_power_law"


def test_h2_is_cluster_aware_with_a_three_way_verdict_and_the_literal_rule_beside_it():
    runs, rows = _complete()
    stats = study_statistics(run_table(rows, runs), study=STUDY)
    h2 = stats.h2.main
    o = h2.overall
    # best_val = 1 / (1 + alpha_early): perfectly monotone decreasing
    assert o.n == 12 and h2.n_cells == 6
    assert o.spearman_rho == pytest.approx(-1.0)
    # the whole interval is beyond -0.7 and p < 0.01: supported
    assert o.spearman_ci_high < -0.7 and o.spearman_p < STUDY["h2_max_p"] and h2.verdict == "supported"
    for key in ("cell_means", "within_cell", "partial", "versus_level", "prediction"):
        assert getattr(h2, key) is not None
    lit = stats.h2.h2_literal
    ae = 0.5 + 0.1 * np.arange(12)
    assert lit.spearman_rho == pytest.approx(sps.spearmanr(ae, 1 / (1 + ae)).statistic)
    assert lit.verdict == "supported"
    assert stats.h2.h2_alpha_full.x == "alpha_full"
    assert stats.counts_by_cell[0].runs == 2


def test_the_literal_h2_rule_never_supports_a_correlation_of_the_other_sign():
    runs, rows = _complete()
    for r in rows:  # CE now rises with the early slope: rho = +1, against the configured negative sign
        r["best_val_ce"] = 2.0 - r["best_val_ce"]
    stats = study_statistics(run_table(rows, runs), study=STUDY)
    lit = stats.h2.h2_literal
    assert STUDY["h2_sign"] == "negative"
    assert lit.spearman_rho == pytest.approx(1.0) and lit.spearman_p < STUDY["h2_max_p"]
    assert lit.verdict == "not supported"
    assert "sign negative" in lit.rule
    either = study_statistics(run_table(rows, runs), study={**STUDY, "h2_sign": "either"})
    assert either.h2.h2_literal.verdict == "supported"


def _with_a_diverged_run(nan_from_epoch: int):
    """``_complete()`` and a 13th run (cell A, LR 0.05, seed 2) fitted by fit_run from a power-law
    curve (α = 0.8, 48 steps/epoch) whose loss is NaN from epoch ``nan_from_epoch`` on."""
    runs, rows = _complete()
    ident = identity("A", "lr0.05-wd0-s2", "sgd", 0.05, 0.0, 2)
    steps, val, info = run_tables(alpha=0.8, noise=0.02)
    steps.loc[steps.step >= nan_from_epoch * 48, "loss_train_nats"] = np.nan
    out = fit_run_tables(
        steps,
        val,
        run_info=info,
        validation={"passed": False, "reasons": ["steps_finite"]},
        identity=ident,
        fit=FIT,
        divergence=DIVERGENCE,
    )
    table = run_table([*rows, out["row"]], [*runs, ident])
    return table, study_statistics(table, study=STUDY, early_window=[5, 15])


def test_h2_sensitivity_ranks_a_run_diverged_after_the_window_worst():
    table, stats = _with_a_diverged_run(16)
    main, worst = stats.h2.main, stats.h2.h2_diverged_worst_rank
    assert main.n_runs == 12 and main.diverged_at_worst_rank == ()
    assert worst.n_runs == 13 and worst.diverged_at_worst_rank == ("A/lr0.05-wd0-s2",)
    div = table.status == "diverged"
    assert table.loc[div, "alpha_early"].iloc[0] == pytest.approx(0.8, abs=0.01)
    ce = np.where(div, np.inf, table.best_val_ce.astype(float))
    assert worst.overall.spearman_rho == pytest.approx(sps.spearmanr(table.alpha_early, ce).statistic)
    md = render_summary(table, stats, {name: f"figures/{name}.png" for name in FIGURES})
    assert "| diverged runs with an α_early, at the worst CE rank (1 diverged) | 13 |" in md


def test_h2_sensitivity_without_a_diverged_alpha_early_says_so():
    table, stats = _with_a_diverged_run(10)  # diverged inside the window [5, 15): no α_early
    assert table.loc[table.status == "diverged", "alpha_early"].isna().all()
    worst = stats.h2.h2_diverged_worst_rank
    assert not worst.computable and worst.error == "no diverged run has an α_early (1 diverged run(s))"
    md = render_summary(table, stats, {name: f"figures/{name}.png" for name in FIGURES})
    assert "| — | — | not computable: no diverged run has an α_early (1 diverged run(s)) |" in md
    assert stats.h2.main.computable and stats.h2.main.n_runs == 12


def test_summary_names_why_each_skipped_cell_adds_nothing_within_cells():
    runs, rows = _complete()
    rows[1] = {**rows[1], "status": "too_short", "reason": "short"}  # cell A, LR 0.05: one usable seed
    rows[3] = {**rows[3], "alpha_early": rows[2]["alpha_early"]}  # cell A, LR 0.1: both runs tie in α_early
    table = run_table(rows, runs)
    stats = study_statistics(table, study=STUDY)
    h2 = stats.h2.main
    assert h2.within_cell.n_skipped_cells == 2
    assert [dict(c) for c in h2.skipped_cells] == [
        {"cell": "A/0.05/0.0", "reason": "single usable seed"},
        {"cell": "A/0.1/0.0", "reason": "all runs tie in alpha_early"},
    ]
    md = render_summary(table, stats, {name: f"figures/{name}.png" for name in FIGURES})
    assert (
        "2 cell(s) add nothing within cells and are skipped (1: single usable seed; 1: all runs tie in alpha_early)."
        in md
    )


def test_h2_with_too_few_cells_is_not_computable_and_says_why():
    runs, rows = _complete()
    keep = [r["variant"] == "A" and r["lr"] != 0.2 for r in rows]  # 2 cells
    stats = study_statistics(
        run_table([r for r, k in zip(rows, keep) if k], [r for r, k in zip(runs, keep) if k]), study=STUDY
    )
    assert stats.h2.main.verdict == "not computable" and not stats.h2.main.computable
    assert "cell" in stats.h2.main.error


def test_partial_sweep_excludes_and_lists_every_bad_run():
    runs, fits = partial_sweep()
    t = run_table([f["row"] for f in fits], runs)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f["window_scan"] for f in fits}
    stats = study_statistics(t, study=STUDY, window_scans=scans, early_window=[5, 15])
    assert stats.counts.to_dict() == {"ok": 8, "too_short": 1, "invalid": 1, "diverged": 1, "missing": 1}
    assert stats.counts_by_variant["S-adamw"].missing == 1
    assert stats.h1.main.overall.n == 8 and stats.h2.main.overall.n == 8
    excluded = {(e["run"].split("/")[0], e["reason"].split(":")[0]) for e in stats.h1.main.excluded}
    assert excluded == {("S-core", "invalid"), ("S-core", "diverged"), ("S-adamw", "too_short"), ("S-adamw", "missing")}
    assert len(stats.excluded_runs) == 4
    assert all(e.reason for e in stats.excluded_runs)
    hm = stats.window_heatmap
    rho = np.array(hm.rho, dtype=float)
    assert rho.shape == (11, 11) and np.isnan(rho[0, 0])
    assert hm.n_valid[5][5] == 8 and hm.nominal == (5.0, 15.0)
    json.dumps(stats.to_dict(), default=str)  # serialisable after _io.jsonable (NaN handled at write)


def test_no_usable_run_is_not_computable_not_an_error():
    runs = [identity("A", f"r{i}") for i in range(3)]
    rows = [fit_row("A", "r0", status="too_short", reason="short"), fit_row("A", "r1", status="invalid", reason="bad")]
    t = run_table(rows, runs)
    stats = study_statistics(t, study=STUDY)
    assert stats.h1.main.verdict == "not computable"
    assert stats.h2.main.verdict == "not computable"
    assert stats.window_heatmap is None
    assert len(stats.excluded_runs) == 3
    vt = variant_table(t, stats)
    assert vt.loc[0, "n_missing"] == 1 and vt.loc[0, "h1_n"] == 0


def test_summarize_writes_parquet_csv_variant_tables_and_json(tmp_path):
    runs, fits = partial_sweep()
    paths = []
    for f in fits:
        p = tmp_path / "fits" / f["row"]["variant"] / f"{f['row']['run']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(f))
        paths.append(p)
    out = tmp_path / "report"
    stats = summarize(
        fit_files=paths,
        runs=runs,
        study=STUDY,
        early_window=[5, 15],
        study_name="synthetic",
        table_parquet=out / "runs.parquet",
        table_csv=out / "runs.csv",
        variants_csv=out / "variants.csv",
        variant_csvs=[out / "variants" / "S-core.csv", out / "variants" / "S-adamw.csv"],
        stats_json=out / "stats.json",
    )
    t = pd.read_parquet(out / "runs.parquet")
    assert len(t) == 12 and len(pd.read_csv(out / "runs.csv")) == 12
    assert t.lr.dtype == float and t.h1_literal_r2.dtype == float
    assert len(pd.read_csv(out / "variants" / "S-adamw.csv")) == 6
    v = pd.read_csv(out / "variants.csv")
    assert list(v.variant) == ["S-core", "S-adamw"]
    assert v.set_index("variant").loc["S-core", ["n_ok", "n_invalid", "n_diverged"]].tolist() == [4, 1, 1]
    written = json.loads((out / "stats.json").read_text())
    assert written == json.loads(json.dumps(jsonable(stats.to_dict())))  # summarize returns what it wrote
    assert written["study"] == "synthetic" and written["counts"]["ok"] == 8


def test_stats_round_trip_through_their_typed_form():
    """stats.json is StudyStats.to_dict(): reading it back with from_dict() gives an equal object,
    and writing that again gives the same JSON, key order included."""
    from loss_slope.report.results import H2Section, NotComputable
    from loss_slope.report.study_stats import StudyStats

    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f["window_scan"] for f in fits}
    for study in (STUDY, {**STUDY, "confidence": 0.9}):
        stats = study_statistics(table, study=study, window_scans=scans, study_name="syn")
        text = json.dumps(jsonable(stats.to_dict()), indent=1)
        back = StudyStats.from_dict(json.loads(text))
        assert back == stats
        assert json.dumps(jsonable(back.to_dict()), indent=1) == text
        assert list(json.loads(text))[:8] == [
            "study",
            "n_runs",
            "counts",
            "counts_by_variant",
            "counts_by_cell",
            "time_axis",
            "other_time_axis",
            "h1",
        ]
        assert back.confidence == study["confidence"]
    empty = run_table([], runs)
    stats = study_statistics(empty, study=STUDY, study_name="syn")
    h2 = StudyStats.from_dict(jsonable(stats.to_dict())).h2
    assert isinstance(h2.main, NotComputable) and not h2.main.computable and h2.main.extra["x"] == "alpha_early"
    assert json.dumps(h2.to_dict()) == json.dumps({k: stats.to_dict()[k] for k in H2Section.KEYS})


def test_unknown_keys_of_a_statistic_are_kept():
    from loss_slope.report.results import H1Section

    runs, fits = partial_sweep()
    stats = study_statistics(run_table([f["row"] for f in fits], runs), study=STUDY, study_name="syn")
    h1 = stats.h1.to_dict()
    h1["single_power_law"]["a_new_key"] = [1, {"b": 2}]
    assert H1Section.from_dict(h1).to_dict()["single_power_law"]["a_new_key"] == [1, {"b": 2}]


def test_a_fit_of_a_run_not_in_the_config_is_refused():
    runs, rows = _complete()
    stray = fit_row("OLD", "lr9-wd0-s0")
    with pytest.raises(ValueError, match=r"1 fit\(s\) of runs not in the config \(OLD/lr9-wd0-s0\)"):
        run_table([*rows, stray], runs)


def test_an_undecided_run_shows_the_error_that_left_it_undecided():
    runs, rows = _complete()
    # as analyze_curve writes a run whose single-power-law test raised
    rows[0].update({"h1_single_power_law": None, "error_h1_single_power_law": "segment has 3 points"})
    del rows[0]["h1_reason"]
    rows[1].update({"h1_single_power_law": None, "h1_reason": "knee at the end"})
    table = run_table(rows, runs)
    md = render_summary(table, study_statistics(table, study=STUDY), {n: f"f/{n}.png" for n in FIGURES})
    assert "| A | lr0.05-wd0-s0 | segment has 3 points |" in md
    assert "| A | lr0.05-wd0-s1 | knee at the end |" in md
    assert "nan" not in md


def test_not_computable_h2_messages_give_the_real_cause():
    runs, rows = _complete()
    for r in rows:
        del r["alpha_full"]
        r["best_val_ce"] = 0.5
    table = run_table(rows, runs)
    stats = study_statistics(table, study=STUDY)
    assert stats.h2.h2_alpha_full.error == "no run has alpha_full (12 of 12 runs are ok)"
    lit = stats.h2.h2_literal
    assert lit.error == "best_val_ce take one value over the 12 usable runs"
    md = render_summary(table, stats, {n: f"f/{n}.png" for n in FIGURES})
    assert (
        "**The protocol's literal rule** (|Spearman ρ| ≥ 0.7, negative with p < 0.01): not computable: "
        "best_val_ce take one value over the 12 usable runs." in md
    )


def test_summary_prints_h2_bounds_on_their_side_of_the_threshold():
    runs, rows = _complete()
    stats = study_statistics(run_table(rows, runs), study=STUDY)
    d = stats.to_dict()
    d["h2"]["overall"].update(spearman_ci_low=-0.95, spearman_ci_high=-0.6996, spearman_p=0.0099996)
    d["h2"]["verdict"] = "inconclusive"
    stats = type(stats).from_dict(d)
    md = render_summary(run_table(rows, runs), stats, {n: f"f/{n}.png" for n in FIGURES})
    assert "interval -0.95 to -0.6996, p = 0.0099996;" in md
    assert "| pooled over runs | 12 | -1.00 [-0.95 to -0.6996] | 0.0099996 |" in md
