"""Known-answer tests of the loss-residual spectrum, the power-law predictor and the gradient moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from loss_slope.metrics.errors import MonitorError, NotEnoughPoints
from loss_slope.metrics.noise import (
    GradientMoments,
    LossResidualBuffer,
    OnlinePowerLawPredictor,
    band_mean,
    periodogram,
    psd_tail,
    resid_power,
)


@pytest.mark.parametrize("n", [512, 301])
def test_periodogram_is_scipys_one_sided_hann_density(n):
    x = np.random.default_rng(n).normal(3.0, 0.7, n)
    f, p = scipy.signal.periodogram(x, fs=1.0, window="hann", detrend="constant", scaling="density")
    got = periodogram(torch.tensor(x))
    np.testing.assert_allclose(got.freqs, f)
    np.testing.assert_allclose(got.power, p, rtol=1e-10, atol=1e-14)


def test_white_noise_spectrum_is_flat_at_twice_the_variance():
    sigma, n, reps = 0.3, 512, 200
    rng = np.random.default_rng(0)
    series = rng.normal(0.0, sigma, (reps, n))
    mean_psd = np.mean([periodogram(s).power for s in series], axis=0)
    level = 2 * sigma**2  # one-sided density: ∫₀^½ P df = σ²
    for lo in np.arange(0.0, 0.5, 0.0625):  # eight bands, each within 6 % of the white level
        assert band_mean(series[0], (lo, lo + 0.0625)) > 0
        k = slice(max(2, int(lo * n)), int((lo + 0.0625) * n))  # bin 1 is dented by the mean removal
        assert mean_psd[k].mean() == pytest.approx(level, rel=0.06)
    tails = [psd_tail(s) for s in series]
    assert np.mean(tails) == pytest.approx(level, rel=0.03)
    assert np.median(np.abs(np.array(tails) / level - 1)) < 0.15  # one window is already a usable estimate
    powers = [resid_power(s, (1 / 64, 1 / 8)) for s in series]
    assert np.mean(powers) == pytest.approx(level * (1 / 8 - 1 / 64), rel=0.05)


def test_planted_sinusoid_lights_up_its_band():
    n, amp, sigma = 512, 0.4, 0.05
    t = np.arange(n)
    noise = np.random.default_rng(1).normal(0.0, sigma, n)
    mid = amp * np.sin(2 * np.pi * 0.05 * t + 0.3) + noise  # inside the default (1/64, 1/8) band
    high = amp * np.sin(2 * np.pi * 0.44 * t + 0.3) + noise  # inside the default tail [0.375, 0.5)
    white_band = 2 * sigma**2 * (1 / 8 - 1 / 64)
    assert resid_power(mid) == pytest.approx(amp**2 / 2 + white_band, rel=0.05)
    # the other statistic stays at the noise floor (one window: within a factor ~2 of it)
    assert 0.5 * 2 * sigma**2 < psd_tail(mid) < 2 * 2 * sigma**2
    assert 0.3 * white_band < resid_power(high) < 3 * white_band < 0.05 * amp**2 / 2
    assert psd_tail(high) > 20 * psd_tail(mid)
    tail_bins = int(0.25 * 0.5 * n)
    assert psd_tail(high) == pytest.approx(amp**2 / 2 / (tail_bins / n), rel=0.1)  # A²/2 spread over the tail


def test_spectral_domain_errors():
    with pytest.raises(NotEnoughPoints):
        psd_tail(np.zeros(8))
    with pytest.raises(MonitorError):
        resid_power(np.zeros(64), (0.3, 0.2))
    with pytest.raises(NotEnoughPoints):
        resid_power(np.zeros(64), (0.001, 0.002))  # no bin in the band
    with pytest.raises(MonitorError):
        psd_tail(np.zeros(64), tail_fraction=0.0)


def power_law_losses(n: int, exponent: float, noise: float, seed: int) -> np.ndarray:
    steps = np.arange(n)
    eps = np.random.default_rng(seed).normal(0.0, noise, n)
    return 3.0 * (steps + 1.0) ** -exponent * np.exp(eps), eps


@pytest.mark.parametrize("halflife", [None, 1500.0])
def test_online_predictor_recovers_power_law_exponent(halflife):
    losses, eps = power_law_losses(4000, 0.7, 0.1, seed=2)
    predictor = OnlinePowerLawPredictor(halflife_steps=halflife, min_points=10)
    residuals = []
    for step, loss in enumerate(torch.tensor(losses, dtype=torch.float32)):
        r = predictor.update(step, loss)
        assert (r is None) == (step < 10)
        if r is not None:
            residuals.append(float(r))
    fit = predictor.fit()
    assert fit.exponent == pytest.approx(0.7, abs=0.02)
    assert fit.intercept == pytest.approx(math.log(3.0), abs=0.1)
    late = np.array(residuals[1000:])
    assert late.std() == pytest.approx(0.1, rel=0.1)  # residuals are the planted log-noise
    assert abs(late.mean()) < 0.02
    assert np.corrcoef(late, eps[1010:])[0, 1] > 0.98


def test_predictor_ignores_non_finite_losses():
    skipped, poisoned = OnlinePowerLawPredictor(min_points=2), OnlinePowerLawPredictor(min_points=2)
    rng = np.random.default_rng(4)
    for step in range(20):
        loss = torch.tensor(2.0 / (step + 1) ** 0.5 * rng.lognormal(0.0, 0.1), dtype=torch.float64)
        bad = step in (12, 15)
        if not bad:
            skipped.update(step, loss)
        r = poisoned.update(step, torch.tensor(math.nan if step == 12 else -1.0) if bad else loss)
        assert r is None if step < 2 else math.isnan(float(r)) == bad
    assert poisoned.fit().exponent == pytest.approx(skipped.fit().exponent, rel=1e-12)
    assert poisoned.fit().intercept == pytest.approx(skipped.fit().intercept, rel=1e-12)


def test_residual_buffer_keeps_the_last_values_in_order_and_round_trips():
    buf = LossResidualBuffer(8)
    for v in range(5):
        buf.push(torch.tensor(float(v)))
    assert buf.values().tolist() == [0, 1, 2, 3, 4]
    for v in range(5, 19):
        buf.push(torch.tensor(float(v)))
    assert buf.values().tolist() == list(range(11, 19)) and len(buf) == 8
    copy = LossResidualBuffer(8)
    copy.load_state_dict(buf.state_dict())
    for b in (buf, copy):
        b.push(torch.tensor(99.0))
    assert torch.equal(buf.values(), copy.values())
    with pytest.raises(MonitorError):
        LossResidualBuffer(4).load_state_dict(buf.state_dict())


def test_gradient_variance_matches_numpy():
    rng = np.random.default_rng(3)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    steps = 37
    # a large common mean with small fluctuations: the case where E[g²] − E[g]² would cancel in float32
    grads = [[rng.normal(5.0, 0.01, s).astype(np.float32) for s in shapes] for _ in range(steps)]
    moments = GradientMoments()
    for g in grads:
        moments.observe([torch.from_numpy(t) for t in g])
    flat = np.stack([np.concatenate([t.ravel() for t in g]).astype(np.float64) for g in grads])
    expected = flat.var(axis=0, ddof=0).sum()  # trace of the across-step covariance, 1/n normalisation
    assert float(moments.grad_var()) == pytest.approx(expected, rel=1e-4)
    assert float(moments.mean_sq_norm()) == pytest.approx((flat.mean(axis=0) ** 2).sum(), rel=1e-6)
    moments.reset()
    with pytest.raises(NotEnoughPoints):
        moments.grad_var()
    for g in grads[:5]:
        moments.observe([torch.from_numpy(t) for t in g])
    assert float(moments.grad_var()) == pytest.approx(flat[:5].var(axis=0).sum(), rel=1e-4)


def test_low_precision_gradients_accumulate_in_float32():
    moments = GradientMoments()
    for v in (1.0, 2.0, 4.0):
        moments.observe([torch.full((3,), v, dtype=torch.bfloat16)])
    assert moments.grad_var().item() == pytest.approx(3 * np.var([1.0, 2.0, 4.0]), rel=1e-6)


def test_gradient_moments_from_a_model_and_state_round_trip():
    model = torch.nn.Linear(3, 2)
    moments, other = GradientMoments(), GradientMoments()
    seen = []
    for step in range(6):
        model.zero_grad()
        model(torch.full((1, 3), float(step))).sum().backward()
        moments.observe_model(model)
        seen.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy())
        if step == 2:
            other.load_state_dict(moments.state_dict())
        elif step > 2:
            other.observe_model(model)
    assert float(moments.grad_var()) == pytest.approx(np.var(seen, axis=0).sum(), rel=1e-6)
    assert torch.equal(moments.grad_var(), other.grad_var())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_per_step_path_never_synchronises_with_the_host():
    predictor, buf, moments = OnlinePowerLawPredictor(min_points=2), LossResidualBuffer(16), GradientMoments()
    model = torch.nn.Linear(8, 4).cuda()
    x = torch.randn(32, 8, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(40):
            model.zero_grad(set_to_none=False)
            loss = model(x).square().mean()
            loss.backward()
            r = predictor.update(step, loss.detach())
            if r is not None:
                buf.push(r)
            moments.observe_model(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(buf) == 16 and moments.count == 40


def test_gradient_moments_state_is_one_copy_of_the_parameters_and_resumes_exactly():
    rng = np.random.default_rng(5)
    grads = [
        [torch.from_numpy(rng.normal(0.3, 1.0, s).astype(np.float32)) for s in [(50, 20), (20,)]] for _ in range(9)
    ]
    straight, resumed = GradientMoments(), GradientMoments()
    for g in grads[:4]:
        straight.observe(g)
    state = straight.state_dict()
    n_params = 50 * 20 + 20
    saved = sum(t.numel() * t.element_size() for t in state["mean"]) + state["m2"].numel() * state["m2"].element_size()
    assert saved == 4 * n_params + 8  # float32 mean + one float64 scalar (was 2 × 4 × n_params)
    resumed.load_state_dict(state)
    for g in grads[4:]:
        straight.observe(g)
        resumed.observe(g)
    assert torch.equal(straight.grad_var(), resumed.grad_var())
    straight.reset()
    assert straight.state_dict()["mean"] is None  # at a report boundary nothing per-element is saved


def test_gradient_moments_load_the_per_element_state_of_version_1():
    rng = np.random.default_rng(6)
    grads = [[torch.from_numpy(rng.normal(0.0, 1.0, (7,)).astype(np.float32))] for _ in range(5)]
    moments = GradientMoments()
    for g in grads[:3]:
        moments.observe(g)
    flat = np.stack([g[0].double().numpy() for g in grads[:3]])
    old = {  # what version 1 saved: per-element mean and M2
        "count": 3,
        "mean": [torch.from_numpy(flat.mean(axis=0).astype(np.float32))],
        "m2": [torch.from_numpy((3 * flat.var(axis=0)).astype(np.float32))],
    }
    other = GradientMoments()
    other.load_state_dict(old)
    for g in grads[3:]:
        moments.observe(g)
        other.observe(g)
    assert float(other.grad_var()) == pytest.approx(float(moments.grad_var()), rel=1e-6)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
        ),
    ],
)
def test_gradient_moments_state_is_a_host_copy_that_resumes_on_the_device(device):
    gen = torch.Generator().manual_seed(7)
    grads = [
        [torch.randn(300, 200, generator=gen).to(device), torch.randn(200, generator=gen).to(device)] for _ in range(6)
    ]
    straight, resumed = GradientMoments(), GradientMoments()
    for g in grads[:3]:
        straight.observe(g)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    state = straight.state_dict()
    if device == "cuda":  # no parameter-sized copy on the device, not even for a moment
        assert torch.cuda.max_memory_allocated() - before < 300 * 200 * 4
    assert all(t.device.type == "cpu" for t in [*state["mean"], state["m2"]])
    saved = [t.clone() for t in state["mean"]]
    straight.observe(grads[3])  # the saved state does not follow the live accumulators
    assert all(torch.equal(a, b) for a, b in zip(saved, state["mean"]))
    resumed.load_state_dict(state)
    resumed.observe(grads[3])
    for g in grads[4:]:
        straight.observe(g)
        resumed.observe(g)
    assert resumed.grad_var().device.type == device
    assert torch.equal(straight.grad_var(), resumed.grad_var())
