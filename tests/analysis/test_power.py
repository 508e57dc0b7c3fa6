"""Power analysis of the study design (per-run tables, no refits)."""

from __future__ import annotations

from pathlib import Path

from loss_slope.analysis.power import PowerSettings, main, settings_from_config, simulate_power

STUDY = str(Path(__file__).resolve().parents[2] / "config" / "study.yaml")


def test_independent_alpha_and_ce_are_supported_at_most_5_percent():
    s = PowerSettings(n_boot=200)
    (p,) = simulate_power([0.0], [6], s, n_studies=100, seed=3)
    assert p.n_studies == 100
    assert p.supported <= 0.05
    assert p.within_detected <= 0.10  # two-sided 95 % interval, one side counted: ~2.5 %


def test_a_strong_effect_has_power():
    (p,) = simulate_power([0.95], [6], PowerSettings(n_boot=200), n_studies=30, seed=1)
    assert p.supported >= 0.9 and p.within_detected == 1.0


def test_the_planned_h1_interval_is_clustered_as_the_report_clusters_it(monkeypatch):
    # the report's H1 interval clusters on cells and shared seeds (seed_column="seed")
    from loss_slope.analysis import power

    calls = []
    real = power.cluster_share

    def spy(values, cell, seed, **kw):
        calls.append(seed)
        return real(values, cell, seed, **kw)

    monkeypatch.setattr(power, "cluster_share", spy)
    simulate_power([0.5], [3], PowerSettings(n_boot=20), n_studies=2, seed=0, jobs=1)
    assert len(calls) == 2
    assert all(c is not None and sorted(set(c)) == [0, 1, 2] for c in calls)


def test_settings_from_the_study_config():
    s = settings_from_config(STUDY)
    assert (s.n_cells, s.n_seeds, s.min_abs_rho, s.max_p) == (36, 6, 0.7, 0.01)
    assert settings_from_config(None, n_seeds=3).n_seeds == 3


def test_command_prints_a_table_and_draws_a_png(tmp_path, capsys):
    png = tmp_path / "power.png"
    rc = main(
        [
            "--config",
            STUDY,
            "--studies",
            "4",
            "--rhos",
            "0",
            "0.9",
            "--seeds",
            "2",
            "6",
            "--n-boot",
            "50",
            "--jobs",
            "1",
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "P(H2 supported)" in out and "Smallest seeds per cell" in out
    assert png.stat().st_size > 1000


def test_a_variant_s_own_grid_is_the_design_the_power_is_planned_for(tmp_path):
    import yaml

    cfg = yaml.safe_load(open(STUDY))
    cfg["variants"]["S-adamw"]["grid"] = {"lr": [0.0005, 0.001]}  # 2 LRs instead of 3: 33 cells
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = settings_from_config(str(path))
    assert (s.n_cells, s.n_seeds) == (33, 6)
