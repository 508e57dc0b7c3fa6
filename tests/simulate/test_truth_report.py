"""report/truth.py on a small table built around known truths."""

import numpy as np
import pandas as pd

from loss_slope.report.truth import compare_with_truth, truth_markdown


def study(n_cells=12, seeds=6, rho=-0.9, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows, truths = [], {}
    for c in range(n_cells):
        u = rng.standard_normal(2)
        for s in range(seeds):
            w = rng.standard_normal(2)
            a = 0.5 + 0.1 * u[0] + 0.03 * w[0]
            ce = (
                0.45
                + 0.05 * (rho * u[0] + np.sqrt(1 - rho**2) * u[1])
                + 0.02 * (rho * w[0] + np.sqrt(1 - rho**2) * w[1])
            )
            key = ("S-core", f"lr{c}-wd0.001-s{s}")
            h1 = bool(rng.random() > 0.15)
            truths["/".join(key)] = {
                "cell": f"c{c}",
                "h1_single_power_law": h1,
                "diverged": False,
                "knee_epoch": 2.0,
                "alpha_early_true": a,
                "alpha_full_true": a + 0.1,
                "best_val_ce_true": ce,
                "alpha": 0.6,
                "schedule_effect": 1.0,
                "configured_rho_cell": rho,
                "configured_rho_within": rho,
            }
            rows.append(
                {
                    "variant": key[0],
                    "run": key[1],
                    "status": "ok",
                    "knee_found": True,
                    "knee_epoch": 2.0 * 10 ** (0.01 * rng.standard_normal()),
                    "alpha_early": a + noise * rng.standard_normal(),
                    "alpha_full": a + 0.1,
                    "best_val_ce": ce + noise * rng.standard_normal(),
                    "power_exponent": 1.0,
                    "power_r2": 0.99 if h1 else 0.95,
                }
            )
    return pd.DataFrame(rows), truths


def test_recovers_a_supported_h2_and_the_h1_share():
    table, truths = study(rho=-0.95)
    r = compare_with_truth(table, truths)
    assert r["h1"]["true_within_ci"] and r["h1"]["false_positive"] == r["h1"]["false_negative"] == 0
    assert r["h2"]["estimated_verdict"] == r["h2"]["true_verdict"] == "supported"
    assert r["h2"]["estimated_rho"] == r["h2"]["true_rho"] < -0.7
    assert r["h2"]["true_within_rho"] < -0.7
    assert r["knee"]["median_error_decades"] < 0.02 and r["knee"]["n_found"] == len(table)
    assert r["wrong"] == []
    md = truth_markdown(r)
    assert "H1 share" in md and "No run's verdict was wrong" in md


def test_the_literal_h2_verdicts_need_the_configured_sign():
    table, truths = study(rho=-0.95)
    either = compare_with_truth(table, truths)["h2"]
    assert either["estimated_verdict"] == either["true_verdict"] == "supported"
    assert compare_with_truth(table, truths, h2_sign="negative")["h2"]["estimated_verdict"] == "supported"
    wrong_sign = compare_with_truth(table, truths, h2_sign="positive")["h2"]  # rho = -0.95 against a positive one
    assert wrong_sign["estimated_verdict"] == wrong_sign["true_verdict"] == "not supported"


def test_unsupported_h2_and_wrong_verdicts_are_listed():
    table, truths = study(rho=0.0, noise=0.01, seed=1)
    r = compare_with_truth(table, truths)
    assert r["h2"]["true_verdict"] == "not supported" and r["h2"]["verdict_matches"]
    key = next(iter(truths))
    table.loc[0, "power_r2"] = 0.5 if truths[key]["h1_single_power_law"] else 0.999
    table.loc[1, "knee_found"] = False
    r = compare_with_truth(table, truths)
    assert {(w["run"], w["what"]) for w in r["wrong"]} >= {
        (key, "H1"),
        ("/".join(table.loc[1, ["variant", "run"]]), "knee"),
    }
    assert "Runs whose verdict was wrong" in truth_markdown(r)


def test_uses_the_per_run_h1_decision_when_the_table_has_it():
    table, truths = study()
    table["h1_single_power_law"] = [truths[f"{v}/{r}"]["h1_single_power_law"] for v, r in zip(table.variant, table.run)]
    table["power_r2"] = 0.0  # ignored
    r = compare_with_truth(table, truths)
    assert r["h1"]["rule"] == "h1_single_power_law" and r["h1"]["estimated_share"] == r["h1"]["true_share"]


def test_judges_the_study_s_cluster_aware_intervals_and_defensible_verdict():
    from loss_slope.analysis import h1_statistics, h2_statistics
    from loss_slope.report.results import H2Result, Share

    table, truths = study(rho=-0.95)
    table["h1_single_power_law"] = [truths[f"{v}/{r}"]["h1_single_power_law"] for v, r in zip(table.variant, table.run)]
    t = table.assign(
        optimizer="sgd",
        lr=[float(r.split("-")[0][2:]) for r in table.run],
        weight_decay=0.001,
        seed=[int(r.split("-s")[1]) for r in table.run],
        early_end_loss=1.0 + table.alpha_early * 0.0 + np.linspace(0, 0.1, len(table)),
        excluded_reason=None,
    )
    h1 = h1_statistics(t).to_dict()["overall"]
    h2 = h2_statistics(t).to_dict()
    r = compare_with_truth(
        table, truths, h1_study=Share.from_dict(h1), h2_study=H2Result.from_dict(h2), h2_sign="negative"
    )
    assert r["h1"]["interval"] == "cluster-aware" and r["h1"]["ci"] == [h1["ci"][0], h1["ci"][1]]
    plain = compare_with_truth(table, truths)
    assert plain["h1"]["interval"].startswith("Wilson")
    # 12 cells: the cluster-aware interval is wider than the one that treats 72 runs as independent
    assert r["h1"]["ci"][1] - r["h1"]["ci"][0] > plain["h1"]["ci"][1] - plain["h1"]["ci"][0]
    d = r["h2"]["defensible"]
    assert d["verdict"] == h2["verdict"] and d["true_verdict"] == "supported"
    assert d["matches"] == (None if h2["verdict"] == "inconclusive" else h2["verdict"] == "supported")
    assert d["true_in_pooled_ci"] is True
    md = truth_markdown(r)
    assert "cluster-aware interval" in md and f"verdict {h2['verdict']} vs supported" in md


def test_h1_is_judged_on_the_axis_where_the_truth_is_a_power_law():
    from loss_slope.report.truth import truth_axis

    table, truths = study()
    assert truth_axis(truths) == "cumulative_lr"  # schedule_effect 1: progress is the summed LR
    assert truth_axis({k: {**v, "schedule_effect": 0.0} for k, v in truths.items()}) == "step"
    mixed = {k: {**v, "schedule_effect": 0.5 if i else 1.0} for i, (k, v) in enumerate(truths.items())}
    assert truth_axis(mixed) is None
    table["h1_single_power_law"] = False  # the step axis: the cosine bends every curve
    table["cumulative_lr__h1_single_power_law"] = [
        truths[f"{v}/{r}"]["h1_single_power_law"] for v, r in zip(table.variant, table.run)
    ]
    on_step = compare_with_truth(table, truths)
    on_lr = compare_with_truth(table, truths, h1_column="cumulative_lr__h1_single_power_law")
    assert on_step["h1"]["estimated_share"] == 0 and not on_step["h1"]["true_within_ci"]
    assert on_lr["h1"]["estimated_share"] == on_lr["h1"]["true_share"] and on_lr["h1"]["true_within_ci"]


def test_the_comparison_reads_back_as_the_typed_truth_section():
    import json

    from loss_slope.jsonio import jsonable
    from loss_slope.report.truth_section import TruthComparison

    table, truths = study(rho=0.0, noise=0.01, seed=1)
    table.loc[1, "knee_found"] = False
    r = compare_with_truth(table, truths)
    typed = TruthComparison.from_dict(json.loads(json.dumps(jsonable(r))))
    assert typed.n_ok == r["n_ok"] and typed.h1.rule == r["h1"]["rule"] and typed.h2.defensible is None
    assert typed.wrong and typed.wrong[0].what == r["wrong"][0]["what"]
    assert truth_markdown(typed) == truth_markdown(r)


def test_a_study_without_a_usable_run_is_compared_without_estimates():
    table, truths = study(n_cells=4, seeds=2)
    # what the run table holds when no run was fitted: identity and status only
    none_fitted = table[["variant", "run"]].assign(status="missing", reason="training failed")
    r = compare_with_truth(none_fitted, truths)
    assert r["n_ok"] == 0 and r["h1"]["n"] == 0 and r["h1"]["estimated_share"] is None
    assert r["h2"]["n"] == 0 and r["h2"]["estimated_rho"] is None
    text = truth_markdown(r)
    assert "0 of 8 runs are usable" in text and "— (no run decided)" in text
