"""The known-truth generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loss_slope.analysis.synthetic import CurveSpec, make_curve, sample_spec, true_loss


def test_reproducible_and_starts_at_initial_loss():
    spec = CurveSpec(n_steps=1000, alpha=0.5, shift=50.0, floor=0.1, noise_sigma=0.1)
    a, b = make_curve(spec, seed=3), make_curve(spec, seed=3)
    assert np.array_equal(a.loss, b.loss)
    assert a.clean[0] == pytest.approx(spec.initial_loss)
    assert a.steps[0] == 0 and a.steps[-1] == 999


def test_knee_changes_local_slope():
    spec = CurveSpec(n_steps=10000, alpha=0.3, knee_step=1000.0, alpha_after=1.0, shift=10.0)
    s = np.array([200.0, 400.0, 3000.0, 6000.0])
    y = np.log(true_loss(s, spec))
    x = np.log(s + spec.shift)
    assert -(y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(0.3)
    assert -(y[3] - y[2]) / (x[3] - x[2]) == pytest.approx(1.0)


def test_ar_noise_statistics():
    spec = CurveSpec(n_steps=50000, noise_sigma=0.0, ar_phi=0.9, ar_sigma=0.1)
    c = make_curve(spec, seed=1)
    e = np.log(c.loss / c.clean)
    assert e.std() == pytest.approx(0.1, rel=0.1)
    assert np.corrcoef(e[1:], e[:-1])[0, 1] == pytest.approx(0.9, abs=0.02)
    assert spec.noise_class == "ar"


def test_spec_validation():
    with pytest.raises(ValueError):
        CurveSpec(shift=0.0)
    with pytest.raises(ValueError):
        CurveSpec(knee_step=100.0)
    with pytest.raises(ValueError):
        CurveSpec(ar_phi=1.0)


@pytest.mark.parametrize("knee", [False, True])
@pytest.mark.parametrize("noise", ["iid", "ar"])
def test_sample_spec_ranges(knee, noise):
    rng = np.random.default_rng(0)
    for _ in range(20):
        spec = sample_spec(rng, knee=knee, floor=True, noise=noise)
        assert 2000 <= spec.n_steps <= 20000
        assert spec.has_knee == knee and spec.noise_class == noise
        assert spec.floor > 0
        if knee:
            assert spec.knee_step >= 3 * spec.shift and abs(spec.alpha_after - spec.alpha) >= 0.2 - 1e-12
            assert spec.knee_step <= spec.n_steps / 5
    assert math.isfinite(spec.alpha)
