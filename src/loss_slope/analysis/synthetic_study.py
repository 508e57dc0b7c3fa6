"""Known-truth per-run study tables for testing the H1/H2 study statistics.

A table mimics the study: ``n_cells`` cells (variant x LR x weight decay, 36 by
default) x ``n_seeds`` seeds (6), one row per run, with the columns the study
statistics read (``variant, optimizer, lr, weight_decay, seed, run, alpha_early,
best_val_ce, early_end_loss, excluded_reason, diverged, h1_single_power_law,
h1_literal_r2``).

The model
---------
Three latent standardised variables ``z = (z_alpha, z_ce, z_level)`` are sums of
three independent Gaussian components::

    z[run (c, s)] = sqrt(share_cell) * u[c] + sqrt(share_seed) * v[s] + sqrt(share_run) * e[c, s]
    u[c]    ~ N(0, R_cell)    one draw per cell, fresh for every table ("random cells")
    v[s]    ~ N(0, R_seed)    one draw per seed, SHARED by every cell (same init and data order)
    e[c, s] ~ N(0, R_run)     one draw per run

``R_*`` are 3x3 correlation matrices over (alpha_early, best_val_ce,
early_end_loss) and ``share_cell + share_seed + share_run = 1``, so every ``z`` has
unit variance.  The observed columns are increasing affine maps of ``z``::

    alpha_early    = 0.6 + 0.15 * z_alpha
    best_val_ce    = 0.9 + 0.15 * z_ce
    early_end_loss = 1.2 + 0.20 * z_level

Affine maps change neither Pearson nor Spearman correlations.

Population values (what a confidence interval must cover)
---------------------------------------------------------
Every pair is jointly Gaussian, so for a Pearson correlation ``r`` the Spearman
correlation is ``(6 / pi) * arcsin(r / 2)``.  With equal shares for the three
variables:

* pooled (all runs of an infinite study, infinitely many cells and seeds):
  ``r = share_cell * R_cell + share_seed * R_seed + share_run * R_run``;
* within cell (deviations from the cell mean, i.e. seed + run components):
  ``r_w = (share_seed * R_seed + share_run * R_run) / (share_seed + share_run)``;
* cell means (infinitely many seeds per cell): ``r_b = R_cell``.

:func:`population_values` returns them; :func:`simulate_population` checks them by
a large simulation (many cells *and* many seeds: with 6 shared seeds a single table
never converges to the population value, which is why the seed effect has to be
part of the interval).

Scenarios (sign convention: negative = a larger alpha_early goes with a lower CE)
-------------------------------------------------------------------------------
``none``
    alpha_early and CE unrelated at every level (pooled rho = 0).
``cell_confounded``
    Cells drive both (``R_cell`` alpha-CE = -0.95), nothing within a cell
    (``R_seed = R_run`` alpha-CE = 0): pooled rho ~ -0.65, within-cell rho = 0.
``within_cell``
    A within-cell relation only: ``R_seed = R_run`` alpha-CE = -0.6, ``R_cell`` 0
    (within-cell Spearman = (6/pi) asin(-0.3) = -0.582).
``strong``
    The same relation at every level, pooled Spearman exactly -0.9.
``borderline``
    The same relation at every level, pooled Spearman exactly -0.7.
``level_echo``
    CE depends on the loss level only and alpha_early is a noisy echo of the
    level: corr(alpha, level) = -0.95, corr(CE, level) = 0.9 at every level and
    alpha is independent of CE given the level, so |rho(alpha, CE)| < |rho(level, CE)|.

In the non-echo scenarios the level correlates 0.5 with CE and
``0.5 * R[alpha, CE]`` with alpha (a valid correlation matrix for any alpha-CE value).

H1 decisions: each cell has a success probability drawn from a Beta distribution
with mean ``h1_share`` and intra-cell correlation ``h1_icc`` (shared by the cell's
runs); ``h1_single_power_law`` is a Bernoulli draw from it, and ``h1_literal_r2`` is
a number that is >= 0.98 exactly when the decision is True.  The population share is
``h1_share``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "STUDY_SCENARIOS",
    "StudyScenario",
    "scenario",
    "spearman_from_pearson",
    "pearson_from_spearman",
    "population_values",
    "make_study_table",
    "simulate_population",
]

#: Names of the known-truth scenarios.
STUDY_SCENARIOS = ("none", "cell_confounded", "within_cell", "strong", "borderline", "level_echo")

_VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")
_LRS = (0.05, 0.1, 0.2)
_WDS = (0.0001, 0.001, 0.01)


def spearman_from_pearson(r: float) -> float:
    """Spearman correlation of a bivariate Gaussian with Pearson correlation ``r``."""
    return 6.0 / math.pi * math.asin(r / 2.0)


def pearson_from_spearman(rho: float) -> float:
    """Inverse of :func:`spearman_from_pearson`."""
    return 2.0 * math.sin(math.pi * rho / 6.0)


def pair_correlation(r_ac: float) -> np.ndarray:
    """Correlation matrix over (alpha, CE, level) with alpha-CE = r_ac, level-CE 0.5."""
    return np.array([[1.0, r_ac, 0.5 * r_ac], [r_ac, 1.0, 0.5], [0.5 * r_ac, 0.5, 1.0]])


def _echo(a: float = 0.95, b: float = 0.9) -> np.ndarray:
    """alpha = -a * level + noise, CE = b * level + noise (unit variances)."""
    return np.array([[1.0, -a * b, -a], [-a * b, 1.0, b], [-a, b, 1.0]])


@dataclass(frozen=True, eq=False)
class StudyScenario:
    """A known-truth study model (see the module docstring).

    Attributes
    ----------
    name : str
    r_cell, r_seed, r_run : ndarray, shape (3, 3)
        Correlation matrices over (alpha_early, best_val_ce, early_end_loss).
    share_cell, share_seed, share_run : float
        Variance shares of the three components (sum 1).
    """

    name: str
    r_cell: np.ndarray
    r_seed: np.ndarray
    r_run: np.ndarray
    share_cell: float = 0.7
    share_seed: float = 0.1
    share_run: float = 0.2
    notes: str = field(default="")


def scenario(
    name: str, *, share_cell: float = 0.7, share_seed: float = 0.1, share_run: float | None = None
) -> StudyScenario:
    """One of :data:`STUDY_SCENARIOS` with the given variance shares.

    Parameters
    ----------
    name : str
    share_cell, share_seed : float
        Variance shares of the cell and the (shared) seed component.
    share_run : float, optional
        Defaults to ``1 - share_cell - share_seed``.
    """
    if share_run is None:
        share_run = 1.0 - share_cell - share_seed
    if min(share_cell, share_seed, share_run) < 0 or abs(share_cell + share_seed + share_run - 1) > 1e-9:
        raise ValueError("variance shares must be >= 0 and sum to 1")
    if name == "none":
        mats = (pair_correlation(0.0),) * 3
    elif name == "cell_confounded":
        mats = (pair_correlation(-0.95), pair_correlation(0.0), pair_correlation(0.0))
    elif name == "within_cell":
        mats = (pair_correlation(0.0), pair_correlation(-0.6), pair_correlation(-0.6))
    elif name == "strong":
        mats = (pair_correlation(-pearson_from_spearman(0.9)),) * 3
    elif name == "borderline":
        mats = (pair_correlation(-pearson_from_spearman(0.7)),) * 3
    elif name == "level_echo":
        mats = (_echo(),) * 3
    else:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(STUDY_SCENARIOS)}")
    return StudyScenario(
        name, *[m.copy() for m in mats], share_cell=share_cell, share_seed=share_seed, share_run=share_run
    )


def population_values(sc: StudyScenario | str) -> dict[str, float]:
    """Population correlations of a scenario (analytic, see the module docstring).

    Returns
    -------
    dict
        ``pooled_pearson``, ``pooled_spearman`` (alpha vs CE over all runs),
        ``within_pearson``, ``within_spearman`` (deviations from cell means),
        ``cell_spearman`` (cell means, infinitely many seeds), ``level_spearman``
        (level vs CE, pooled) and ``difference`` = |pooled_spearman| - |level_spearman|.
    """
    if isinstance(sc, str):
        sc = scenario(sc)
    pooled = sc.share_cell * sc.r_cell + sc.share_seed * sc.r_seed + sc.share_run * sc.r_run
    w_share = sc.share_seed + sc.share_run
    within = (sc.share_seed * sc.r_seed + sc.share_run * sc.r_run) / w_share if w_share > 0 else np.full((3, 3), np.nan)
    out = {
        "pooled_pearson": float(pooled[0, 1]),
        "pooled_spearman": spearman_from_pearson(float(pooled[0, 1])),
        "within_pearson": float(within[0, 1]),
        "within_spearman": spearman_from_pearson(float(within[0, 1])),
        "cell_spearman": spearman_from_pearson(float(sc.r_cell[0, 1])),
        "level_spearman": spearman_from_pearson(float(pooled[2, 1])),
    }
    out["difference"] = abs(out["pooled_spearman"]) - abs(out["level_spearman"])
    return out


def latent_draws(sc: StudyScenario, n_cells: int, n_seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Latent z, shape (n_cells, n_seeds, 3)."""

    def draw(r, size):
        return rng.standard_normal(size + (3,)) @ np.linalg.cholesky(r).T

    u = draw(sc.r_cell, (n_cells,))
    v = draw(sc.r_seed, (n_seeds,))
    e = draw(sc.r_run, (n_cells, n_seeds))
    return (
        math.sqrt(sc.share_cell) * u[:, None, :]
        + math.sqrt(sc.share_seed) * v[None, :, :]
        + math.sqrt(sc.share_run) * e
    )


def make_study_table(
    sc: StudyScenario | str,
    *,
    seed: int = 0,
    n_seeds: int = 6,
    variants=_VARIANTS,
    lrs=_LRS,
    weight_decays=_WDS,
    h1_share: float = 0.9,
    h1_icc: float = 0.1,
) -> pd.DataFrame:
    """One known-truth per-run table (``len(variants) * len(lrs) * len(weight_decays) * n_seeds`` rows).

    Parameters
    ----------
    sc : StudyScenario or str
        A scenario or one of :data:`STUDY_SCENARIOS` (default shares).
    seed : int
        Random seed of this table (fresh cell, seed and run effects).
    n_seeds : int
        Seeds per cell; seed ``s`` is the same seed in every cell.
    variants, lrs, weight_decays : sequence
        Grid labels; every combination is one cell.
    h1_share, h1_icc : float
        Mean and intra-cell correlation of the H1 success probability (``h1_icc = 0``
        gives independent runs).

    Returns
    -------
    DataFrame
        One row per run; ``excluded_reason`` is None and ``diverged`` False everywhere.
    """
    if isinstance(sc, str):
        sc = scenario(sc)
    rng = np.random.default_rng(seed)
    cells = [(v, lr, wd) for v in variants for lr in lrs for wd in weight_decays]
    z = latent_draws(sc, len(cells), n_seeds, rng)
    if h1_icc > 0:
        ab = 1.0 / h1_icc - 1.0
        p_cell = rng.beta(h1_share * ab, (1 - h1_share) * ab, size=len(cells))
    else:
        p_cell = np.full(len(cells), h1_share)
    h1 = rng.random((len(cells), n_seeds)) < p_cell[:, None]
    r2 = np.where(h1, 0.98 + 0.019 * rng.random(h1.shape), 0.90 + 0.079 * rng.random(h1.shape))
    c_idx = np.repeat(np.arange(len(cells)), n_seeds)
    s_idx = np.tile(np.arange(n_seeds), len(cells))
    v = np.array([c[0] for c in cells], dtype=object)[c_idx]
    lr = np.array([c[1] for c in cells], dtype=float)[c_idx]
    wd = np.array([c[2] for c in cells], dtype=float)[c_idx]
    return pd.DataFrame(
        {
            "variant": v,
            "optimizer": ["adamw" if "adamw" in str(x) else "sgd" for x in v],
            "lr": lr,
            "weight_decay": wd,
            "seed": s_idx,
            "run": [f"{a}-lr{b:g}-wd{c:g}-s{d}" for a, b, c, d in zip(v, lr, wd, s_idx)],
            "alpha_early": 0.6 + 0.15 * z[..., 0].ravel(),
            "best_val_ce": 0.9 + 0.15 * z[..., 1].ravel(),
            "early_end_loss": 1.2 + 0.2 * z[..., 2].ravel(),
            "excluded_reason": [None] * c_idx.size,
            "diverged": np.zeros(c_idx.size, dtype=bool),
            "h1_single_power_law": h1.ravel().astype(object),
            "h1_literal_r2": r2.ravel(),
        }
    )


def simulate_population(
    sc: StudyScenario | str, *, n_cells: int = 2000, n_seeds: int = 200, seed: int = 0
) -> dict[str, float]:
    """Monte-Carlo check of :func:`population_values` on one very large study.

    Parameters
    ----------
    sc : StudyScenario or str
    n_cells, n_seeds : int
        Size of the simulated study; both must be large for the pooled value.
    seed : int

    Returns
    -------
    dict
        ``pooled_spearman``, ``within_spearman``, ``level_spearman``.
    """
    if isinstance(sc, str):
        sc = scenario(sc)
    z = latent_draws(sc, n_cells, n_seeds, np.random.default_rng(seed))
    flat = z.reshape(-1, 3)
    dev = (z - z.mean(axis=1, keepdims=True)).reshape(-1, 3)
    return {
        "pooled_spearman": float(sps.spearmanr(flat[:, 0], flat[:, 1]).statistic),
        "within_spearman": float(sps.spearmanr(dev[:, 0], dev[:, 1]).statistic),
        "level_spearman": float(sps.spearmanr(flat[:, 2], flat[:, 1]).statistic),
    }
