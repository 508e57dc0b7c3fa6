"""Simulation-based calibration of the default knee detector.

The likelihood-ratio statistic of ``broken_power_lrt`` has no chi-square null
distribution: the knee location exists only under the alternative (Davies'
problem), the floor and shift sit on boundaries, and the noise model is estimated.
So its threshold :data:`loss_slope.analysis.search.LRT_THRESHOLD` was chosen from the
statistic's distribution on simulated *knee-free* curves covering every nuisance
the detector must survive: iid and AR(1) noise, with and without a floor, with and
without an initial plateau, 2k-20k points (:func:`loss_slope.analysis.synthetic.sample_spec`).

Re-run with::

    from loss_slope.analysis.calibration import null_statistics, threshold_for
    stats = null_statistics(n_per_class=200, seed=2024)
    threshold_for(stats, fpr=0.05)

The procedure and the numbers are documented in ``docs/analysis.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .knee import detect_knee
from .synthetic import NOISE_CLASSES, make_curve, sample_spec

__all__ = ["NullStatistics", "null_statistics", "threshold_for"]


@dataclass(frozen=True)
class NullStatistics:
    """LR statistics of the default detector on knee-free curves, per class.

    Attributes
    ----------
    by_class : Mapping[str, ndarray]
        Class label ``"{noise}/{floor|nofloor}/{plateau|noplateau}"`` -> statistics.
    n_steps : Mapping[str, ndarray]
        Curve lengths, aligned with ``by_class``.
    seed : int
    """

    by_class: Mapping[str, np.ndarray]
    n_steps: Mapping[str, np.ndarray]
    seed: int

    def quantile(self, q: float) -> dict[str, float]:
        """Per-class ``q`` quantile of the statistic."""
        return {k: float(np.quantile(v, q)) for k, v in self.by_class.items()}

    def rate_above(self, threshold: float) -> dict[str, float]:
        """Per-class false-positive rate at ``threshold``."""
        return {k: float(np.mean(v > threshold)) for k, v in self.by_class.items()}


def null_statistics(*, n_per_class: int = 200, seed: int = 2024) -> NullStatistics:
    """Simulate knee-free curves of every nuisance class and collect the statistic.

    Parameters
    ----------
    n_per_class : int
        Curves per class (8 classes: noise x floor x plateau).
    seed : int

    Returns
    -------
    NullStatistics
    """
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {}
    lengths: dict[str, list[int]] = {}
    for noise, floor, plateau in itertools.product(NOISE_CLASSES, (False, True), (False, True)):
        key = f"{noise}/{'floor' if floor else 'nofloor'}/{'plateau' if plateau else 'noplateau'}"
        for _ in range(n_per_class):
            spec = sample_spec(rng, knee=False, floor=floor, noise=noise, plateau=plateau)
            curve = make_curve(spec, seed=int(rng.integers(2**31)))
            res = detect_knee(curve.steps, curve.loss, threshold=np.inf)
            stats.setdefault(key, []).append(res.statistic)
            lengths.setdefault(key, []).append(spec.n_steps)
    return NullStatistics(
        by_class=MappingProxyType({k: np.asarray(v) for k, v in stats.items()}),
        n_steps=MappingProxyType({k: np.asarray(v) for k, v in lengths.items()}),
        seed=seed,
    )


def threshold_for(stats: NullStatistics, *, fpr: float = 0.05, margin: float = 0.5) -> float:
    """Smallest threshold keeping every class's false-positive rate at ``margin * fpr``.

    Parameters
    ----------
    stats : NullStatistics
    fpr : float
        Target false-positive rate per class.
    margin : float
        Safety factor (< 1) for curves unlike the simulated ones.

    Returns
    -------
    float
    """
    q = 1.0 - margin * fpr
    return max(float(np.quantile(v, q)) for v in stats.by_class.values())
