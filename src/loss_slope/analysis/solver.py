"""The solver: binned least squares / GLS for any model given by its spec.

A :class:`Problem` is a curve with its log-spaced bins, normalised for fitting; a
:class:`Whitener` maps residuals to the scale of the estimator (bin counts for
``"ols"``, the inverse Cholesky factor of the noise model's bin-mean covariance
for ``"gls"``); :func:`nls` is a small bounded Levenberg-Marquardt on the whitened
residuals of a :class:`MeanModel`.  Around it: the covariance of the estimate
under the noise model, the GLS and iid likelihoods, the Huber fallback,
profile-likelihood intervals, the noise model of a flexible fit
(:func:`noise_from_fit`), :func:`run_fit`, the whole estimation of one model
(OLS pilot, noise model, GLS, Huber check, covariance), and linear least squares
(:func:`wls`).  Nothing here knows a particular model: a model is seen only
through :class:`MeanModel`, the interface that
:class:`loss_slope.analysis.models.ModelSpec` implements (this module does not
import the models).

Conventions
-----------
* Work in log loss, normalised by ``y_ref = min(bin means)`` (unit invariance).
* Nonlinear models are fitted on log-spaced bin means.  With weights equal to the
  bin counts ("ols") this is raw-point least squares up to within-bin curvature;
  with the inverse bin covariance of the noise model ("gls") it is the Gaussian
  maximum-likelihood estimate under white + AR(1) noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import linalg
from scipy.special import stdtrit

from .data import DEFAULT_BIN_DECADES, Curve, LogBins, make_bins, z_value
from .exceptions import FitFailed
from .noise import NoiseModel, estimate_noise, reml_refine

ESTIMATORS = ("ols", "gls")


class MeanModel(Protocol):
    """A mean model of normalised log loss as the solver sees it."""

    @property
    def name(self) -> str:
        """Registry name of the model."""
        ...

    def fn(self, consts: dict | None = None) -> Callable:
        """``fn(theta, steps, jac=True) -> (m, J)`` with the model constants bound."""
        ...


class Problem:
    """A curve with its bins, normalised for fitting."""

    def __init__(self, curve: Curve, *, bin_decades: float = DEFAULT_BIN_DECADES, y_raw=None):
        self.curve = curve
        self.bin_decades = bin_decades
        y = curve.y if y_raw is None else y_raw
        self.bins: LogBins = make_bins(curve.steps, y, decades=bin_decades)
        if y_raw is None:
            self.y_ref = float(np.min(self.bins.y))
        else:
            self.y_ref = float(np.min(make_bins(curve.steps, curve.y, decades=bin_decades).y))
        self.s = curve.steps
        self.y = y - self.y_ref
        #: ``y`` holds pseudo-observations (a Huber problem), not the observed log loss
        self.pseudo = y_raw is not None
        self.sb = self.bins.step
        # two-point Gauss rule per bin (nodes mean +- sd of the steps): the bin mean
        # of a model that curves inside the bin is exact to second order
        self._nodes = np.concatenate((self.sb - self.bins.step_sd, self.sb + self.bins.step_sd))
        self.yb = self.bins.y - self.y_ref
        self.nb = self.bins.count
        self._chol: dict[NoiseModel, np.ndarray] = {}
        self._chol_inv: dict[NoiseModel, np.ndarray] = {}
        #: heteroscedastic noise: per-row scale of the log-loss noise (None = constant)
        self.row_scale: np.ndarray | None = None
        #: ... and its per-bin RMS, which multiplies the bin-mean covariance: D C D
        self.bin_scale: np.ndarray | None = None
        #: largest transient shift the power-type models may use (None: the default box)
        self.shift_cap: float | None = None

    def set_scale(self, row_scale: np.ndarray | None) -> None:
        """Use a smooth noise scale ``sigma(step)`` (rows); ``None`` for constant noise.

        The bin-mean covariance becomes ``D C D`` with ``D = diag(bin RMS of sigma)``
        (sigma varies little inside a 0.01-decade bin), and the ``"ols"`` weights
        become ``count / D^2``.
        """
        self._chol, self._chol_inv = {}, {}
        if row_scale is None:
            self.row_scale = self.bin_scale = None
            return
        rs = np.asarray(row_scale, dtype=float)
        self.row_scale = rs
        self.bin_scale = np.sqrt(np.add.reduceat(rs * rs, self.bins.start) / self.bins.count)

    @property
    def m(self) -> int:
        return self.bins.m

    def bin_model(self, fn, theta: np.ndarray, jac: bool = True):
        """Bin means of the model ``fn`` (and of its Jacobian)."""
        m2, J2 = fn(theta, self._nodes, jac=jac)
        k = self.m
        m = 0.5 * (m2[:k] + m2[k:])
        if not jac:
            return m, None
        return m, 0.5 * (J2[:k] + J2[k:])

    @property
    def n(self) -> int:
        return self.curve.n

    def rebinned(self, y_raw_normalised: np.ndarray) -> Problem:
        """Same curve, bins recomputed from new (normalised) raw values."""
        p = Problem(self.curve, bin_decades=self.bin_decades, y_raw=y_raw_normalised + self.y_ref)
        p.set_scale(self.row_scale)
        p.shift_cap = self.shift_cap
        return p

    def chol(self, noise: NoiseModel) -> np.ndarray:
        """Lower Cholesky factor of the bin-mean covariance (cached per noise model)."""
        if noise not in self._chol:
            L = noise.bin_cholesky(self.bins)
            if self.bin_scale is not None:
                L = self.bin_scale[:, None] * L
            self._chol = {noise: L}
            self._chol_inv = {}
        return self._chol[noise]

    def chol_inv(self, noise: NoiseModel) -> np.ndarray:
        L = self.chol(noise)
        if noise not in self._chol_inv:
            self._chol_inv = {noise: linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True, check_finite=False)}
        return self._chol_inv[noise]

    # bounds shared by the power-type models (normalised units)
    def shift_bounds(self) -> tuple[float, float]:
        lo = 0.0 if self.s[0] >= 1.0 else 0.1
        hi = max(10.0, 0.5 * float(self.s[-1]))
        if self.shift_cap is not None:
            hi = max(min(hi, self.shift_cap), lo + 1e-6)
        return lo, hi

    def floor_max(self) -> float:
        return 2.0  # 2 x the smallest bin-mean loss (y_ref = min bin mean)


# ---------------------------------------------------------------- linear least squares
def wls(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None):
    """Weighted least squares via QR.  Returns (beta, resid, rss_weighted)."""
    if w is None:
        q, r = np.linalg.qr(x)
        beta = linalg.solve_triangular(r, q.T @ y, check_finite=False)
        res = y - x @ beta
        return beta, res, float(res @ res)
    sw = np.sqrt(w)
    q, r = np.linalg.qr(x * sw[:, None])
    beta = linalg.solve_triangular(r, q.T @ (y * sw), check_finite=False)
    res = y - x @ beta
    return beta, res, float(np.dot(w, res * res))


# ---------------------------------------------------------------- whitening
class Whitener:
    """Maps bin residuals/Jacobians to whitened ones."""

    def __init__(self, *, sqrt_w: np.ndarray | None = None, chol_inv: np.ndarray | None = None):
        self.sqrt_w = sqrt_w
        self.chol_inv = chol_inv  # L^-1 (lower triangular), explicit: one matmul per call

    def __call__(self, v: np.ndarray) -> np.ndarray:
        if self.chol_inv is not None:
            return self.chol_inv @ v
        return v * (self.sqrt_w if v.ndim == 1 else self.sqrt_w[:, None])


def whitener(problem: Problem, estimator: str, noise: NoiseModel | None) -> Whitener:
    if estimator == "gls":
        if noise is None:
            raise ValueError("gls needs a noise model")
        return Whitener(chol_inv=problem.chol_inv(noise))
    if problem.bin_scale is not None:
        return Whitener(sqrt_w=np.sqrt(problem.nb) / problem.bin_scale)
    return Whitener(sqrt_w=np.sqrt(problem.nb))


# ---------------------------------------------------------------- NLS
@dataclass
class Core:
    """Result of one numerical fit (normalised units)."""

    spec: MeanModel
    theta: np.ndarray
    free: np.ndarray  # bool mask
    chi2: float  # whitened residual sum of squares at the optimum
    jac: np.ndarray  # unwhitened bin Jacobian (m, n_free)
    resid_b: np.ndarray  # bin residuals yb - m
    converged: bool
    consts: dict = field(default_factory=dict)  # model constants (knee range)
    active: np.ndarray | None = None  # free params on a bound (bool, n_free)
    active_low: np.ndarray | None = None  # ... on their lower bound (bool, n_free)

    def __post_init__(self) -> None:
        if self.active is None:
            self.active = np.zeros(int(np.sum(self.free)), dtype=bool)
        if self.active_low is None:
            self.active_low = np.zeros(int(np.sum(self.free)), dtype=bool)

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def k(self) -> int:
        return int(self.free.sum())

    def fn(self):
        return self.spec.fn(self.consts)


def nls(
    problem: Problem,
    spec: MeanModel,
    theta0: np.ndarray,
    free: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    wh: Whitener,
    *,
    yb: np.ndarray | None = None,
    consts: dict | None = None,
    max_iter: int = 60,
    ftol: float = 1e-7,
) -> Core:
    """Bounded Levenberg-Marquardt on whitened bin residuals.

    Minimises ``|W (yb - m(theta))|^2`` over the free parameters inside the box
    ``[lb, ub]`` (projected steps, Marquardt scaling).  Small and dependency-free
    so that the many small fits of a knee search stay fast.
    """
    fn = spec.fn(consts)
    yb = problem.yb if yb is None else yb
    theta = np.asarray(theta0, dtype=float).copy()
    free = np.asarray(free, dtype=bool)
    lbf, ubf = lb[free], ub[free]
    p = np.clip(theta[free], lbf, ubf)

    def evaluate(pp):
        th = theta.copy()
        th[free] = pp
        m, J = problem.bin_model(fn, th)
        r = wh(yb - m)
        return r, J, float(r @ r)

    r, J, cost = evaluate(p)
    if not np.isfinite(cost):
        raise FitFailed(f"{spec.name}: non-finite residuals at the starting point")
    Jw = wh(J[:, free])
    lam = 1e-3
    converged = False
    small = 0
    for _ in range(max_iter):
        A = Jw.T @ Jw
        b = Jw.T @ r  # descent direction for theta (d cost / d theta = -2 Jw' r)
        dA = np.maximum(np.diag(A), 1e-12 * max(float(np.max(np.diag(A))), 1e-300))
        # parameters on a bound whose step points outward are held (active set)
        hold = ((p <= lbf) & (b < 0)) | ((p >= ubf) & (b > 0))
        improved = False
        while lam < 1e12:
            use = ~hold
            step = np.zeros_like(p)
            if np.any(use):
                M = A[np.ix_(use, use)] + lam * np.diag(dA[use])
                try:
                    step[use] = np.linalg.solve(M, b[use])
                except (linalg.LinAlgError, ValueError):
                    lam *= 10.0
                    continue
            p_new = np.clip(p + step, lbf, ubf)
            r_new, J_new, cost_new = evaluate(p_new)
            if np.isfinite(cost_new) and cost_new <= cost:
                rel = (cost - cost_new) / max(cost, 1e-300)
                p, r, J, cost = p_new, r_new, J_new, cost_new
                Jw = wh(J[:, free])
                lam = max(lam / 5.0, 1e-9)
                improved = True
                small = small + 1 if rel < ftol else 0
                break
            lam *= 8.0
        if not improved:
            converged = True  # no descent possible: at a (bounded) minimum
            break
        if small >= 2:
            converged = True
            break
    theta[free] = p
    m, J = problem.bin_model(fn, theta)
    tol = 1e-9 * np.maximum(1.0, np.abs(p))
    low = (p - lbf) <= tol
    active = low | ((ubf - p) <= tol)
    return Core(
        spec=spec,
        theta=theta,
        free=free,
        chi2=cost,
        jac=J[:, free],
        resid_b=yb - m,
        converged=converged,
        consts=dict(consts or {}),
        active=active,
        active_low=low,
    )


def raw_residuals(problem: Problem, core: Core) -> np.ndarray:
    """Residuals of the raw (normalised) log loss against the fitted model."""
    m, _ = core.fn()(core.theta, problem.s, jac=False)
    return problem.y - m


def observed_residuals(problem: Problem, core: Core) -> np.ndarray:
    """Residuals of the observed (normalised) log loss against the fitted model, also on a
    problem of Huber pseudo-observations (whose :func:`raw_residuals` are pseudo-residuals)."""
    if not problem.pseudo:
        return raw_residuals(problem, core)
    m, _ = core.fn()(core.theta, problem.s, jac=False)
    return (problem.curve.y - problem.y_ref) - m


def observed_bin_means(problem: Problem) -> np.ndarray:
    """The (normalised) bin means of the observed log loss (``yb`` unless pseudo-observations)."""
    if not problem.pseudo:
        return problem.yb
    return make_bins(problem.curve.steps, problem.curve.y, decades=problem.bin_decades).y - problem.y_ref


def noise_from_fit(problem: Problem, core: Core, std: np.ndarray, *, slack: float) -> NoiseModel:
    """White + AR(1) noise model from the residuals of a flexible fit.

    ``std`` are the fit's raw residuals in units of the noise scale (divided by
    the problem's row scale when one is used; Huber pseudo-residuals on a rebinned
    problem).  The Whittle estimate from them has its AR coefficient re-estimated
    by REML on the bin means given the fit's bin Jacobian and bin residuals, with
    ``slack`` towards more persistence (:func:`loss_slope.analysis.noise.reml_refine`).
    """
    mb, _ = problem.bin_model(core.fn(), core.theta, jac=False)
    return reml_refine(
        estimate_noise(std), problem.bins, core.jac, problem.yb - mb, slack=slack, bin_scale=problem.bin_scale
    )


# ---------------------------------------------------------------- covariance
def covariance(problem: Problem, core: Core, noise: NoiseModel, estimator: str):
    """Parameter covariance honest under the noise model (free params only).

    Returns
    -------
    cov : ndarray (k, k)
    chi2_gls : float
        Whitened (GLS) residual sum of squares at the estimate.
    scale : float
        Variance inflation applied: max(1, chi2_gls / (m - k)).
    """
    L = problem.chol(noise)
    rt = linalg.solve_triangular(L, core.resid_b, lower=True, check_finite=False)
    chi2 = float(rt @ rt)
    # A parameter sitting on its bound (e.g. floor = 0) is treated as known: the
    # Wald covariance of a free parameter there overstates the uncertainty of the
    # others (the estimator's law is truncated, not Gaussian).
    act = core.active
    use = ~act
    J = core.jac[:, use]
    cov = np.zeros((core.k, core.k))
    if J.shape[1]:
        if estimator == "gls":
            Jt = linalg.solve_triangular(L, J, lower=True, check_finite=False)
            sub = _pinv_sym(Jt.T @ Jt)
        else:
            w = problem.nb if problem.bin_scale is None else problem.nb / problem.bin_scale**2
            nj = J * w[:, None]
            a_inv = _pinv_sym(J.T @ nj)
            ljt = L.T @ nj  # Sigma = L L'
            meat = ljt.T @ ljt
            sub = a_inv @ meat @ a_inv
        cov[np.ix_(use, use)] = sub
    dof = max(problem.m - core.k, 1)
    scale = max(1.0, chi2 / dof)
    return cov * scale, chi2, scale


def gls_chi2(problem: Problem, core: Core, noise: NoiseModel) -> float:
    """GLS chi-square of the problem's bin means against a fitted model."""
    mb, _ = problem.bin_model(core.fn(), core.theta, jac=False)
    rt = linalg.solve_triangular(problem.chol(noise), problem.yb - mb, lower=True, check_finite=False)
    return float(rt @ rt)


def _pinv_sym(a: np.ndarray) -> np.ndarray:
    try:
        c = linalg.cho_factor(a, check_finite=False)
        return linalg.cho_solve(c, np.eye(a.shape[0]), check_finite=False)
    except linalg.LinAlgError:
        return np.linalg.pinv(a, hermitian=True)


def gls_loglik(problem: Problem, chi2: float, noise: NoiseModel) -> float:
    """Gaussian log-likelihood of the bin means under the noise model."""
    L = problem.chol(noise)
    logdet = 2.0 * float(np.sum(np.log(np.diag(L))))
    return -0.5 * (chi2 + logdet + problem.m * math.log(2 * math.pi))


def iid_loglik(rss: float, n: int) -> float:
    """statsmodels OLS log-likelihood (variance profiled out)."""
    return -0.5 * n * (math.log(2 * math.pi) + math.log(rss / n) + 1.0)


# ---------------------------------------------------------------- robust helpers
def excess_kurtosis(r: np.ndarray) -> float:
    """Excess kurtosis (0 for Gaussian).  Callers pass first differences of the
    residuals, which removes smooth misfit and slow AR wander but keeps spikes."""
    r = r - r.mean()
    v = float(np.mean(r * r))
    if v <= 0:
        return 0.0
    return float(np.mean(r**4) / v**2 - 3.0)


def robust_sigma(r: np.ndarray) -> float:
    """1.4826 x median absolute deviation."""
    med = np.median(r)
    return 1.4826 * float(np.median(np.abs(r - med)))


def heavy_tail_threshold(n: int) -> float:
    """Excess kurtosis of differenced residuals above which they count as heavy-tailed."""
    return 1.0 + 4.0 * math.sqrt(24.0 / max(n, 10))


# ---------------------------------------------------------------- profile likelihood
def profile_interval(
    problem: Problem,
    core: Core,
    wh: Whitener,
    lb: np.ndarray,
    ub: np.ndarray,
    *,
    index: int,
    crit: float,
    se_guess: float,
    yb: np.ndarray | None = None,
    max_expand: int = 12,
    n_bisect: int = 8,
) -> tuple[float, float]:
    """Profile-likelihood interval of parameter ``index``.

    ``{v : min_{others} chi2(v) - chi2_min <= crit}``, with the other free
    parameters re-optimised (inside their bounds) at every ``v``.  Unlike a Wald
    interval it stays honest when a nuisance parameter sits on its bound (e.g. a
    floor estimated at 0 whose true value is positive).
    """
    free_o = core.free.copy()
    free_o[index] = False
    chi_min = core.chi2
    v0 = float(core.theta[index])
    step0 = max(float(se_guess), 1e-4 * max(1.0, abs(v0)))

    def delta(v, start):
        th = start.copy()
        th[index] = v
        c = nls(problem, core.spec, th, free_o, lb, ub, wh, yb=yb, consts=core.consts, max_iter=40, ftol=1e-7)
        return c.chi2 - chi_min, c.theta

    out = []
    for side in (-1.0, 1.0):
        bound = lb[index] if side < 0 else ub[index]
        lo_v, lo_th = v0, core.theta.copy()  # inside (delta <= crit)
        hi_v = None
        step = step0
        th = core.theta.copy()
        for _ in range(max_expand):
            v = v0 + side * step
            if (side < 0 and v <= bound) or (side > 0 and v >= bound):
                v = bound
            d, th_v = delta(v, th)
            if d > crit:
                hi_v = v
                break
            lo_v, lo_th, th = v, th_v, th_v
            if v == bound:
                break
            step *= 2.0
        if hi_v is None:
            out.append(lo_v)  # the profile never crosses: the interval reaches the bound
            continue
        for _ in range(n_bisect):
            mid = 0.5 * (lo_v + hi_v)
            d, th_m = delta(mid, lo_th)
            if d > crit:
                hi_v = mid
            else:
                lo_v, lo_th = mid, th_m
        out.append(0.5 * (lo_v + hi_v))
    return out[0], out[1]


# ---------------------------------------------------------------- one model, end to end
@dataclass
class Fitted:
    """One estimated model: the numerical fit, its noise model and covariance (what a result is built from)."""

    problem: Problem
    core: Core
    noise: NoiseModel
    cov: np.ndarray
    chi2_gls: float
    scale: float
    robust: bool
    heavy: bool
    kurt: float
    raw_resid: np.ndarray
    estimator: str
    profile: dict = field(default_factory=dict)  # param index -> (low, high)
    noise_ic: NoiseModel | None = None  # noise model of the information criteria, if not ``noise``


def huber_refit(problem, core, refit):
    """Huber M-estimate by iterated pseudo-observations on the raw log loss."""
    fn = core.fn()
    for _ in range(8):
        m, _ = fn(core.theta, problem.s, jac=False)
        r = problem.y - m
        delta = 1.5 * robust_sigma(r)
        if delta <= 0:
            break
        pseudo = m + np.clip(r, -delta, delta)
        prob2 = problem.rebinned(pseudo)
        new = refit(prob2, core.theta)
        step = np.max(np.abs(new.theta - core.theta))
        core = new
        if step < 1e-6:
            break
    m, _ = fn(core.theta, problem.s, jac=False)
    r = problem.y - m
    delta = 1.5 * robust_sigma(r)
    psi = np.clip(r, -delta, delta)
    inside = float(np.mean(np.abs(r) <= delta))
    prob2 = problem.rebinned(m + psi)
    mb, _ = prob2.bin_model(fn, core.theta, jac=False)
    core.resid_b = prob2.yb - mb  # bin residuals of the pseudo-observations
    noise2 = estimate_noise(psi)
    return core, prob2, noise2, max(inside, 0.05)


def run_fit(
    problem: Problem,
    spec: MeanModel,
    starts: list[np.ndarray],
    lb: np.ndarray,
    ub: np.ndarray,
    free: np.ndarray,
    *,
    estimator: str,
    noise: NoiseModel | None,
    robust: str,
    linear_raw: bool = False,
    consts: dict | None = None,
    gls_refit=None,
) -> Fitted:
    """Fit one model: OLS pilot from ``starts``, noise model from its residuals (unless
    given), GLS refit, Huber fallback when the residuals are heavy-tailed, covariance."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}")
    if robust not in ("auto", "never", "always"):
        raise ValueError("robust must be 'auto', 'never' or 'always'")

    def fit_ols(prob, theta0s):
        best = None
        for th in theta0s:
            if linear_raw:
                core = linear_raw_core(prob, spec, th, free)
            else:
                core = nls(prob, spec, th, free, lb, ub, whitener(prob, "ols", None), consts=consts)
            if best is None or core.chi2 < best.chi2:
                best = core
        return best

    core = fit_ols(problem, starts)
    raw = raw_residuals(problem, core)
    if noise is None:
        noise = estimate_noise(raw)
    if estimator == "gls":
        wh = whitener(problem, "gls", noise)
        if gls_refit is not None:
            core = gls_refit(problem, wh, core)
        else:
            core = nls(problem, spec, core.theta, free, lb, ub, wh, consts=consts)
        raw = raw_residuals(problem, core)

    kurt = excess_kurtosis(np.diff(raw))
    heavy = kurt > heavy_tail_threshold(problem.n)
    use_robust = robust == "always" or (robust == "auto" and heavy)
    prob_cov = problem
    inside = 1.0
    noise_ic = noise
    if use_robust:

        def refit(prob2, theta):
            if estimator == "gls":
                return nls(prob2, spec, theta, free, lb, ub, whitener(prob2, "gls", noise), consts=consts)
            return fit_ols(prob2, [theta])

        core, prob_cov, noise, inside = huber_refit(problem, core, refit)
        raw = raw_residuals(problem, core)
    cov, chi2, scale = covariance(prob_cov, core, noise, estimator)
    cov = cov / inside**2
    if use_robust:  # information criteria refer to the observed data and the common noise model
        chi2 = gls_chi2(problem, core, noise_ic)
    return Fitted(problem, core, noise, cov, chi2, scale, use_robust, heavy, kurt, raw, estimator, noise_ic=noise_ic)


def linear_raw_core(problem: Problem, spec: MeanModel, theta0: np.ndarray, free: np.ndarray) -> Core:
    """Exact raw-point OLS for the linear models (statsmodels-identical)."""
    fn = spec.fn()
    th = theta0.copy()
    th[free] = 0.0
    m0, J = fn(th, problem.s)
    # m(theta) = m0 + J_free @ theta_free exactly for a linear model
    Jf = J[:, free]
    beta, _, _ = wls(Jf, problem.y - m0)
    th[free] = beta
    mb, Jb = problem.bin_model(fn, th)
    rb = problem.yb - mb
    return Core(
        spec=spec,
        theta=th,
        free=free.copy(),
        chi2=float(np.dot(problem.nb, rb * rb)),
        jac=Jb[:, free],
        resid_b=rb,
        converged=True,
    )


def t_quantile(confidence: float, f: Fitted) -> float:
    """Two-sided Student-t quantile with the effective degrees of freedom.

    Under strong autocorrelation the noise model (hence every standard error) is
    estimated from few effectively independent points; ``df = n_eff - k`` widens the
    intervals accordingly and tends to the normal quantile for long iid curves.
    """
    z_value(confidence)  # validates the level
    df = max(f.noise.effective_n(f.problem.n) - f.core.k, 2.0)
    return float(stdtrit(df, 0.5 + confidence / 2.0))
