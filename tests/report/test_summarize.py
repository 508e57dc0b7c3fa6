"""summarize: per-run table and H1/H2 statistics on synthetic tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from loss_slope.analysis import wilson_interval
from loss_slope.report.summarize import run_table, study_statistics, summarize, variant_table

from .conftest import STUDY, fit_file, fit_row, identity, partial_sweep


def _complete(n_per_variant=6, r2s=None):
    runs, rows = [], []
    k = 0
    for v, opt in (("A", "sgd"), ("B", "adamw")):
        for i in range(n_per_variant):
            run = f"lr0.1-wd0-s{i}"
            runs.append(identity(v, run, opt, 0.1, 0.0, i))
            r2 = r2s[k] if r2s is not None else 0.99
            ae = 0.5 + 0.1 * k
            rows.append(fit_row(v, run, optimizer=opt, seed=i, r2=r2, alpha_early=ae, alpha_full=1.0 + 0.01 * (k % 3),
                                best_val=1.0 / (1 + ae)))
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
    assert list(t.columns[:10]) == ["variant", "run", "experiment", "optimizer", "lr", "weight_decay", "seed",
                                    "status", "reason", "excluded_reason"]


def test_h1_share_and_wilson_interval_known_answer():
    r2s = [0.99] * 7 + [0.95] * 3 + [0.985] * 2  # A: 6 of 6 ... B: 1 + 2 of 6
    runs, rows = _complete(r2s=r2s)
    stats = study_statistics(run_table(rows, runs), study=STUDY)
    h1 = stats["h1"]
    assert h1["overall"]["k"] == 9 and h1["overall"]["n"] == 12
    assert h1["overall"]["share"] == pytest.approx(0.75)
    lo, hi = wilson_interval(9, 12)
    assert (h1["overall"]["ci_low"], h1["overall"]["ci_high"]) == pytest.approx((lo, hi))
    assert h1["by_variant"]["A"]["k"] == 6 and h1["by_variant"]["B"]["k"] == 3
    assert h1["answer"] == "not supported"  # 75 % < 80 %
    assert stats["h1_sensitivity"]["statistic"] == "power_r2_binned"
    assert stats["h1_sensitivity"]["overall"]["k"] == 12
    easy = study_statistics(run_table(rows, runs), study={**STUDY, "h1_target_share": 0.7})
    assert easy["h1"]["answer"] == "supported"


def test_h2_known_answer_and_alpha_full_for_comparison():
    runs, rows = _complete()
    stats = study_statistics(run_table(rows, runs), study=STUDY)
    o = stats["h2"]["overall"]
    # best_val = 1 / (1 + alpha_early): perfectly monotone decreasing
    assert o["n"] == 12 and o["spearman_rho"] == pytest.approx(-1.0)
    assert o["spearman_p"] < 1e-6
    ae = 0.5 + 0.1 * np.arange(12)
    assert o["pearson_r"] == pytest.approx(sps.pearsonr(ae, 1 / (1 + ae)).statistic)
    assert o["spearman_ci_low"] <= o["spearman_rho"] <= o["spearman_ci_high"]
    assert stats["h2"]["answer"] == "supported"
    assert set(stats["h2"]["by_group"]) == {"variant=A", "variant=B", "optimizer=adamw", "optimizer=sgd"}
    assert stats["h2_alpha_full"]["x"] == "alpha_full"
    assert abs(stats["h2_alpha_full"]["overall"]["spearman_rho"]) < 0.7


def test_partial_sweep_excludes_and_lists_every_bad_run():
    runs, fits = partial_sweep()
    t = run_table([f["row"] for f in fits], runs)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f["window_scan"] for f in fits}
    stats = study_statistics(t, study=STUDY, window_scans=scans, early_window=[5, 15])
    assert stats["counts"] == {"ok": 8, "too_short": 1, "invalid": 1, "diverged": 1, "missing": 1}
    assert stats["counts_by_variant"]["S-adamw"]["missing"] == 1
    assert stats["h1"]["overall"]["n"] == 8 and stats["h2"]["overall"]["n"] == 8
    excluded = {(e["run"].split("/")[0], e["reason"].split(":")[0]) for e in stats["h1"]["excluded"]}
    assert excluded == {("S-core", "invalid"), ("S-core", "diverged"), ("S-adamw", "too_short"), ("S-adamw", "missing")}
    assert len(stats["excluded_runs"]) == 4
    assert all(e["reason"] for e in stats["excluded_runs"])
    hm = stats["window_heatmap"]
    rho = np.array(hm["rho"], dtype=float)
    assert rho.shape == (11, 11) and np.isnan(rho[0, 0])
    assert hm["n_valid"][5][5] == 8 and hm["nominal"] == [5.0, 15.0]
    json.dumps(stats, default=str)  # serialisable after _io.jsonable (NaN handled at write)


def test_no_usable_run_is_not_computable_not_an_error():
    runs = [identity("A", f"r{i}") for i in range(3)]
    rows = [fit_row("A", "r0", status="too_short", reason="short"), fit_row("A", "r1", status="invalid", reason="bad")]
    t = run_table(rows, runs)
    stats = study_statistics(t, study=STUDY)
    assert stats["h1"]["answer"] == "not computable" and stats["h1"]["overall"] is None
    assert stats["h2"]["answer"] == "not computable"
    assert stats["window_heatmap"] is None
    assert len(stats["excluded_runs"]) == 3
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
        fit_files=paths, runs=runs, study=STUDY, early_window=[5, 15], study_name="synthetic",
        table_parquet=out / "runs.parquet", table_csv=out / "runs.csv", variants_csv=out / "variants.csv",
        variant_csvs=[out / "variants" / "S-core.csv", out / "variants" / "S-adamw.csv"], stats_json=out / "stats.json",
    )
    t = pd.read_parquet(out / "runs.parquet")
    assert len(t) == 12 and len(pd.read_csv(out / "runs.csv")) == 12
    assert t.lr.dtype == float and t.power_r2.dtype == float
    assert len(pd.read_csv(out / "variants" / "S-adamw.csv")) == 6
    v = pd.read_csv(out / "variants.csv")
    assert list(v.variant) == ["S-core", "S-adamw"]
    assert v.set_index("variant").loc["S-core", ["n_ok", "n_invalid", "n_diverged"]].tolist() == [4, 1, 1]
    written = json.loads((out / "stats.json").read_text())
    assert written["study"] == "synthetic" and written["counts"] == stats["counts"]
