"""Known-truth curves: deterministic, shaped as configured, with the chosen cell and within-cell relations."""

import math

import numpy as np
import pytest

from loss_slope.simulate import model
from loss_slope.simulate.backend import monitor_settings
from loss_slope.train.schedule import Schedule
from loss_slope.train.val_schedule import steps_per_epoch, validation_steps

SPE, EPOCHS = 100, 20
SCHEDULE = Schedule("cosine", 2 * SPE, SPE * EPOCHS, 0.0)
VAL = validation_steps(EPOCHS, SPE, 4)


def sim(**over):
    return model.settings(over)


def kw(seed=0, variant="S-core", lr=0.1, wd=1e-3):
    return dict(
        variant=variant, lr=lr, weight_decay=wd, seed=seed, steps_per_epoch=SPE, epochs=EPOCHS, schedule=SCHEDULE
    )


def curves(s, **k):
    return model.simulate(s, **kw(**k), val_steps=VAL, batch_size=128, n_train=SPE * 128)


def test_deterministic_in_seed_and_cell():
    s = sim()
    a, b = curves(s, seed=3), curves(s, seed=3)
    for key in ("loss", "acc", "val_loss", "grad_norm"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["loss"], curves(s, seed=4)["loss"])
    assert model.run_truth(s, **kw(seed=3), val_steps=VAL) == model.run_truth(s, **kw(seed=3), val_steps=VAL)
    # seeds of one cell share the cell part, not the within part
    p3, p4 = (model.run_params(s, **kw(seed=k))[0] for k in (3, 4))
    assert p3["cell_parts"] == p4["cell_parts"] and p3["within_parts"] != p4["within_parts"]


def test_plateau_knee_power_law_floor():
    s = sim(
        schedule_effect=0.0, second_break_share=0.0, diverge_share=0.0, knee_epochs=[2.0, 2.0], knee_jitter_decades=0.0
    )
    p, tau, _ = model.run_params(s, **kw())
    clean = model.clean_loss(p, tau)
    assert p["knee_step"] == pytest.approx(2 * SPE)
    assert clean[0] == pytest.approx(s["initial_loss"])
    assert clean[int(p["knee_step"] / 3)] > 0.97 * s["initial_loss"]  # the plateau
    assert np.all(np.diff(clean) <= 1e-12) and clean[-1] > p["floor"] > 0
    # far past the knee the local log-log slope of (loss - floor) is the exponent
    x, y = np.log(tau[1000:1900]), np.log(clean[1000:1900] - p["floor"])
    assert -np.polyfit(x, y, 1)[0] == pytest.approx(p["alpha"], rel=1e-3)
    t = model.run_truth(s, **kw(), val_steps=VAL)
    assert t["h1_single_power_law"] is True and t["knee_epoch"] == pytest.approx(2.0)


def test_floor_is_its_share_of_the_final_loss():
    s = sim(floor_share=[0.1, 0.1], diverge_share=0.0)
    p, tau, _ = model.run_params(s, **kw())
    clean = model.clean_loss(p, tau)
    assert p["floor"] / clean[-1] == pytest.approx(0.1)
    t = model.run_truth(s, **kw(), val_steps=VAL)
    assert t["alpha_full_true"] > 0 and t["configured_rho_cell"] == s["h2"]["rho_cell"]


def test_schedule_shapes_progress():
    _, tau, f = model.run_params(sim(schedule_effect=1.0), **kw())
    np.testing.assert_allclose(tau, np.cumsum([SCHEDULE.factor(i) for i in range(SPE * EPOCHS)]))
    _, tau0, _ = model.run_params(sim(schedule_effect=0.0), **kw())
    np.testing.assert_array_equal(tau0, np.arange(1.0, SPE * EPOCHS + 1))


def test_second_break_makes_h1_false():
    s = sim(second_break_share=1.0, diverge_share=0.0, second_break_epochs=[10.0, 15.0])
    t = model.run_truth(s, **kw(), val_steps=VAL)
    assert t["second_break"] and t["h1_single_power_law"] is False


def test_a_break_or_divergence_drawn_past_the_last_step_does_not_happen():
    """The run has 20 epochs: a second break or a divergence drawn at epoch 25 is neither in
    the curve nor in the truth (the truth said H1 false and diverged before)."""
    s = sim(second_break_share=1.0, second_break_epochs=[25.0, 30.0], diverge_share=1.0, diverge_epochs=[25.0, 40.0])
    t = model.run_truth(s, **kw(), val_steps=VAL)
    assert not t["second_break"] and t["h1_single_power_law"] is True
    assert not t["diverged"] and t["diverge_epoch"] is None and t["best_val_ce_true"] is not None
    never = sim(second_break_share=0.0, diverge_share=0.0)
    np.testing.assert_array_equal(curves(s)["loss"], curves(never)["loss"])


def test_the_truth_uses_the_configured_validation_gap():
    for gap in (0.5, 4.0):
        s = sim(diverge_share=0.0, val={"sigma": 0.0, "gap": gap})
        t = model.run_truth(s, **kw(), val_steps=VAL)
        assert curves(s)["val_loss"].min() == pytest.approx(t["best_val_ce_true"], rel=1e-12)


def test_grid_values_that_differ_past_six_digits_are_different_cells():
    a, b = model.cell_of("S-core", 0.0001234567, 1e-3), model.cell_of("S-core", 0.0001234568, 1e-3)
    assert a != b and model.cell_of("S-core", 0.05, 1e-4) == "S-core|lr0.05|wd0.0001"


def test_noise_grows_along_the_run():
    s = sim(noise={"sigma_start": 0.01, "sigma_end": 0.1, "ar_sigma": 0.0}, diverge_share=0.0)
    c = curves(s)
    r = np.log(c["loss"] / c["clean"])
    assert r[-300:].std() > 5 * r[:300].std()


def test_validation_reaches_the_best_ce():
    s = sim(diverge_share=0.0, val={"sigma": 0.0})
    t = model.run_truth(s, **kw(), val_steps=VAL)
    c = curves(s)
    assert c["val_loss"].min() == pytest.approx(t["best_val_ce_true"]) == pytest.approx(t["best_ce_target"], abs=1e-6)


def _cell_and_within(rho_cell, rho_within, n_cells=60, seeds=6):
    s = sim(h2={"rho_cell": rho_cell, "rho_within": rho_within})
    cell, within = [], []
    for c in range(n_cells):
        for seed in range(seeds):
            p = model.run_params(s, **kw(seed=seed, lr=0.01 * (c + 1)))[0]
            if seed == 0:
                cell.append((p["cell_parts"]["alpha"], p["cell_parts"]["best_ce"]))
            within.append((p["within_parts"]["alpha"], p["within_parts"]["best_ce"]))
    return np.corrcoef(np.array(cell).T)[0, 1], np.corrcoef(np.array(within).T)[0, 1]


def test_alpha_best_ce_relation_has_the_chosen_parts():
    rc, rw = _cell_and_within(-0.9, 0.0)
    assert rc < -0.75 and abs(rw) < 0.2
    rc, rw = _cell_and_within(0.0, -0.9)
    assert abs(rc) < 0.35 and rw < -0.8


def test_diverging_share_and_the_guard_sees_it():
    s = sim(diverge_share=1.0, diverge_epochs=[5.0, 5.0])
    c = curves(s)
    d = c["params"]["diverge_step"]
    assert d == 5 * SPE
    assert c["loss"][d + 300] > 10 * c["loss"][:10].mean()
    shares = [
        model.run_params(sim(diverge_share=0.2, diverge_epochs=[5.0, 15.0]), **kw(seed=k))[0]["diverged"]
        for k in range(200)
    ]
    assert 0.1 < np.mean(shares) < 0.3


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown key"):
        model.settings({"rho": 1})
    with pytest.raises(ValueError, match="unknown key"):
        model.settings({"h2": {"rho": 1}})
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.settings({"h2": {"rho_cell": 2}})


@pytest.mark.parametrize(
    "over, key",
    [
        ({"noise": {"sigma_start": 0.0}}, "noise.sigma_start"),  # the AR wander grows by sigma / sigma_start
        ({"noise": {"ar_phi": 1.5}}, "noise.ar_phi"),
        ({"knee_epochs": [0.0, 3.0]}, "knee_epochs"),  # log-uniform
        ({"val": {"gap": -0.5}}, "val.gap"),  # a negative validation CE
        ({"floor_share": [0.2, 1.0]}, "floor_share"),
        ({"diverge_epochs": [40.0, 10.0]}, "diverge_epochs"),
        ({"initial_loss": 0}, "initial_loss"),
    ],
)
def test_settings_reject_values_that_would_break_the_curves(over, key):
    with pytest.raises(ValueError, match=f"data.simulation.{key}: .* must be"):
        model.settings(over)


def test_study_shape_and_monitor_settings():
    assert steps_per_epoch(50000, 128, drop_last=False) == 391 and steps_per_epoch(50000, 128, drop_last=True) == 390
    v = validation_steps(50, 391, 4)
    assert len(v) == 200 and v[:4].tolist() == [97, 194, 291, 388] and v[-1] == 49 * 391 + 388
    m = monitor_settings(
        {"enabled": True, "curvature_every_steps": 500, "noise_every_epochs": 2}, seed=0, batch_size=128, spe=391
    )
    assert m["noise_every_steps"] == 782 and m["checkpoint_size"] and not math.isnan(m["psd_window"])
