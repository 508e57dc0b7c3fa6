"""The integration API: cadence, rows, and identical rows after a checkpoint/resume."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from _monitor_models import bn_net, loss_fn

from loss_slope.metrics.checkpoint import checkpoint_size_mb
from loss_slope.metrics.errors import MonitorError
from loss_slope.metrics.monitors import CURVATURE_KEYS, NOISE_KEYS, MonitorConfig, Monitors

STEPS_PER_EPOCH = 10
CONFIG = MonitorConfig(
    curvature_every_steps=25,
    lambda_iters=8,
    lambda_min_iters=2,
    hutch_matvecs=9,
    curvature_batches=2,
    noise_every_epochs=2,
    psd_window=32,
    psd_min_points=16,
    predictor_min_points=4,
    predictor_halflife_steps=50.0,
    seed=11,
)


def batch(step: int):
    g = torch.Generator().manual_seed(step)
    return torch.randn(16, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def train(model, opt, monitors, held_out, start: int, stop: int):
    """A bare loop calling the monitors the way the Lightning callback will; returns the cadence rows."""
    rows = {"curvature": [], "noise": []}
    for row in range(start, stop):
        x, y = batch(row)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        monitors.observe_gradients(model)  # on_before_optimizer_step
        opt.step()
        done = row + 1  # trainer.global_step in on_train_batch_end
        monitors.on_train_step(row, loss.detach())
        if monitors.curvature_due(done):
            rows["curvature"].append(monitors.measure_curvature(model, loss_fn, held_out, done, done / STEPS_PER_EPOCH))
        if monitors.noise_due(done, STEPS_PER_EPOCH):
            rows["noise"].append(monitors.measure_noise(done, done / STEPS_PER_EPOCH))
    return rows


def fresh():
    model, held_out = bn_net(5)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), Monitors(CONFIG), held_out


def without_timing(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_resumed_run_produces_identical_rows():
    model, opt, monitors, held_out = fresh()
    straight = train(model, opt, monitors, held_out, 0, 60)
    assert [r["step"] for r in straight["curvature"]] == [25, 50]
    assert [r["step"] for r in straight["noise"]] == [20, 40, 60]

    model, opt, monitors, held_out = fresh()
    first = train(model, opt, monitors, held_out, 0, 33)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "monitors": monitors.state_dict()}, buffer)
    del model, opt, monitors
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # the monitor state is plain tensors and numbers
    model, opt, monitors, held_out = fresh()
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    monitors.load_state_dict(state["monitors"])
    second = train(model, opt, monitors, held_out, 33, 60)
    for table in ("curvature", "noise"):
        assert without_timing(first[table] + second[table]) == without_timing(straight[table])


def test_rows_have_the_documented_keys_and_sane_values():
    model, opt, monitors, held_out = fresh()
    rows = train(model, opt, monitors, held_out, 0, 50)
    for r in rows["curvature"]:
        assert tuple(r) == CURVATURE_KEYS
        assert r["hutch_matvecs"] == 9 and 2 <= r["lambda_iters"] <= 8 and r["seconds"] > 0
        assert r["lambda_max"] > 0 and math.isfinite(r["hutch_trace"])
    for r in rows["noise"]:
        assert tuple(r) == NOISE_KEYS
        assert r["grad_var_steps"] == 20 and r["grad_var"] > 0
        assert r["psd_points"] == min(32, r["step"] - CONFIG.predictor_min_points)
        assert r["psd_tail"] > 0 and r["resid_power"] > 0


def test_noise_row_before_enough_residuals_is_nan_not_an_error():
    monitors = Monitors(CONFIG)
    for step in range(10):
        monitors.on_train_step(step, torch.tensor(2.0 - 0.1 * step))
    row = monitors.measure_noise(10, 1.0)
    assert math.isnan(row["psd_tail"]) and math.isnan(row["resid_power"]) and math.isnan(row["grad_var"])
    assert row["psd_points"] == 6 and row["grad_var_steps"] == 0


def test_cadence():
    m = Monitors(MonitorConfig())
    assert [s for s in range(0, 1501) if m.curvature_due(s)] == [500, 1000, 1500]
    assert [s for s in range(0, 2000) if m.noise_due(s, 391)] == [782, 1564]
    off = Monitors(MonitorConfig(curvature_every_steps=0, noise_every_epochs=0))
    assert not any(off.curvature_due(s) or off.noise_due(s, 391) for s in range(2000))
    off.on_train_step(0, torch.tensor(1.0))
    off.observe_gradients(torch.nn.Linear(2, 2))
    assert off.predictor.count == 0 and off.grad_moments.count == 0


def test_config_and_batch_count_are_checked():
    with pytest.raises(MonitorError, match="lambda_min_iters"):
        MonitorConfig(lambda_iters=3, lambda_min_iters=5)
    with pytest.raises(MonitorError, match="resid_band"):
        MonitorConfig(resid_band=(0.2, 0.1))
    model, _, monitors, held_out = fresh()
    with pytest.raises(MonitorError, match="curvature batches"):
        monitors.measure_curvature(model, loss_fn, held_out[:1], 25, 2.5)
    with pytest.raises(MonitorError, match="capacity"):
        other = Monitors(dataclasses.replace(CONFIG, psd_window=64))
        other.load_state_dict(monitors.state_dict())
    assert other.predictor.count == 0  # a refused state leaves nothing half-loaded


def test_checkpoint_size_mb(tmp_path):
    f = tmp_path / "last.ckpt"
    f.write_bytes(b"\0" * 2_500_000)
    assert checkpoint_size_mb(f) == pytest.approx(2.5)
    sharded = tmp_path / "sharded"
    (sharded / "sub").mkdir(parents=True)
    (sharded / "a").write_bytes(b"\0" * 1_000_000)
    (sharded / "sub" / "b").write_bytes(b"\0" * 500_000)
    assert checkpoint_size_mb(sharded) == pytest.approx(1.5)
    with pytest.raises(FileNotFoundError):
        checkpoint_size_mb(tmp_path / "missing.ckpt")
