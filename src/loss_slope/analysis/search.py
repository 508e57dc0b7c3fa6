"""Search for breaks: the knee likelihood-ratio fit and its profile search.

The cost of a fit (whitened chi-square of a :class:`~loss_slope.analysis.models.ModelSpec`)
is the solver's (:mod:`loss_slope.analysis.solver`); this module searches where a
break goes.  The knee position is not identified under the null and the chi-square
surface over it has local minima, so the broken power law is fitted by profiling the
knee position on a grid (a warm-started sweep with the knee held), then freeing all
parameters from the best local minima (:func:`profile_starts`,
:func:`fit_two_power_core`).  :func:`fit_lrt` is the whole knee test's fit, shared
by the default knee detector (:mod:`loss_slope.analysis.knee`), the three-model
comparison, the per-run H1 decision (:mod:`loss_slope.analysis.shape`) and the
two-break test (:mod:`loss_slope.analysis.two_break`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import models as M, solver as S
from .exceptions import FitFailed
from .noise import NoiseModel, estimate_scale

__all__ = [
    "LrtFit",
    "fit_lrt",
    "fit_two_power_core",
    "profile_starts",
    "best_local_minima",
    "LRT_THRESHOLD",
    "REML_SLACK",
    "KNEE_GRID",
]

#: Threshold on the scaled LR statistic of ``broken_power_lrt`` (calibrated by
#: simulation on knee-free curves; see docs/analysis.md).
LRT_THRESHOLD = 11.0

#: REML log-likelihood slack for the AR coefficient used by the test (see
#: :func:`loss_slope.analysis.noise.reml_refine`).
REML_SLACK = 2.0

#: Knee positions profiled before the free fit.
KNEE_GRID = 13


def fit_two_power_core(
    problem: S.Problem,
    null: S.Core,
    wh: S.Whitener,
    *,
    floor: bool,
    shift,
    consts: dict,
    grid: int = KNEE_GRID,
    extra_starts: list[np.ndarray] | None = None,
    n_refine: int = 2,
    yb: np.ndarray | None = None,
) -> S.Core:
    """Best two-power fit: profile the knee position on a grid (warm-started
    sweep), then free fits from the best grid points and any extra starts.
    ``grid=0`` skips the profile and only refines ``extra_starts``."""
    lb, ub, free = M.two_power_bounds(problem, floor, shift, consts)
    starts = list(extra_starts or [])
    if grid > 0:
        starts = (
            profile_starts(problem, null, wh, lb, ub, free, consts=consts, grid=grid, n_best=n_refine, yb=yb) + starts
        )
    if not starts:
        raise FitFailed("no starting point for the two-power fit")
    best = None
    for th in starts:
        th = np.clip(th, lb, ub)
        core = S.nls(problem, M.TWO_POWER, th, free, lb, ub, wh, yb=yb, consts=consts)
        if best is None or core.chi2 < best.chi2:
            best = core
    best.consts = dict(consts)
    return best


def profile_starts(problem, null, wh, lb, ub, free, *, consts, grid=KNEE_GRID, n_best=2, yb=None) -> list[np.ndarray]:
    """Profile chi-square over the knee position; return the best local minima."""
    la, a, c, t0 = null.theta
    t0 = min(max(t0, lb[5]), ub[5])
    fixed_f = free.copy()
    fixed_f[3] = False
    prof = []
    th = np.array([la, a, a, 0.0, c if free[4] else 0.0, t0])
    for f in np.linspace(0.0, 1.0, grid):
        th = th.copy()
        th[3] = f
        core = S.nls(problem, M.TWO_POWER, th, fixed_f, lb, ub, wh, yb=yb, consts=consts, max_iter=15, ftol=1e-4)
        prof.append(core)
        th = core.theta
    return best_local_minima(prof, n_best)


def best_local_minima(profile: list[S.Core], n_best: int) -> list[np.ndarray]:
    """Parameters of the ``n_best`` lowest local minima (in chi-square) of a profile, best first."""
    chi = np.array([cr.chi2 for cr in profile])
    k = len(profile)
    loc = [i for i in range(k) if (i == 0 or chi[i] <= chi[i - 1]) and (i == k - 1 or chi[i] <= chi[i + 1])]
    loc.sort(key=lambda i: chi[i])
    return [profile[i].theta for i in loc[:n_best]]


@dataclass
class LrtFit:
    """The knee likelihood-ratio fit: a power law (null) and a broken power law
    (alternative) fitted by GLS on one problem under one noise model.

    Attributes
    ----------
    problem : Problem
        The binned curve as fitted (noise scale and Huber pseudo-observations
        included when used).
    null, alt : Core
        The power-law and broken-power-law fits.
    noise : NoiseModel
        White + AR(1) model from the alternative's residuals (REML-refined).
    stat : float
        Misfit-scaled LR statistic, ``(chi2_null - chi2_alt) / scale``.
    scale : float
        ``max(1, chi2_alt / (m - 6))``.
    robust : bool
        Whether the Huber pseudo-observations were used.
    scale_ratio : float
        Max/min of the fitted noise scale (1: constant noise).
    """

    problem: S.Problem
    null: S.Core
    alt: S.Core
    noise: NoiseModel
    stat: float
    scale: float
    robust: bool
    scale_ratio: float = 1.0  # max/min of the fitted noise scale (1: constant noise)

    @property
    def knee_step(self) -> float:
        """Optimizer step of the alternative's knee (whether or not significant)."""
        return M.knee_step_of(self.alt.theta, self.alt.consts)

    def knee_ci(self, z: float) -> tuple[float, float, float]:
        """``(low, high, se)`` of the knee step: GLS covariance, delta method on ln(tau_k)."""
        cov_f, _, _ = S.covariance(self.problem, self.alt, self.noise, "gls")
        p = self.alt.theta.size
        cov = np.zeros((p, p))
        cov[np.ix_(self.alt.free, self.alt.free)] = cov_f
        _, se, (lo, hi) = M.knee_step_estimate(self.alt.theta, cov, self.alt.consts, z)
        return float(lo), float(hi), float(se)


def fit_lrt(prob: S.Problem, *, knee_range=None, robust: str = "auto", hetero: bool = True) -> LrtFit:
    """Fit the knee test's null and alternative on ``prob`` (see docs/analysis.md, "Knee detection").

    The noise model comes from the residuals of the flexible (broken) fit; a smooth
    change of the noise scale is modelled when the residuals show one (``hetero``);
    heavy-tailed residuals switch to Huber pseudo-observations (``robust``).

    Parameters
    ----------
    prob : Problem
        The curve (``Problem(prepare_curve(steps, loss), bin_decades=...)``); its
        noise scale is set here.
    knee_range : (float, float), optional
        Search range of the knee in steps (default :func:`loss_slope.analysis.models.knee_consts`).
    robust : {"auto", "never", "always"}
    hetero : bool

    Returns
    -------
    LrtFit
    """
    consts = M.knee_consts(prob, knee_range)
    lb0, ub0, free0, t_fixed = M.power_bounds(prob, True, True)
    null_box = (lb0, ub0, free0)
    wh_ols = S.whitener(prob, "ols", None)
    null0 = _best_power(prob, M.power_starts(prob, True, True, t_fixed), null_box, wh_ols)
    # noise model from the residuals of the flexible (two-power) fit, so that a
    # real knee does not masquerade as low-frequency noise
    alt_box = M.two_power_bounds(prob, True, True, consts)
    starts = _knee_starts(prob, null0, wh_ols, null_box, alt_box, consts)
    alt0 = fit_two_power_core(
        prob, null0, wh_ols, floor=True, shift=True, consts=consts, grid=0, extra_starts=starts[:2]
    )
    raw = S.raw_residuals(prob, alt0)
    # heteroscedastic noise (a smooth scale along the curve), modelled only when
    # clearly present; then the OLS pilot fits are redone with the new weights
    row_scale, scale_ratio = estimate_scale(prob.s, raw) if hetero else (None, 1.0)
    if row_scale is not None:
        prob.set_scale(row_scale)
        wh_ols = S.whitener(prob, "ols", None)
        null0 = _best_power(prob, [null0.theta, *M.power_starts(prob, True, True, t_fixed)], null_box, wh_ols)
        starts = _knee_starts(prob, null0, wh_ols, null_box, alt_box, consts)
        alt0 = fit_two_power_core(
            prob, null0, wh_ols, floor=True, shift=True, consts=consts, grid=0, extra_starts=[alt0.theta] + starts
        )
        raw = S.raw_residuals(prob, alt0)
    sig = 1.0 if row_scale is None else row_scale
    std = raw / sig  # standardised residuals: white + AR(1) of constant scale
    inside = 1.0
    used_robust = False
    if robust == "always" or (robust == "auto" and S.excess_kurtosis(np.diff(std)) > S.heavy_tail_threshold(prob.n)):
        # one Huber pseudo-observation step around the flexible fit
        delta = 1.5 * S.robust_sigma(std)
        psi = np.clip(std, -delta, delta)
        prob = prob.rebinned(prob.y - raw + psi * sig)
        inside = max(float(np.mean(np.abs(std) <= delta)), 0.05)
        std = psi
        used_robust = True
    nz = S.noise_from_fit(prob, alt0, std, slack=REML_SLACK)
    # Huber sandwich: Var(estimate) ~ E[psi^2] / E[psi']^2, so the pseudo-data noise
    # is inflated by 1 / P(|r| <= delta)^2 for the test to stay calibrated
    noise = (
        NoiseModel(white_var=nz.white_var / inside**2, ar_var=nz.ar_var / inside**2, ar_phi=nz.ar_phi)
        if used_robust
        else nz
    )
    wh = S.whitener(prob, "gls", noise)
    null = S.nls(prob, M.POWER, null0.theta, free0, lb0, ub0, wh)
    alt = fit_two_power_core(
        prob, null, wh, floor=True, shift=True, consts=consts, grid=0, extra_starts=[alt0.theta] + starts[1:]
    )
    if alt.chi2 > null.chi2:  # the alternative nests the null; guard against a poor local optimum
        alt = fit_two_power_core(
            prob,
            null,
            wh,
            floor=True,
            shift=True,
            consts=consts,
            extra_starts=[alt.theta, M.TWO_POWER.starts(null.theta)],
            n_refine=3,
        )
    dof = max(prob.m - alt.k, 1)
    scale = max(1.0, alt.chi2 / dof)
    stat = max(null.chi2 - alt.chi2, 0.0) / scale
    return LrtFit(prob, null, alt, noise, stat, scale, used_robust, scale_ratio)


def _best_power(prob: S.Problem, starts, box, wh: S.Whitener) -> S.Core:
    """The power-law (null) fit with the lowest chi-square over ``starts``; the first wins ties."""
    lb, ub, free = box
    best = None
    for th in starts:
        c = S.nls(prob, M.POWER, th, free, lb, ub, wh)
        if best is None or c.chi2 < best.chi2:
            best = c
    return best


def _knee_starts(prob: S.Problem, null0: S.Core, wh: S.Whitener, null_box, alt_box, consts: dict) -> list[np.ndarray]:
    """Starts for the two-power fit: the knee profiled from the null fit, and from a short-shift null.

    The profile sweep is warm-started from the null fit's shift. When the curve has a flat plateau
    and then a steep fall, the best *null* is a degenerate one (shift and floor on their bounds,
    exponent ~5), and a sweep carrying that shift misses the knee at the plateau's end: from it the
    alternative fits no better than the null. A second sweep starts from the null refitted
    with the shift held at 1 step (no transient), which a plateau-then-fall knee is close to.
    Best local minima of the first sweep come first.
    """
    lb1, ub1, free1 = alt_box
    starts = profile_starts(prob, null0, wh, lb1, ub1, free1, consts=consts, n_best=3)
    lb0, ub0, free0 = null_box
    held = free0.copy()
    held[3] = False  # the shift
    try:
        short_starts = M.power_starts(prob, True, False, 1.0)
        for th in short_starts:
            th[3] = min(max(1.0, lb0[3]), ub0[3])
        short = _best_power(prob, short_starts, (lb0, ub0, held), wh)
        extra = profile_starts(prob, short, wh, lb1, ub1, free1, consts=consts, n_best=1)
    except FitFailed:  # an extra start only: the first sweep's are enough to go on
        extra = []
    return starts[:1] + extra + starts[1:]
