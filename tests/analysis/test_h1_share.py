"""H1 at study level: share of single power laws with a cluster-aware interval."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from loss_slope.analysis import AnalysisError, h1_statistics
from loss_slope.analysis.exceptions import NotEnoughPoints
from loss_slope.analysis.stats import wilson_interval
from loss_slope.analysis.synthetic_study import make_study_table


def _table(success, n_cells=36, n_seeds=6):
    """Cells x seeds table with the given per-run success array, shape (n_cells, n_seeds)."""
    rows = []
    for c in range(n_cells):
        for s in range(n_seeds):
            rows.append(
                {
                    "variant": f"V{c % 4}",
                    "lr": [0.05, 0.1, 0.2][(c // 4) % 3],
                    "weight_decay": c // 12,
                    "seed": s,
                    "run": f"c{c}-s{s}",
                    "h1_single_power_law": success[c][s],
                    "excluded_reason": None,
                }
            )
    return pd.DataFrame(rows)


def test_counts_exclusions_and_undecided():
    succ = np.ones((36, 6), dtype=object)
    succ[0, :3] = False
    succ[1, 0] = None  # undecided
    t = _table(succ)
    t.loc[10, "excluded_reason"] = "diverged: NaN loss"
    r = h1_statistics(t)
    assert (r.overall.k, r.overall.n, r.overall.n_cells) == (216 - 3 - 2, 214, 36)
    reasons = dict(r.excluded)
    assert reasons["c1-s0"] == "h1_single_power_law undecided"
    assert reasons[t.run[10]] == "diverged: NaN loss"
    f = r.with_excluded_as_failures
    assert (f.k, f.n) == (r.overall.k, 216)
    assert r.verdicts == r.overall.verdicts
    assert set(r.by_variant) == {"V0", "V1", "V2", "V3"}
    assert sum(s.n for s in r.by_variant.values()) == 214


def test_every_variant_has_a_share_or_a_reason():
    t = _table(np.ones((36, 6), dtype=object))
    t.loc[t.variant == "V1", "excluded_reason"] = "diverged: NaN loss"
    v2 = t.index[t.variant == "V2"]
    one_cell = (t.variant == "V2") & (t.lr == t.lr[v2[0]]) & (t.weight_decay == t.weight_decay[v2[0]])
    t.loc[(t.variant == "V2") & ~one_cell, "h1_single_power_law"] = None
    r = h1_statistics(t)
    assert set(r.by_variant) == {"V0", "V3"}
    assert dict(r.skipped_variants) == {
        "V1": "no usable run (54 excluded or undecided)",
        "V2": "1 cell with usable runs: no cluster-aware interval",
    }
    assert r.to_dict()["skipped_variants"] == [
        {"variant": "V1", "reason": "no usable run (54 excluded or undecided)"},
        {"variant": "V2", "reason": "1 cell with usable runs: no cluster-aware interval"},
    ]


def test_numeric_column_with_threshold_and_the_r2_alias():
    t = make_study_table("none", seed=1)
    a = h1_statistics(t, column="h1_literal_r2", threshold=0.98)
    b = h1_statistics(t)  # the boolean decision: the generator makes them agree
    assert (a.overall.k, a.overall.n) == (b.overall.k, b.overall.n)
    c = h1_statistics(t, r2_column="h1_literal_r2")
    assert c.threshold == 0.98 and c.overall.k == a.overall.k
    t.loc[3, "h1_literal_r2"] = np.nan
    a = h1_statistics(t, column="h1_literal_r2", threshold=0.98)
    assert a.overall.n == 215 and "missing" in dict(a.excluded)[t.run[3]]


@pytest.mark.parametrize("value", [True, False])
def test_all_or_nothing_gives_a_nonzero_width_interval(value):
    r = h1_statistics(_table(np.full((36, 6), value, dtype=object)))
    lo, hi = r.overall.ci
    q = sps.t.ppf(0.975, 35)
    if value:
        assert hi == 1.0 and lo == pytest.approx(216 / (216 + q * q))  # Wilson at k = n with a t quantile
        assert 0.97 < lo < 0.99
        assert r.verdicts == {0.8: "supported", 0.9: "supported"}
    else:
        assert lo == 0.0 and 0.01 < hi < 0.03
        assert r.verdicts == {0.8: "not supported", 0.9: "not supported"}


def test_cell_level_successes_count_as_cells_not_runs():
    # whole cells succeed or fail: the information is 36 cells, not 216 runs
    rng = np.random.default_rng(0)
    cell_ok = rng.random(36) < 0.85
    cell_ok[:4] = [True, True, True, False]
    r = h1_statistics(_table(np.repeat(cell_ok[:, None], 6, axis=1)))
    assert r.overall.design_effect == pytest.approx(6.0 * 35 / 36 * 36 / 35, rel=0.05)
    assert r.overall.n_effective == pytest.approx(36, rel=0.1)
    k = int(cell_ok.sum())
    naive = wilson_interval(6 * k, 216)
    assert np.ptp(r.overall.ci) > 2.0 * np.ptp(naive)


def test_independent_runs_keep_a_design_effect_near_one():
    rng = np.random.default_rng(1)
    r = h1_statistics(_table(rng.random((36, 6)) < 0.85))
    assert 1.0 <= r.overall.design_effect < 1.6


def test_verdicts_three_way():
    succ = np.ones((36, 6), dtype=bool)
    succ.flat[::7] = False  # 31 failures, spread over the cells: share 0.856
    r = h1_statistics(_table(succ))
    lo, hi = r.overall.ci
    assert lo < 0.9 <= hi or hi < 0.9
    assert r.verdicts[0.8] == ("supported" if lo >= 0.8 else "inconclusive")
    assert r.verdicts[0.9] == ("not supported" if hi < 0.9 else "inconclusive")
    r = h1_statistics(_table(succ), target_shares=(0.5, 0.99))
    assert r.verdicts == {0.5: "supported", 0.99: "not supported"}


def test_coverage_of_the_population_share():
    # 150 clustered studies (cell success probabilities ~ Beta, ICC 0.15): >= 90 % coverage
    hits = 0
    for i in range(150):
        t = make_study_table("none", seed=i, h1_share=0.85, h1_icc=0.15)
        lo, hi = h1_statistics(t).overall.ci
        hits += lo <= 0.85 <= hi
    assert hits / 150 >= 0.90


def test_to_dict_is_strict_json_and_frame():
    r = h1_statistics(make_study_table("none", seed=2))
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d["verdicts"]) == {"0.8", "0.9"}
    assert len(d["overall"]["ci"]) == 2
    f = r.to_frame()
    assert list(f.variant[:2]) == ["all", "all, excluded as failures"]


def test_bad_input():
    t = make_study_table("none", seed=0)
    with pytest.raises(AnalysisError, match="'lr'"):
        h1_statistics(t.drop(columns="lr"))
    with pytest.raises(NotEnoughPoints, match="got 1"):
        h1_statistics(t[(t.variant == "S-core") & (t.lr == 0.1) & (t.weight_decay == 0.01)])
    t["h1_literal_r2"] = t["h1_literal_r2"].astype(float)
    with pytest.raises(AnalysisError, match="threshold"):
        h1_statistics(t, column="h1_literal_r2")


def test_two_way_clustering_on_request():
    t = make_study_table("none", seed=4, h1_share=0.8, h1_icc=0.0)
    one = h1_statistics(t)
    two = h1_statistics(t, seed_column="seed")
    assert two.overall.design_effect >= one.overall.design_effect
    assert (two.overall.k, two.overall.n) == (one.overall.k, one.overall.n)
    assert "seeds" in two.to_dict()["method"] and "seeds" not in one.to_dict()["method"]


def test_a_seed_effect_across_cells_widens_the_interval_to_the_seeds_degrees_of_freedom():
    # a bad seed fails runs in every cell: the two-way variance is the larger, and it rests on 6 seeds
    from loss_slope.analysis.stats import _wilson

    succ = np.ones((36, 6), dtype=object)
    succ[:, 0] = False  # seed 0 fails everywhere
    succ[:6, 1] = False
    r = h1_statistics(_table(succ), seed_column="seed").overall
    cells_only = h1_statistics(_table(succ)).overall
    assert r.design_effect > cells_only.design_effect
    q = sps.t.ppf(0.975, 5)  # min(36 cells, 6 seeds) - 1
    assert r.ci == pytest.approx(_wilson(r.share, r.n_effective, q))
    assert "min(n_cells, n_seeds) - 1" in h1_statistics(_table(succ), seed_column="seed").to_dict()["method"]
    # the share says which variance and df it used (the report prints them)
    assert (r.variance, r.df) == ("cells and seeds", 5)
    assert (cells_only.variance, cells_only.df) == ("cells", 35)
    assert h1_statistics(_table(succ), seed_column="seed").to_dict()["overall"]["variance"] == "cells and seeds"
    # every run alike: no clustered variance (binomial), whatever the cells
    alike = h1_statistics(_table(np.ones((36, 6), dtype=object)), seed_column="seed").overall
    assert (alike.variance, alike.design_effect) == (None, 1.0)


def test_missing_labels_are_excluded_and_counted_as_failures():
    t = make_study_table("none", seed=1)
    t["seed"] = t["seed"].astype(object)
    t.loc[0, "seed"] = None  # crashed the clustered interval (a seed code of -1)
    t["variant"] = t["variant"].astype(object)
    t.loc[1, "variant"] = None  # crashed the per-variant table
    r = h1_statistics(t, seed_column="seed")
    assert dict(r.excluded)[t.run[0]] == "seed missing" and dict(r.excluded)[t.run[1]] == "cell label missing"
    assert r.overall.n == 214 and r.with_excluded_as_failures.n == 216  # every run, as the docs say
