"""fit_run: synthetic per-run tables with known answers -> fit JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loss_slope.analysis import AnalysisError, cumulative_lr
from loss_slope.pipeline import fit_run as fit_run_module
from loss_slope.pipeline.fit_run import fit_run, fit_run_tables
from loss_slope.train.divergence import check_divergence

from .conftest import DIVERGENCE, FIT, VALID, identity, run_tables


def _fit(steps, val, info, *, validation=VALID, unit="nats", fit=FIT, divergence=DIVERGENCE, time_axis="step"):
    return fit_run_tables(
        steps,
        val,
        run_info=info,
        validation=validation,
        identity=identity(),
        fit=fit,
        divergence=divergence,
        loss_unit=unit,
        time_axis=time_axis,
    )


@pytest.fixture(scope="module")
def clean_run():
    steps, val, info = run_tables(alpha=0.8, noise=0.02)
    return steps, val, info, _fit(steps, val, info)


def test_power_law_run_is_ok_with_known_slopes(clean_run):
    steps, _, _, out = clean_run
    row = out["row"]
    assert row["status"] == "ok" and row["reason"] is None
    # log loss = log 2.3 - 0.8 ln(step + 1) + noise: every slope is 0.8
    assert row["alpha_early"] == pytest.approx(0.8, abs=0.01)
    assert row["alpha_early_ci_low"] < 0.8 < row["alpha_early_ci_high"]
    assert row["alpha_full"] == pytest.approx(0.8, abs=0.01)
    assert row["power_r2"] > 0.98 and row["post_knee_r2"] > 0.98
    assert row["best_aic"] in ("power", "two_power")
    assert row["exponential_delta_aic"] > 10
    # the window of alpha_early is epochs [5, 15): steps 240..719 at 48 steps/epoch
    assert row["alpha_early_start_step"] == 240 and row["alpha_early_end_step"] == 719
    # final train loss = mean over the last epoch
    assert row["final_train_loss"] == pytest.approx(steps.loss_train_nats.iloc[-48:].mean())
    for method in FIT["knee_methods"]:
        assert f"knee_{method}_found" in row
    assert row["knee_method"] == "broken_power_lrt"


def test_h1_decision_level_and_the_other_time_axis(clean_run):
    steps, _, _, out = clean_run
    row = out["row"]
    assert row["h1_single_power_law"] is True and row["post_knee_fit_ok"] is True
    assert row["h1_literal_r2"] > 0.98 and row["time_axis"] == "step"
    # the loss level alpha_early is measured on: mean over the last epoch of its window (epoch 14)
    assert row["early_end_loss"] == pytest.approx(steps.loss_train_nats.iloc[14 * 48 : 15 * 48].mean())
    # a constant LR makes the cumulative-LR axis the step axis shifted by one step
    assert row["cumulative_lr__h1_single_power_law"] is True
    assert row["cumulative_lr__alpha_early"] == pytest.approx(row["alpha_early"], abs=0.02)


def test_cumulative_lr_axis_under_a_cosine_schedule():
    spe, epochs = 48, 20
    n = spe * epochs
    st = np.arange(n, dtype=float)
    lr = 0.1 * np.where(st < spe, (st + 1) / spe, 0.5 * (1 + np.cos(np.pi * (st - spe) / (n - spe)))) + 1e-6
    t = np.concatenate(([0.0], np.cumsum(lr[:-1]))) / lr.max()
    loss = 2.3 * (t + 20.0) ** -0.8 / 20.0**-0.8 * np.exp(0.02 * np.random.default_rng(0).standard_normal(n))
    steps, val, info = run_tables(loss=loss)
    steps["lr"] = lr
    out = _fit(steps, val, info, time_axis="cumulative_lr")
    row = out["row"]
    assert row["time_axis"] == "cumulative_lr" and out["settings"]["time_axis"] == "cumulative_lr"
    assert row["h1_single_power_law"] is True, row["h1_reason"]
    assert row["post_knee_exponent"] == pytest.approx(0.8, abs=0.1)
    assert "step__h1_single_power_law" in row and "step__alpha_early" in row


def test_on_the_cumulative_lr_axis_windows_models_and_scan_are_where_the_fits_were():
    """An exact power law in cumulative LR under warm-up + cosine: the α windows are reported
    in steps, the figures' model curves follow the loss at their steps, and the window scan's
    nominal cell is α_early (all three used the time values as steps before)."""
    spe, epochs = 48, 20
    n = spe * epochs
    st = np.arange(n, dtype=float)
    lr = 0.1 * np.where(st < spe, (st + 1) / spe, 0.5 * (1 + np.cos(np.pi * (st - spe) / (n - spe)))) + 1e-6
    t = np.concatenate(([0.0], np.cumsum(lr[:-1]))) / lr.max()
    loss = 2.3 * (t + 20.0) ** -0.8 / 20.0**-0.8
    steps, val, info = run_tables(loss=loss)
    steps["lr"] = lr
    out = _fit(steps, val, info, time_axis="cumulative_lr")
    row = out["row"]
    assert row["status"] == "ok"
    assert (row["alpha_early_start_step"], row["alpha_early_end_step"]) == (240, 719)
    assert (row["alpha_full_start_step"], row["alpha_full_end_step"]) == (48, n - 1)  # no knee: from epoch 1
    m = out["models"]
    at = np.asarray(m["step"]).astype(int)
    np.testing.assert_allclose(m["power"], loss[at], rtol=1e-6)
    np.testing.assert_allclose(m["power_post_knee"], loss[np.asarray(m["power_post_knee_step"]).astype(int)], rtol=1e-6)
    ws = out["window_scan"]
    i, j = list(ws["starts"]).index(5.0), list(ws["ends"]).index(15.0)
    assert np.asarray(ws["alpha"], dtype=float)[i, j] == pytest.approx(row["alpha_early"], rel=1e-9)


def test_best_validation_ce_and_its_epoch(clean_run):
    row = clean_run[3]["row"]
    assert row["best_val_ce"] == pytest.approx(0.3)
    assert row["best_val_epoch"] == pytest.approx(12.5)
    assert row["best_val_step"] == 600


def test_arrays_for_the_figures(clean_run):
    out = clean_run[3]
    b = out["curve"]["binned"]
    assert len(b["step"]) == len(b["loss"]) and 20 < len(b["step"]) < 300
    assert len(out["curve"]["step"]) <= 500
    assert {"step", "exponential", "power", "two_power"} <= set(out["models"])
    ws = out["window_scan"]
    assert np.asarray(ws["alpha"], dtype=float).shape == (11, 11)
    assert ws["starts"][0] == 0 and ws["ends"][-1] == 20
    # the nominal window (start 5, stop 15) reproduces alpha_early
    assert np.asarray(ws["alpha"], dtype=float)[5, 5] == pytest.approx(out["row"]["alpha_early"], rel=1e-9)


def test_bits_give_the_same_slopes_and_bits_ce(clean_run):
    steps, val, info, nats = clean_run
    bits = _fit(steps, val, info, unit="bits")["row"]
    for key in ("alpha_early", "alpha_full", "power_r2", "power_exponent"):
        assert bits[key] == pytest.approx(nats["row"][key], rel=1e-6, abs=1e-9), key
    assert bits["best_val_ce"] == pytest.approx(nats["row"]["best_val_ce"] / math.log(2))


def test_fit_file_is_strict_json(tmp_path):
    steps, val, info = run_tables(epochs=16, noise=0.05)
    paths = {}
    for name, df in (("steps", steps), ("val", val)):
        paths[name] = tmp_path / f"{name}.parquet"
        df.to_parquet(paths[name])
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    (tmp_path / "validation.json").write_text(json.dumps(VALID))
    out = tmp_path / "fits" / "run.json"
    fit_run(
        steps_parquet=paths["steps"],
        val_parquet=paths["val"],
        run_info=tmp_path / "run_info.json",
        validation=tmp_path / "validation.json",
        output=out,
        identity=identity(),
        settings={"loss_unit": "nats", "fit": FIT, "divergence": DIVERGENCE},
    )

    def no_nan(x):
        raise AssertionError(f"non-strict JSON constant {x}")

    data = json.loads(out.read_text(), parse_constant=no_nan)
    assert data["row"]["status"] == "ok"
    assert data["row"]["variant"] == "S-core" and data["row"]["lr"] == 0.1
    assert out.stat().st_size < 200_000


def test_invalid_run_keeps_the_validation_reasons(clean_run):
    steps, val, info, _ = clean_run
    bad = {"passed": False, "status": "invalid", "reasons": ["steps_exactly_once: 990 rows for 1000 steps"]}
    row = _fit(steps, val, info, validation=bad)["row"]
    assert row["status"] == "invalid"
    assert "steps_exactly_once" in row["reason"]
    assert row.get("alpha_early") is None


def test_unreadable_table_is_invalid_with_the_reason():
    _, val, info = run_tables(epochs=16)
    row = fit_run_tables(
        None,
        val,
        run_info=info,
        validation=VALID,
        identity=identity(),
        fit=FIT,
        divergence=DIVERGENCE,
        read_error="cannot read part-0.parquet: ArrowInvalid",
    )["row"]
    assert row["status"] == "invalid" and "ArrowInvalid" in row["reason"]


def test_nan_loss_is_diverged_at_its_step(clean_run):
    steps, val, info, _ = clean_run
    s = steps.copy()
    s.loc[s.step >= 312, "loss_train_nats"] = np.nan
    row = _fit(s, val, info, validation={"passed": False, "reasons": ["steps_finite: 688 row(s)"]})["row"]
    assert row["status"] == "diverged"
    assert row["diverged_step"] == 312
    assert "312" in row["reason"] and "steps_finite" in row["reason"]


def test_exploding_loss_is_diverged_at_the_first_step_above_the_factor(clean_run):
    steps, val, info, _ = clean_run
    s = steps.copy()
    s.loc[s.step >= 400, "loss_train_nats"] = 2.3 * 50
    row = _fit(s, val, info)["row"]
    assert row["status"] == "diverged" and row["diverged_step"] == 400
    # a larger configured factor accepts the same run's spike... but not its final loss
    row = _fit(s, val, info, divergence={**DIVERGENCE, "explode_factor": 1000.0})["row"]
    assert row["status"] == "diverged" and "did not learn" in row["reason"]


def test_training_outcome_diverged_is_reported_with_its_step(clean_run):
    steps, val, info, _ = clean_run
    info = {**info, "outcome": {"status": "diverged", "diverged_at_step": 77, "reason": "non-finite loss at step 77"}}
    stopped = {"passed": True, "status": "diverged", "reasons": ["diverged: non-finite loss at step 77"]}
    row = _fit(steps.iloc[:78], val.iloc[:4], info, validation=stopped)["row"]
    assert row["status"] == "diverged" and row["diverged_step"] == 77
    assert row["diverged_epoch"] == pytest.approx(77 / 48)


@pytest.mark.parametrize(
    "validation",
    [
        {"passed": False, "reasons": ["steps_exactly_once: 1000 rows for 1201 steps; missing 201"]},
        {  # validation.json as written: the failed checks by name
            "passed": False,
            "checks": [
                {"name": "steps_finite", "passed": False, "detail": "3 row(s), first at step 900"},
                {"name": "config_matches", "passed": False, "detail": "lr: trained 0.3, config 0.1"},
            ],
            "reasons": ["steps_finite: 3 row(s), first at step 900", "config_matches: lr: trained 0.3, config 0.1"],
        },
        {"passed": False, "reasons": []},
    ],
    ids=["incomplete", "mistrained", "no-reason"],
)
def test_a_diverged_run_whose_validation_fails_beyond_its_divergence_is_invalid(clean_run, validation):
    """Incomplete or mistrained tables give no α_early: the run is invalid, its divergence named."""
    steps, val, info, _ = clean_run
    s = steps.copy()
    s.loc[s.step >= 900, "loss_train_nats"] = np.nan  # after the α_early window (epochs 5-15 of 48 steps)
    row = _fit(s, val, info, validation=validation)["row"]
    assert row["status"] == "invalid" and row.get("alpha_early") is None
    assert "also diverged" in row["reason"] and row["diverged_step"] == 900
    # the same divergence with only its value ranges failing is a diverged run with α_early
    ranges = {"passed": False, "reasons": ["steps_finite: 100 row(s), first at step 900", "val_finite: 2 row(s)"]}
    row = _fit(s, val, info, validation=ranges)["row"]
    assert row["status"] == "diverged" and row["alpha_early"] is not None


def test_a_run_training_stopped_whose_values_fail_before_the_stop_is_invalid(clean_run):
    """Its validation checks the ranges before the stop only: a failure there is not the divergence's."""
    steps, val, info, _ = clean_run
    info = {**info, "outcome": {"status": "diverged", "diverged_at_step": 900, "reason": "non-finite loss"}}
    failing = {"passed": False, "reasons": ["acc_in_unit_interval: 1 row(s), first at step 300"]}
    row = _fit(steps[steps.step <= 900], val, info, validation=failing)["row"]
    assert row["status"] == "invalid" and "acc_in_unit_interval" in row["reason"] and "also diverged" in row["reason"]


def test_cumulative_lr_time_counts_the_lr_of_dropped_zero_loss_steps(clean_run):
    """A step whose loss is exactly 0 is left out of the fit, not out of Σ lr: later times stay put."""
    steps, val, info, _ = clean_run
    fitted = {}

    def spy(st, y, **kw):
        fitted.setdefault("time", dict(zip(st.tolist(), kw["time"].tolist())))
        raise AnalysisError("stop here")

    s = steps.copy()
    s.loc[s.step.isin([100, 101, 102]), "loss_train_nats"] = 0.0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_run_module, "analyze_curve", spy)
        row = _fit(s, val, info, time_axis="cumulative_lr")["row"]
    assert row["n_nonpositive_dropped"] == 3 and 101 not in fitted["time"]
    want = cumulative_lr(steps["lr"].to_numpy())
    assert fitted["time"][500] == pytest.approx(want[500], rel=1e-12)
    assert fitted["time"][103] == pytest.approx(want[103], rel=1e-12)


def test_run_shorter_than_the_early_window_is_too_short():
    steps, val, info = run_tables(epochs=10)
    row = _fit(steps, val, info)["row"]
    assert row["status"] == "too_short"
    assert "10 epochs" in row["reason"] and "5-15" in row["reason"]
    assert row.get("alpha_early") is None
    assert row["power_r2"] is not None  # what could be computed is kept


def test_zero_losses_are_dropped_and_counted(clean_run):
    steps, val, info, _ = clean_run
    s = steps.copy()
    s.loc[[900, 950], "loss_train_nats"] = 0.0
    row = _fit(s, val, info)["row"]
    assert row["status"] == "ok" and row["n_nonpositive_dropped"] == 2


@pytest.mark.parametrize(
    "loss,expect",
    [
        ([2.3, 2.2, 2.0, 1.5, 1.0], (False, None)),
        ([2.3, 2.2, float("inf"), 1.5, 1.0], (True, 2.0)),
        ([2.3, 2.2, 30.0, 1.5, 1.0], (True, 2.0)),
        ([2.3, 2.2, 2.4, 2.5, 2.6], (True, 4.0)),
    ],
)
def test_check_divergence(loss, expect):
    d = check_divergence(np.arange(len(loss)), loss, explode_factor=10, final_factor=1.0, edge_fraction=0.2)
    assert (d.diverged, d.step) == expect
    assert (d.reason is None) == (not expect[0])


def test_validation_status_diverged_is_diverged(clean_run):
    steps, val, info, _ = clean_run
    v = {"passed": True, "status": "diverged", "reasons": ["diverged: loss 40 at step 500 exceeds 10 x its start"]}
    row = _fit(steps, val, info, validation=v)["row"]
    assert row["status"] == "diverged" and "step 500" in row["reason"]


@pytest.mark.parametrize("epochs,status", [(20, "invalid"), (10, "too_short")])
def test_numerical_failure_inside_the_fits_is_recorded_not_raised(monkeypatch, epochs, status):
    import loss_slope.pipeline.fit_run as fr

    def boom(*args, **kwargs):
        raise OverflowError("math range error")

    monkeypatch.setattr(fr, "analyze_curve", boom)
    steps, val, info = run_tables(epochs=epochs)
    row = _fit(steps, val, info)["row"]
    assert row["status"] == status
    assert "OverflowError" in row["reason"] and row["error_analysis"] == "OverflowError: math range error"


@pytest.mark.parametrize(
    "kind,at",
    # epoch 16, and the first step after the window [5, 15) (steps 240..719 at 48 steps/epoch)
    [("nan", 16 * 48), ("explode", 16 * 48), ("training stopped", 16 * 48), ("explode", 15 * 48)],
)
def test_run_diverged_after_the_early_window_has_alpha_early_from_the_steps_before(clean_run, kind, at):
    steps, val, info, clean = clean_run
    s = steps.copy()
    validation = VALID
    if kind == "nan":
        s.loc[s.step >= at, "loss_train_nats"] = np.nan
        validation = {"passed": False, "reasons": ["steps_finite: 192 row(s)"]}
    elif kind == "explode":
        s.loc[s.step >= at, "loss_train_nats"] = 2.3 * 50
    else:
        s = s[s.step <= at]
        info = {**info, "outcome": {"status": "diverged", "diverged_at_step": at, "reason": "non-finite loss"}}
    row = _fit(s, val, info, validation=validation)["row"]
    assert row["status"] == "diverged" and row["diverged_step"] == at
    # log loss = log 2.3 - 0.8 ln(step + 1) + noise; the window's steps are the clean run's
    assert row["alpha_early"] == pytest.approx(0.8, abs=0.01)
    assert row["alpha_early"] == pytest.approx(clean["row"]["alpha_early"], rel=1e-12)
    assert row["alpha_early_ci_low"] < 0.8 < row["alpha_early_ci_high"]
    assert (row["alpha_early_start_step"], row["alpha_early_end_step"]) == (240, 719)
    assert row["early_end_loss"] == pytest.approx(steps.loss_train_nats.iloc[14 * 48 : 15 * 48].mean())
    json.dumps(row, allow_nan=False)


@pytest.mark.parametrize("at", [10 * 48, 15 * 48 - 1])
def test_run_diverged_in_the_early_window_has_no_alpha_early(clean_run, at):
    steps, val, info, _ = clean_run
    s = steps.copy()
    s.loc[s.step >= at, "loss_train_nats"] = 2.3 * 50  # finite: the loss of epoch 14 exists but has exploded
    row = _fit(s, val, info)["row"]
    assert row["status"] == "diverged" and row["diverged_step"] == at
    assert row.get("alpha_early") is None and row["early_end_loss"] is None


def test_diverged_run_alpha_early_on_the_cumulative_lr_axis_is_the_undiverged_one():
    # the LR peaks at the last step, after the divergence: the axis is built from every logged step
    steps, val, info = run_tables(alpha=0.8, noise=0.02)
    steps["lr"] = 0.1 * (steps.step + 1) / len(steps)

    def fit(s):
        return _fit(s, val, info, time_axis="cumulative_lr")["row"]

    clean = fit(steps)
    s = steps.copy()
    s.loc[s.step >= 16 * 48, "loss_train_nats"] = np.nan
    row = fit(s)
    assert clean["status"] == "ok" and row["status"] == "diverged"
    assert row["time_axis"] == "cumulative_lr"
    assert row["alpha_early"] == pytest.approx(clean["alpha_early"], rel=1e-12)
