"""Shared fixtures for the analysis tests: one BLAS thread, known-truth curves."""

from __future__ import annotations

import pytest

from loss_slope.analysis.synthetic import CurveSpec, make_curve


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    # timings and the 2-core CI box: keep BLAS single-threaded
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


#: noise levels the known-answer tests are parametrised over
NOISE_LEVELS = {
    "iid-low": dict(noise_sigma=0.02),
    "iid-high": dict(noise_sigma=0.12),
    "ar": dict(noise_sigma=0.05, ar_phi=0.97, ar_sigma=0.04),
}


def curve(seed: int = 0, **kw):
    """A synthetic curve (defaults: 4000 steps, alpha 0.7, no floor, no plateau)."""
    base = dict(n_steps=4000, alpha=0.7, noise_sigma=0.05)
    base.update(kw)
    return make_curve(CurveSpec(**base), seed=seed)


@pytest.fixture
def power_curve():
    return curve(seed=1, noise_sigma=0.05)
