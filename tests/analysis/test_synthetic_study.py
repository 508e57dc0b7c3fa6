"""Known-truth study tables: layout and population values."""

from __future__ import annotations

import numpy as np
import pytest

from loss_slope.analysis.synthetic_study import (
    STUDY_SCENARIOS,
    make_study_table,
    pearson_from_spearman,
    population_values,
    scenario,
    simulate_population,
    spearman_from_pearson,
)


def test_table_layout():
    t = make_study_table("none", seed=0)
    assert len(t) == 216
    assert t.groupby(["variant", "lr", "weight_decay"]).ngroups == 36
    assert set(t.seed) == set(range(6))
    assert t.run.is_unique
    need = {
        "variant",
        "optimizer",
        "lr",
        "weight_decay",
        "seed",
        "run",
        "alpha_early",
        "best_val_ce",
        "early_end_loss",
        "excluded_reason",
        "diverged",
        "h1_single_power_law",
        "h1_literal_r2",
    }
    assert need <= set(t.columns)
    assert (t.h1_single_power_law == (t.h1_literal_r2 >= 0.98)).all()


def test_population_values_are_the_stated_ones():
    assert population_values("strong")["pooled_spearman"] == pytest.approx(-0.9)
    assert population_values("borderline")["pooled_spearman"] == pytest.approx(-0.7)
    assert population_values("within_cell")["within_spearman"] == pytest.approx(spearman_from_pearson(-0.6))
    cc = population_values("cell_confounded")
    assert cc["within_spearman"] == 0 and cc["pooled_spearman"] < -0.6
    echo = population_values("level_echo")
    assert echo["difference"] < 0
    assert population_values("none")["pooled_spearman"] == 0
    assert pearson_from_spearman(spearman_from_pearson(0.3)) == pytest.approx(0.3)


@pytest.mark.parametrize("name", STUDY_SCENARIOS)
def test_population_values_match_a_large_simulation(name):
    sc = scenario(name, share_cell=0.6, share_seed=0.2)
    sim = simulate_population(sc, n_cells=1500, n_seeds=150, seed=1)
    pop = population_values(sc)
    assert sim["pooled_spearman"] == pytest.approx(pop["pooled_spearman"], abs=0.06)
    assert sim["within_spearman"] == pytest.approx(pop["within_spearman"], abs=0.03)
    assert sim["level_spearman"] == pytest.approx(pop["level_spearman"], abs=0.06)


def test_seeds_are_shared_across_cells():
    sc = scenario("none", share_cell=0.0, share_seed=1.0)
    t = make_study_table(sc, seed=0)
    # all variation is the seed effect: every cell has the same six values
    per_seed = t.groupby("seed").alpha_early.agg(np.ptp)
    assert np.allclose(per_seed, 0)


def test_bad_shares():
    with pytest.raises(ValueError):
        scenario("none", share_cell=0.9, share_seed=0.3)
    with pytest.raises(ValueError):
        scenario("nope")
