"""MonitorConfig rejects settings with which a monitor event could never give a valid row."""

import math

import numpy as np
import pytest
import torch

from loss_slope.metrics.curvature import hutch_trace
from loss_slope.metrics.errors import MonitorError
from loss_slope.metrics.monitors import MonitorConfig
from loss_slope.metrics.noise import psd_tail, resid_power
from loss_slope.train.compose import compose_train_config
from loss_slope.train.monitor_callback import monitor_settings


def test_a_tail_band_without_a_frequency_bin_at_psd_min_points_is_rejected():
    with pytest.raises(MonitorError) as err:
        MonitorConfig(psd_tail_fraction=0.02, psd_min_points=64)
    text = str(err.value)
    assert "psd_tail_fraction = 0.02" in text and "no frequency bin at n = 64" in text
    assert "the smallest psd_min_points that works with psd_window = 512 is 99" in text
    # that smallest value works for every number of residuals a noise event can see, and 98 does not
    rng = np.random.default_rng(0)
    assert all(math.isfinite(psd_tail(rng.standard_normal(n), tail_fraction=0.02)) for n in range(99, 513))
    MonitorConfig(psd_tail_fraction=0.02, psd_min_points=99)
    with pytest.raises(MonitorError, match="n = 98"):
        MonitorConfig(psd_tail_fraction=0.02, psd_min_points=98)
    # the default and the study's settings (the trainer's monitor defaults) pass
    MonitorConfig()
    cfg = compose_train_config(["run_dir=x"])
    config, _ = monitor_settings(cfg.trainer.monitors, seed=0, batch_size=128, steps_per_epoch=391)
    assert config.noise_every_epochs and config.psd_min_points == 64 and config.psd_window == 512


def test_a_narrow_resid_band_is_checked_at_every_window_length():
    # (0.3, 0.305) holds bin 3/10 at n = 10 but none at n = 64: every n up to psd_window counts
    with pytest.raises(MonitorError, match=r"resid_band = \(0.3, 0.305\) holds no frequency bin at n = 64"):
        MonitorConfig(resid_band=(0.3, 0.305))
    with pytest.raises(MonitorError, match="no psd_min_points works with psd_window = 64"):
        MonitorConfig(resid_band=(0.3, 0.305), psd_window=64)
    with pytest.raises(MonitorError, match="the smallest psd_min_points that works with psd_window = 512 is 178"):
        MonitorConfig(resid_band=(0.3, 0.305))
    x = np.random.default_rng(1).standard_normal(512)
    assert all(math.isfinite(resid_power(x[:n], (0.3, 0.305))) for n in range(178, 513))
    # with the noise monitors off no noise event runs: nothing to reject
    MonitorConfig(resid_band=(0.3, 0.305), noise_every_epochs=0)


def test_hutch_matvecs_must_leave_two_residual_probes():
    # 3 products: one sketch, one H Q, one residual probe, whose standard error is NaN
    with pytest.raises(MonitorError, match=r"hutch_matvecs >= 4 .*2 residual probes"):
        MonitorConfig(hutch_matvecs=3)
    assert MonitorConfig(hutch_matvecs=4).hutch_matvecs == 4
    # the boundary is Hutch++'s: 3 products give a NaN standard error, 4 a finite one
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    batches = [(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,)))]
    loss = torch.nn.functional.cross_entropy
    se = {
        m: hutch_trace(model, loss, batches, matvecs=m, generator=torch.Generator().manual_seed(1)).std_error
        for m in (3, 4)
    }
    assert math.isnan(se[3]) and math.isfinite(se[4])
