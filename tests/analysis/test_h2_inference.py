"""H2 study inference: cluster bootstrap machinery, the decompositions and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from loss_slope.analysis import AnalysisError, h2_statistics
from loss_slope.analysis.exceptions import NotEnoughPoints
from loss_slope.analysis.stats import _ranks, _resample_weights, _wcorr, h2_statistics_diverged_worst_rank
from loss_slope.analysis.synthetic_study import make_study_table, scenario

FAST = dict(n_boot=300)


# ---------------------------------------------------------------- weighted ranks = ranks of the resample
def test_unit_weight_ranks_are_scipy_midranks():
    v = np.array([3.0, 1.0, 2.0, 2.0, -np.inf, np.inf, 1.0])
    W = np.ones((1, v.size))
    assert _ranks(v, W)[0] == pytest.approx(sps.rankdata(v))
    assert _ranks(np.vstack([v, v[::-1]]), np.ones((2, v.size)))[1] == pytest.approx(sps.rankdata(v[::-1]))


@pytest.mark.parametrize("two_d", [False, True])
def test_weighted_ranks_equal_ranks_of_the_duplicated_sample(two_d):
    rng = np.random.default_rng(1)
    v = np.round(rng.standard_normal(30), 1)  # ties on purpose
    W = rng.integers(0, 4, size=(5, 30)).astype(float)
    R = _ranks(np.tile(v, (5, 1)) if two_d else v, W)
    for b in range(5):
        idx = np.repeat(np.arange(30), W[b].astype(int))
        full = sps.rankdata(v[idx])
        # each copy of row i has the same mid-rank, which is R[b, i]
        for i in np.flatnonzero(W[b]):
            assert full[idx == i] == pytest.approx(R[b, i])


def test_weighted_spearman_equals_spearman_of_the_resampled_table():
    t = make_study_table("borderline", seed=3)
    cell = pd.factorize(t.variant + t.lr.astype(str) + t.weight_decay.astype(str))[0]
    seed = t.seed.to_numpy()
    W, _ = _resample_weights(cell, 36, seed, 6, 3, np.random.default_rng(0))
    x, y = t.alpha_early.to_numpy(), t.best_val_ce.to_numpy()
    rho = _wcorr(_ranks(x, W), _ranks(y, W), W)
    for b in range(1, 4):
        idx = np.repeat(np.arange(len(t)), W[b].astype(int))
        assert rho[b] == pytest.approx(sps.spearmanr(x[idx], y[idx]).statistic, abs=1e-12)
    assert rho[0] == pytest.approx(sps.spearmanr(x, y).statistic)


def test_resample_weights_are_whole_cells_times_whole_seeds():
    cell = np.repeat(np.arange(36), 6)
    seed = np.tile(np.arange(6), 36)
    W, wc = _resample_weights(cell, 36, seed, 6, 50, np.random.default_rng(0))
    assert np.all(W[0] == 1)
    M = W[1:].reshape(50, 36, 6)
    # rank one per resample: W[c, s] = wc[c] * ws[s]
    for b in range(50):
        assert np.linalg.matrix_rank(M[b]) == 1
        assert M[b].sum() == 216
    assert np.all(wc[1:].sum(axis=1) == 36)


# ---------------------------------------------------------------- point estimates (known answers)
def _cells(t):
    return t.groupby(["variant", "lr", "weight_decay"])


def test_point_estimates_match_direct_computation():
    t = make_study_table("within_cell", seed=5)
    r = h2_statistics(t, **FAST)
    x, y = t.alpha_early, t.best_val_ce
    assert r.overall.spearman_rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert r.overall.pearson_r == pytest.approx(sps.pearsonr(x, y).statistic)
    assert (r.overall.n, r.overall.n_cells, r.n_runs, r.n_cells) == (216, 36, 216, 36)
    m = _cells(t)[["alpha_early", "best_val_ce"]].mean()
    assert r.cell_means.spearman_rho == pytest.approx(sps.spearmanr(m.alpha_early, m.best_val_ce).statistic)
    assert r.cell_means.n == 36
    dx = x - _cells(t).alpha_early.transform("mean")
    dy = y - _cells(t).best_val_ce.transform("mean")
    assert r.within_cell.spearman_rho == pytest.approx(sps.spearmanr(dx, dy).statistic)
    assert r.within_cell.pearson_r == pytest.approx(sps.pearsonr(dx, dy).statistic)
    # two-way residuals: cell and seed main effects removed
    D = pd.get_dummies(t[["variant", "lr", "weight_decay"]].astype(str).agg("/".join, axis=1)).to_numpy(float)
    S = pd.get_dummies(t.seed.astype(str)).to_numpy(float)
    X2 = np.hstack([D, S[:, 1:]])
    res = [v - X2 @ np.linalg.lstsq(X2, v, rcond=None)[0] for v in (x.to_numpy(), y.to_numpy())]
    assert r.within_cell_seed_adjusted.spearman_rho == pytest.approx(sps.spearmanr(*res).statistic, abs=1e-9)
    # partial rank correlation given variant, LR and WD as additive factors
    F = pd.get_dummies(t[["variant", "lr", "weight_decay"]].astype(str), drop_first=True).to_numpy(float)
    F = np.hstack([np.ones((len(t), 1)), F])
    rr = [v - F @ np.linalg.lstsq(F, v, rcond=None)[0] for v in (sps.rankdata(x), sps.rankdata(y))]
    assert r.partial.spearman_rho == pytest.approx(sps.pearsonr(*rr).statistic, abs=1e-9)
    lv = r.versus_level
    assert lv.rho_x == pytest.approx(r.overall.spearman_rho)
    assert lv.rho_level == pytest.approx(sps.spearmanr(t.early_end_loss, y).statistic)
    assert lv.difference == pytest.approx(abs(lv.rho_x) - abs(lv.rho_level))
    for c in (r.overall, r.cell_means, r.within_cell, r.partial):
        lo, hi = c.spearman_ci
        assert lo < c.spearman_rho < hi
    assert lv.difference_ci[0] < lv.difference < lv.difference_ci[1]


def test_reproducible_with_seed():
    t = make_study_table("strong", seed=0)
    a, b = h2_statistics(t, **FAST), h2_statistics(t, **FAST)
    assert a.to_dict() == b.to_dict()
    assert h2_statistics(t, n_boot=300, seed=1).overall.spearman_ci != a.overall.spearman_ci


# ---------------------------------------------------------------- the design, not the grid
def test_cell_confounding_shows_in_the_within_cell_interval():
    # cells drive alpha and CE (90 % of the variance); no relation within a cell
    t = make_study_table(scenario("cell_confounded", share_cell=0.9, share_seed=0.03), seed=11)
    r = h2_statistics(t)
    assert r.overall.spearman_rho < -0.75  # pooled: a real relation across configurations
    assert sps.spearmanr(t.alpha_early, t.best_val_ce).pvalue < 1e-30
    assert r.overall.spearman_p > 1e-10  # cluster p-value: 36 cells, not 216 runs
    lo, hi = r.within_cell.spearman_ci
    assert lo < 0 < hi
    lo, hi = r.within_cell_seed_adjusted.spearman_ci
    assert lo < 0 < hi


def test_cluster_interval_is_wider_than_the_run_level_one():
    from loss_slope.analysis.stats import correlation

    t = make_study_table("cell_confounded", seed=2)
    r = h2_statistics(t, **FAST)
    naive = correlation(t.alpha_early, t.best_val_ce, n_boot=300)
    assert np.ptp(r.overall.spearman_ci) > 1.5 * np.ptp(naive.spearman_ci)


def test_within_cell_relation_is_found():
    r = h2_statistics(make_study_table("within_cell", seed=4), **FAST)
    assert r.within_cell.spearman_ci[1] < 0
    assert r.within_cell_seed_adjusted.spearman_ci[1] < 0


@pytest.mark.parametrize(
    "name,sign,expected",
    [
        ("strong", "negative", "supported"),
        ("strong", "either", "supported"),
        ("strong", "positive", "not supported"),
        ("none", "negative", "not supported"),
        ("none", "either", "not supported"),
    ],
)
def test_verdicts(name, sign, expected):
    r = h2_statistics(make_study_table(name, seed=7), sign=sign, **FAST)
    assert r.verdict == expected


def test_verdict_needs_the_whole_interval_beyond_the_threshold():
    t = make_study_table("strong", seed=7)
    r = h2_statistics(t, **FAST)
    hi = r.overall.spearman_ci[1]
    assert r.verdict == "supported" and hi <= -0.7
    # a threshold inside the interval: inconclusive
    mid = -float(np.mean(r.overall.spearman_ci))
    assert h2_statistics(t, min_abs_rho=mid, **FAST).verdict == "inconclusive"
    # a threshold beyond the whole interval: not supported
    assert h2_statistics(t, min_abs_rho=0.999, **FAST).verdict == "not supported"
    # p must also be below max_p
    assert h2_statistics(t, max_p=0.0, **FAST).verdict == "inconclusive"


def test_level_echo_adds_nothing_over_the_level():
    r = h2_statistics(make_study_table("level_echo", seed=8), **FAST)
    assert r.versus_level.difference < 0
    assert r.versus_level.difference_ci[0] < 0
    assert r.prediction.rmse["level"] < r.prediction.rmse["alpha"]


# ---------------------------------------------------------------- prediction
def test_leave_one_cell_out_prediction():
    t = make_study_table("strong", seed=9)
    r = h2_statistics(t, **FAST)
    p = r.prediction
    assert set(p.rmse) == {"mean", "alpha", "level", "labels", "labels+alpha", "labels+level", "alpha+level"}
    assert (p.n, p.n_cells) == (216, 36)
    # by hand for the alpha model
    cell = t.variant + t.lr.astype(str) + t.weight_decay.astype(str)
    err = []
    for c in cell.unique():
        tr, te = t[cell != c], t[cell == c]
        b = np.polyfit(tr.alpha_early, tr.best_val_ce, 1)
        err += list(te.best_val_ce - np.polyval(b, te.alpha_early))
    assert p.rmse["alpha"] == pytest.approx(np.sqrt(np.mean(np.square(err))))
    assert p.rmse["alpha"] < p.rmse["mean"]
    # labels alone cannot predict random cells better than the mean
    assert p.rmse["labels"] > 0.9 * p.rmse["mean"]


def test_exact_linear_relation_is_predicted_exactly():
    t = make_study_table("none", seed=1)
    t["best_val_ce"] = 2.0 - 0.5 * t.alpha_early
    r = h2_statistics(t, **FAST)
    assert r.prediction.rmse["alpha"] == pytest.approx(0.0, abs=1e-10)
    assert r.overall.spearman_rho == pytest.approx(-1.0)
    assert r.verdict == "supported"


# ---------------------------------------------------------------- per variant, exclusions, output
def test_by_variant():
    r = h2_statistics(make_study_table("strong", seed=3), **FAST)
    assert set(r.by_variant) == {"S-core", "S-adamw", "S-bn-off", "S-narrow"}
    for v in r.by_variant.values():
        assert (v.n_runs, v.n_cells, v.overall.n_cells) == (54, 9, 9)
        assert "wide" in v.note
        assert np.ptp(v.overall.spearman_ci) > np.ptp(r.overall.spearman_ci)


def test_a_variant_without_usable_runs_is_listed_not_dropped():
    t = make_study_table("strong", seed=3)
    t.loc[t.variant == "S-bn-off", "excluded_reason"] = "diverged: NaN loss"
    r = h2_statistics(t, **FAST)
    assert set(r.by_variant) == {"S-core", "S-adamw", "S-narrow"}
    assert dict(r.skipped_variants) == {"S-bn-off": "no usable run (54 excluded)"}
    # the other variants' resamples are not shifted by the skipped one
    full = h2_statistics(make_study_table("strong", seed=3).query("variant != 'S-bn-off'"), **FAST)
    assert r.by_variant["S-narrow"].overall.spearman_ci == full.by_variant["S-narrow"].overall.spearman_ci


def test_exclusions_and_single_seed_cells():
    t = make_study_table("strong", seed=3)
    t.loc[0, "excluded_reason"] = "diverged: NaN loss"
    t.loc[1, "alpha_early"] = np.nan
    first_cell = (t.variant == t.variant[10]) & (t.lr == t.lr[10]) & (t.weight_decay == t.weight_decay[10])
    drop = t.index[first_cell][1:]  # keep one seed of that cell
    t.loc[drop, "excluded_reason"] = "not run"
    r = h2_statistics(t, **FAST)
    reasons = dict(r.excluded)
    assert reasons[t.run[0]] == "diverged: NaN loss"
    assert reasons[t.run[1]] == "alpha_early missing or not finite"
    assert len(r.excluded) == 2 + len(drop)
    assert r.n_runs == 216 - 2 - len(drop)
    assert r.within_cell.n_skipped_cells == 1 and len(r.skipped_cells) == 1
    assert "single usable seed" in r.skipped_cells[0][1]
    assert r.within_cell.n == r.n_runs - 1 and r.within_cell.n_cells == 35


@pytest.mark.parametrize("tied", ["alpha_early", "best_val_ce"])
def test_skipped_cells_list_single_seed_and_tied_cells_with_their_reasons(tied):
    t = make_study_table("strong", seed=3)
    cells = t.groupby(["variant", "lr", "weight_decay"], sort=False).ngroup()
    single, constant = cells == 0, cells == 1
    t.loc[t.index[single][1:], "excluded_reason"] = "not run"  # one usable seed left
    t.loc[constant, tied] = t.loc[constant, tied].iloc[0]  # every run of the cell ties
    r = h2_statistics(t, **FAST)

    def label(m):  # the cell's name in the result: its cell columns' values joined by "/"
        return "/".join(str(t.loc[m, c].iloc[0]) for c in ("variant", "lr", "weight_decay"))

    assert r.within_cell.n_skipped_cells == 2 and r.within_cell.n_cells == 34
    assert dict(r.skipped_cells) == {label(single): "single usable seed", label(constant): f"all runs tie in {tied}"}
    assert r.to_dict()["skipped_cells"] == [{"cell": c, "reason": why} for c, why in r.skipped_cells]


def test_missing_level_leaves_only_the_level_parts_out():
    t = make_study_table("strong", seed=3)
    t.loc[:9, "early_end_loss"] = np.nan
    r = h2_statistics(t, **FAST)
    assert r.n_runs == 216 and r.versus_level.n == 206 and r.prediction.n == 206
    r = h2_statistics(t.drop(columns="early_end_loss"), **FAST)
    assert r.versus_level is None and "level" not in r.prediction.rmse
    assert any("level" in n for n in r.notes)
    t["early_end_loss"] = np.nan  # no run has a level: prediction from the other models, on every run
    r = h2_statistics(t, **FAST)
    assert r.versus_level is None and r.prediction.n == 216
    assert set(r.prediction.rmse) == {"mean", "alpha", "labels", "labels+alpha"}


def test_to_dict_is_strict_json():
    t = make_study_table("none", seed=3)
    t.loc[:40, "excluded_reason"] = "x"  # some cells lose all but one seed
    d = h2_statistics(t, **FAST).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["verdict"] in ("supported", "not supported", "inconclusive")
    assert {"spearman_ci_low", "spearman_ci_high", "n_cells"} <= set(d["overall"])
    assert len(d["versus_level"]["difference_ci"]) == 2
    assert d["settings"]["sign"] == "negative"


def test_no_seed_column_resamples_cells_only():
    r = h2_statistics(make_study_table("strong", seed=3).drop(columns="seed"), **FAST)
    assert "cells only" in " ".join(r.notes)
    assert r.within_cell_seed_adjusted is None
    assert "cluster bootstrap (36 cells" in r.overall.method


# ---------------------------------------------------------------- diverged runs at the worst rank
def test_diverged_runs_at_the_worst_rank():
    t = make_study_table("strong", seed=3)
    div = [0, 7, 50]
    t.loc[div, "diverged"] = True
    t.loc[div, "excluded_reason"] = "diverged: NaN loss"
    t.loc[div, "best_val_ce"] = np.nan  # diverged after the early window: alpha_early was measured
    main = h2_statistics(t, **FAST)
    assert main.n_runs == 213 and main.diverged_at_worst_rank == ()
    r = h2_statistics_diverged_worst_rank(t, **FAST)
    assert r.n_runs == 216 and set(r.diverged_at_worst_rank) == set(t.run[div])
    assert r.prediction is None
    y = t.best_val_ce.fillna(np.inf)
    assert r.overall.spearman_rho == pytest.approx(sps.spearmanr(t.alpha_early, y).statistic)
    assert r.to_dict()["diverged_at_worst_rank"]


def test_a_diverged_run_without_alpha_is_excluded_not_given_a_rank():
    # no relation at all; whole cells diverge before the early window. Imputing the flattest slope
    # beside the worst CE would put every such run where a negative rho expects it.
    shifts = []
    for s in range(3):
        t = make_study_table("none", seed=s)
        cells = t.groupby(["variant", "lr", "weight_decay"]).ngroup()
        div = cells.isin(np.random.default_rng(s).choice(36, 4, replace=False)).to_numpy()
        t.loc[div, "diverged"] = True
        t.loc[div, "excluded_reason"] = "diverged: NaN loss"
        t.loc[div, ["best_val_ce", "alpha_early", "early_end_loss"]] = np.nan
        main = h2_statistics(t, **FAST)
        r = h2_statistics_diverged_worst_rank(t, **FAST)
        assert r.diverged_at_worst_rank == () and r.n_runs == main.n_runs == 216 - 24
        assert {why for _, why in r.excluded} == {"diverged before alpha_early could be measured"}
        shifts.append(r.overall.spearman_rho - main.overall.spearman_rho)
    assert np.max(np.abs(shifts)) < 0.02


def test_within_cell_ranks_ties_across_cells():
    # deviations equal across cells get mid-ranks (as scipy gives), not ordinal ranks
    t = make_study_table("none", seed=1)
    cell = t.groupby(["variant", "lr", "weight_decay"]).ngroup().to_numpy()
    rng = np.random.default_rng(0)
    dev_x = rng.integers(-2, 3, size=len(t)).astype(float)
    dev_y = rng.integers(-2, 3, size=len(t)).astype(float)
    t["alpha_early"] = cell * 10.0 + dev_x
    t["best_val_ce"] = cell * 10.0 + dev_y
    r = h2_statistics(t, level_column=None, **FAST)
    mean_x = pd.Series(t.alpha_early).groupby(cell).transform("mean")
    mean_y = pd.Series(t.best_val_ce).groupby(cell).transform("mean")
    # the deviations are multiples of 1/6 in exact arithmetic: ties are ties (rounded here, snapped in the code)
    expected = sps.spearmanr((t.alpha_early - mean_x).round(9), (t.best_val_ce - mean_y).round(9)).statistic
    assert r.within_cell.spearman_rho == pytest.approx(expected, abs=1e-12)


def test_a_cell_whose_runs_all_tie_has_no_within_cell_deviation():
    t = make_study_table("strong", seed=3)
    first = (t.variant == t.variant[0]) & (t.lr == t.lr[0]) & (t.weight_decay == t.weight_decay[0])
    t.loc[first, "diverged"] = True
    t.loc[first, "excluded_reason"] = "diverged: NaN loss"
    r = h2_statistics_diverged_worst_rank(t, **FAST)
    assert r.within_cell.n == 216 - int(first.sum()) and r.within_cell.n_cells == 35
    assert r.within_cell.n_skipped_cells == 1


def test_resamples_at_rho_one_do_not_blow_up_the_interval():
    # a variant's 9 cell means: resamples with few distinct cells often rank them perfectly
    from loss_slope.analysis.stats import _fisher_interval

    rng = np.random.default_rng(0)
    z = np.tanh(rng.normal(np.arctanh(-0.95), 0.4, size=2000))
    boot = np.where(rng.random(2000) < 0.2, -1.0, z)  # 20 % of the resamples at rho = -1
    (lo, hi), p = _fisher_interval(-0.95, boot, 2.3, 8)
    (lo0, hi0), p0 = _fisher_interval(-0.95, z, 2.3, 8)
    clipped_sd = np.std(np.arctanh(np.clip(boot, -1 + 1e-9, 1 - 1e-9)), ddof=1)
    assert np.tanh(np.arctanh(-0.95) + 2.3 * clipped_sd) > 0.99  # what the s.d. of clipped atanh gave
    assert hi0 < hi < -0.3 and p < 0.05  # wider than without the atoms, but still an interval
    assert lo < -0.99 and p0 < p
    # and the variant-level cell-mean interval of a strong relation is not (-1, 1)
    r = h2_statistics(make_study_table("strong", seed=2), n_boot=2000)
    for v in r.by_variant.values():
        if v.cell_means.spearman_rho < -0.9:
            assert v.cell_means.spearman_ci[1] < 0


def test_intervals_use_t_on_the_cells_that_contribute():
    """A statistic from 3 of 36 cells gets t(2), not t(35); the level comparison likewise."""
    t = make_study_table("within_cell", seed=3)
    cells = t.groupby(["variant", "lr", "weight_decay"]).ngroup()
    keep = cells.isin([0, 1, 2])
    t.loc[~keep, "alpha_early"] = t.loc[~keep].groupby(cells[~keep])["alpha_early"].transform("mean")
    t.loc[~cells.isin([0, 1, 2, 3]), "early_end_loss"] = np.nan
    r = h2_statistics(t, **FAST)
    w = r.within_cell
    assert (w.n_cells, w.n_skipped_cells) == (3, 33) and "t(2) quantile" in w.method
    assert "t(35) quantile" in r.overall.method
    lo, hi = w.spearman_ci
    z0, q = np.arctanh(w.spearman_rho), sps.t.ppf(0.975, 2)
    # the interval is symmetric in atanh with the t(2) quantile: its half-width / q is one s.e.
    se = (np.arctanh(hi) - np.arctanh(lo)) / (2 * q)
    assert np.arctanh(hi) - z0 == pytest.approx(q * se, rel=1e-9)
    assert w.spearman_p == pytest.approx(2 * sps.t.sf(abs(z0) / se, 2), rel=1e-6)
    vl = r.versus_level
    assert vl.n_cells == 4 and -1.0 <= vl.difference_ci[0] <= vl.difference_ci[1] <= 1.0
    # its intervals use t(3), the level's 4 cells: every interval is computed with the df of its cells
    from loss_slope.analysis import stats

    calls = []

    def spy(est, boot, q, df, **kw):
        calls.append((est, df, q))
        return fisher(est, boot, q, df, **kw)

    fisher = stats._fisher_interval
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats, "_fisher_interval", spy)
        again = h2_statistics(t, **FAST)
    assert again.versus_level == vl
    level = [(df, q) for est, df, q in calls if est in (vl.rho_x, vl.rho_level)]
    assert level and all(df == 3 and q == pytest.approx(sps.t.ppf(0.975, 3)) for df, q in level), level
    assert {df for _, df, _ in calls} >= {35, 2, 3}


def test_a_perfect_order_of_many_cells_has_a_p_value():
    """2 / G! past 170! (the float's range): the chance is 0 to the last digit, not an overflow."""
    t = make_study_table("none", seed=1)
    t["best_val_ce"] = -t["alpha_early"]
    r = h2_statistics(t, cell_columns=("variant", "lr", "weight_decay", "seed"), **FAST)  # 216 cells
    assert r.overall.spearman_rho == -1.0 and r.overall.spearman_p == 0.0
    assert r.overall.spearman_ci == (-1.0, -1.0)


def test_a_perfect_order_is_judged_by_the_chance_of_that_order_among_the_cells():
    """Every resample of a perfectly ranked table is perfect: the bootstrap has no spread, so p is
    the chance 2 / G! that G exchangeable cells fall in a perfect order (1/12 for 4: undecided)."""
    t = make_study_table("none", seed=1)
    small = t[t.seed == 0].groupby("variant").head(1).copy()  # 4 cells, one run each
    small["best_val_ce"] = -small["alpha_early"]
    r = h2_statistics(small, n_boot=2000, sign="either")
    assert r.overall.spearman_rho == -1.0
    assert np.isnan(r.overall.spearman_ci).all() and r.overall.spearman_p == pytest.approx(1 / 12)
    assert r.verdict == "inconclusive"
    five = t[t.seed == 0].groupby("variant").head(2).iloc[:5].copy()  # 5 cells: 2 / 120 < 0.05
    five["best_val_ce"] = -five["alpha_early"]
    r = h2_statistics(five, n_boot=2000, sign="either")
    assert r.overall.spearman_ci == (-1.0, -1.0) and r.overall.spearman_p == pytest.approx(1 / 60)


# ---------------------------------------------------------------- bad input
def test_missing_cell_column_is_named():
    t = make_study_table("none", seed=0).drop(columns="weight_decay")
    with pytest.raises(AnalysisError, match="weight_decay"):
        h2_statistics(t, **FAST)


def test_fewer_than_four_cells_is_an_error_with_the_count():
    t = make_study_table("none", seed=0, variants=("A",), lrs=(0.1,), weight_decays=(0.1, 0.2, 0.3))
    with pytest.raises(NotEnoughPoints, match="got 3"):
        h2_statistics(t, **FAST)
    t = make_study_table("none", seed=0)
    keep = t.variant.eq("S-core") & t.lr.eq(0.1) & t.weight_decay.isin([0.001, 0.01])
    t.loc[~keep, "excluded_reason"] = "diverged"
    with pytest.raises(NotEnoughPoints, match="cells .* got 2"):
        h2_statistics(t, **FAST)


def test_bad_sign():
    with pytest.raises(AnalysisError, match="sign"):
        h2_statistics(make_study_table("none", seed=0), sign="down", **FAST)


def test_a_run_without_a_seed_or_variant_is_excluded_with_its_reason():
    """A missing seed gave the run another seed's bootstrap weight and seed effect, silently;
    a missing variant crashed the per-variant table."""
    t = make_study_table("within_cell", seed=5)
    t["seed"] = t["seed"].astype(object)
    t.loc[0, "seed"] = None
    t["variant"] = t["variant"].astype(object)
    t.loc[1, "variant"] = None
    r = h2_statistics(t, **FAST)
    assert dict(r.excluded) == {t.run[0]: "seed missing", t.run[1]: "cell label missing"}
    assert r.overall.n == 214 and "<missing>" not in {v for v, _ in r.skipped_variants}


def test_deviations_that_tie_exactly_get_mid_ranks():
    """36 cells x 2 seeds whose deviations are exactly +-0.05 (x) and +-0.005 (y): in floats the
    subtraction leaves them unequal in the last bits; the within-cell Spearman must rank them as
    the ties they are (then it equals the Pearson of the two-valued deviations)."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(36):
        bx, by = round(rng.uniform(0.3, 1.2), 2), round(rng.uniform(0.5, 1.5), 3)
        sx, sy = rng.choice([-1, 1]), rng.choice([-1, 1])
        for s, sg in ((0, 1), (1, -1)):
            rows.append(
                dict(
                    variant=f"V{c % 4}",
                    lr=[0.05, 0.1, 0.2][(c // 4) % 3],
                    weight_decay=[1e-4, 1e-3, 1e-2][c // 12],
                    seed=s,
                    run=f"c{c}s{s}",
                    alpha_early=round(bx + sg * sx * 0.05, 2),
                    best_val_ce=round(by + sg * sy * 0.005, 3),
                )
            )
    t = pd.DataFrame(rows)
    r = h2_statistics(t, level_column=None, **FAST)
    g = t.groupby(["variant", "lr", "weight_decay"])
    dx = (t.alpha_early - g.alpha_early.transform("mean")).round(9)
    dy = (t.best_val_ce - g.best_val_ce.transform("mean")).round(9)
    assert r.within_cell.spearman_rho == pytest.approx(sps.spearmanr(dx, dy).statistic, abs=1e-12)
    assert r.within_cell.spearman_rho == pytest.approx(r.within_cell.pearson_r, abs=1e-9)
