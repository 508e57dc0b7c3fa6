"""Power-law, exponential and broken power-law fits of a loss curve.

All models are fitted to **log loss** (multiplicative noise becomes additive).

Estimator
---------
``estimator="ols"`` is least squares on log loss: exact raw-point OLS for the linear
models (exponential -- its default; power law without floor and shift), whose
AIC/BIC then equal ``statsmodels.api.OLS(...).fit().aic/.bic``, and nonlinear least
squares on log-spaced bin means weighted by their counts otherwise.
``estimator="gls"`` (default for the power laws) is generalised least squares on
the bin means under the fitted white + AR(1) noise model (Gaussian maximum
likelihood), the more efficient choice under autocorrelation.

Uncertainty
-----------
Standard errors are honest under autocorrelated noise: the covariance of the
estimator under the white + AR(1) noise model fitted to the residuals (Whittle),
i.e. a parametric HAC sandwich for OLS and the GLS covariance for GLS, inflated by
the reduced chi-square when that exceeds 1 (misfit).  Intervals use a Student-t
quantile with ``n_eff - k`` degrees of freedom; they are Wald intervals (log scale
for amplitudes and knee steps) except the exponent of :func:`fit_power_law`, whose
interval is a profile-likelihood interval (the floor and shift re-optimised).

Robustness
----------
With ``robust="auto"`` a fit whose raw residuals are heavy-tailed (excess kurtosis
of their first differences above ``1 + 4 sqrt(24 / n)``; differencing removes
smooth misfit and slow wander but keeps spikes) is refitted with Huber's
M-estimator (delta = 1.5 x the MAD-based sigma), by iterated pseudo-observations,
with the Huber sandwich correction of the covariance.

Information criteria
--------------------
``aic``/``bic`` are the iid-Gaussian (statsmodels) criteria of the raw log-loss
residuals; they ignore autocorrelation.  ``aic_ac``/``bic_ac`` are the Gaussian
likelihood of the bin means under the noise model (``bic_ac`` uses the effective
sample size) -- use these to compare models.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np

from . import models as M, solver as S
from .data import DEFAULT_BIN_DECADES, min_points_for, prepare_curve
from .exceptions import InvalidCurve, NotEnoughPoints
from .noise import NoiseModel
from .results import (
    Estimate,
    ExponentialFit,
    FitResult,
    ModelComparison,
    PowerLawFit,
    ResidualDiagnostics,
    TwoPowerLawFit,
)
from .search import LrtFit, fit_lrt, fit_two_power_core, profile_starts

__all__ = [
    "Estimate",
    "ResidualDiagnostics",
    "FitResult",
    "PowerLawFit",
    "ExponentialFit",
    "TwoPowerLawFit",
    "ModelComparison",
    "fit_power_law",
    "fit_exponential",
    "fit_two_power_law",
    "compare_models",
]


def _diagnostics(f: S.Fitted) -> ResidualDiagnostics:
    r = f.raw_resid
    rc = r - r.mean()
    ss = float(rc @ rc)
    lag1 = float(rc[1:] @ rc[:-1] / ss) if ss > 0 else 0.0
    dw = float(np.sum(np.diff(r) ** 2) / float(r @ r)) if float(r @ r) > 0 else float("nan")
    sd = math.sqrt(ss / max(r.size, 1))
    skew = float(np.mean(rc**3) / sd**3) if sd > 0 else 0.0
    return ResidualDiagnostics(
        sigma=sd,
        robust_sigma=S.robust_sigma(r),
        lag1_autocorr=lag1,
        durbin_watson=dw,
        skewness=skew,
        excess_kurtosis=f.kurt,
        heavy_tailed=bool(f.heavy),
        noise=f.noise,
        effective_n=f.noise.effective_n(r.size),
        reduced_chi2=f.chi2_gls / max(f.problem.m - f.core.k, 1),
    )


def _build(cls, f: S.Fitted, names, convert, confidence: float, n_masked: int):
    """Assemble a frozen result; ``convert(theta, se_theta, z)`` -> {name: Estimate}."""
    z = S.t_quantile(confidence, f)
    core, prob = f.core, f.problem
    p = core.theta.size
    cov = np.zeros((p, p))
    cov[np.ix_(core.free, core.free)] = f.cov
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    params = convert(core.theta, se, z, prob.y_ref, cov=cov, consts=core.consts)
    for idx, (lo, hi) in f.profile.items():
        est = params[names[idx]]
        params[names[idx]] = Estimate(est.value, est.stderr, (float(lo), float(hi)))
    fixed = tuple(nm for nm, fr in zip(names, core.free) if not fr)
    free_names = [nm for nm, fr in zip(names, core.free) if fr]
    at_bound = {nm: False for nm in names}
    hit = []
    for nm, act, low in zip(free_names, core.active, core.active_low):
        at_bound[nm] = bool(act)
        if act and not (low and nm in ("floor", "shift")):
            hit.append(nm)
    n = prob.n
    k = core.k
    rss = float(f.raw_resid @ f.raw_resid)
    yc = prob.y - prob.y.mean()
    tss = float(yc @ yc)
    ll = S.iid_loglik(max(rss, 1e-300), n)
    mb, _ = prob.bin_model(core.fn(), core.theta, jac=False)
    rb = prob.yb - mb
    ybc = prob.yb - prob.yb.mean()
    r2b = 1.0 - float(rb @ rb) / float(ybc @ ybc) if float(ybc @ ybc) > 0 else float("nan")
    nic = f.noise_ic or f.noise
    ll_ac = S.gls_loglik(prob, f.chi2_gls, nic)
    neff = max(nic.effective_n(n), 2.0)
    se_method = ("GLS" if f.estimator == "gls" else "sandwich") + " covariance under white+AR(1) noise"
    if f.robust:
        se_method += ", Huber pseudo-observations"
    return cls(
        model=core.model,
        params=MappingProxyType(params),
        fixed=fixed,
        n_obs=n,
        n_params=k,
        rss=rss,
        loglik=ll,
        aic=-2.0 * ll + 2.0 * k,
        bic=-2.0 * ll + k * math.log(n),
        aic_ac=-2.0 * ll_ac + 2.0 * k,
        bic_ac=-2.0 * ll_ac + k * math.log(neff),
        r2=1.0 - rss / tss if tss > 0 else float("nan"),
        r2_binned=r2b,
        estimator=f.estimator,
        se_method=se_method,
        robust=f.robust,
        confidence=confidence,
        converged=core.converged,
        n_masked=n_masked,
        step_range=(float(prob.s[0]), float(prob.s[-1])),
        diagnostics=_diagnostics(f),
        theta=tuple(float(v) for v in core.theta),
        y_ref=prob.y_ref,
        mean=core.fn(),
        model_consts=MappingProxyType(dict(core.consts)),
        at_bound=MappingProxyType(at_bound),
        hit_bound=tuple(hit),
    )


def _problem(steps, loss, n_params, nonfinite, bin_decades):
    curve = prepare_curve(steps, loss, min_points=min_points_for(n_params), nonfinite=nonfinite)
    prob = S.Problem(curve, bin_decades=bin_decades)
    if prob.m < n_params + 2:
        raise NotEnoughPoints(n_params + 2, prob.m, "log-spaced bins (use a smaller bin_decades)")
    return prob


def _power_core_fit(prob, *, floor, shift, estimator, noise, robust) -> S.Fitted:
    if not (shift is True or shift is False or isinstance(shift, (int, float))):
        raise TypeError("shift must be True, False or a number of steps")
    if shift is not True and shift is not False and float(shift) < 0:
        raise ValueError("a fixed shift must be >= 0")
    lb, ub, free, t_fixed = M.power_bounds(prob, floor, shift)
    if shift is not True and prob.s[0] + t_fixed <= 0:
        raise InvalidCurve("step + shift must be > 0")
    starts = M.power_starts(prob, floor, shift, t_fixed)
    linear = (not floor) and shift is not True and estimator == "ols"
    return S.run_fit(
        prob, M.POWER, starts, lb, ub, free, estimator=estimator, noise=noise, robust=robust, linear_raw=linear
    )


# ====================================================================== public API
def fit_power_law(
    steps,
    loss,
    *,
    floor: bool = True,
    shift: bool | float = True,
    estimator: str = "gls",
    robust: str = "auto",
    confidence: float = 0.95,
    noise: NoiseModel | None = None,
    bin_decades: float = DEFAULT_BIN_DECADES,
    nonfinite: str = "raise",
) -> PowerLawFit:
    """Fit ``loss = floor + amplitude * (step + shift)^(-exponent)`` in log space.

    Parameters
    ----------
    steps : array_like, shape (n,)
        0-based optimizer steps, strictly increasing.
    loss : array_like, shape (n,)
        Loss (> 0), any unit (nats or bits give the same exponent and shift).
    floor : bool
        Fit the floor ``c >= 0`` (else ``c = 0``).
    shift : bool or float
        ``True`` fits the transient shift ``t0 >= 0`` (steps); ``False`` fixes it to
        1 (``t = step + 1``, the plain log-log fit); a number fixes it to that value.
    estimator : {"gls", "ols"}
        GLS under the noise model (default) or least squares on log loss.
    robust : {"auto", "never", "always"}
        Huber fallback policy.
    confidence : float
        Level of the confidence intervals.
    noise : NoiseModel, optional
        Reuse a noise model instead of estimating one from the residuals.
    bin_decades : float
        Width of the log-spaced bins in decades of (step + 1).
    nonfinite : {"raise", "drop"}
        Masking rule for NaN/inf loss values.

    Returns
    -------
    PowerLawFit
        ``.exponent``, ``.exponent_ci``, ``.floor``, ``.shift``, ``.amplitude``, AIC,
        BIC, R^2 and diagnostics.

    Raises
    ------
    InvalidCurve
        Bad input (see :mod:`loss_slope.analysis.exceptions`).
    """
    prob = _problem(steps, loss, 4, nonfinite, bin_decades)
    f = _power_core_fit(prob, floor=floor, shift=shift, estimator=estimator, noise=noise, robust=robust)
    if f.estimator == "gls" and not f.robust:
        # profile-likelihood interval for the exponent (honest when the floor or
        # shift sits on its bound)
        lb, ub, _, _ = M.power_bounds(prob, floor, shift)
        q = S.t_quantile(confidence, f)
        k_free = int(np.sum(f.core.free[:1]))  # position of the exponent among free params
        se = math.sqrt(max(f.cov[k_free, k_free], 0.0))
        wh = S.whitener(prob, "gls", f.noise)
        f.profile[1] = S.profile_interval(prob, f.core, wh, lb, ub, index=1, crit=q * q * f.scale, se_guess=se)
    return _build(PowerLawFit, f, M.POWER.param_names, M.power_estimates, confidence, prob.curve.n_masked)


def fit_exponential(
    steps,
    loss,
    *,
    estimator: str = "ols",
    robust: str = "auto",
    confidence: float = 0.95,
    noise: NoiseModel | None = None,
    bin_decades: float = DEFAULT_BIN_DECADES,
    nonfinite: str = "raise",
) -> ExponentialFit:
    """Fit ``log loss = log amplitude - rate * step`` (log-linear).

    With ``estimator="ols"`` (default) this is raw-point OLS and ``.aic``/``.bic``
    equal statsmodels' ``OLS(log(loss), [1, step]).fit()``.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
    estimator, robust, confidence, noise, bin_decades, nonfinite
        As for :func:`fit_power_law`.

    Returns
    -------
    ExponentialFit
        ``.rate`` (per step) and ``.rate_ci``.
    """
    prob = _problem(steps, loss, 2, nonfinite, bin_decades)
    f = _exponential_fit(prob, estimator=estimator, noise=noise, robust=robust)
    return _build(
        ExponentialFit, f, M.EXPONENTIAL.param_names, M.exponential_estimates, confidence, prob.curve.n_masked
    )


def fit_two_power_law(
    steps,
    loss,
    *,
    floor: bool = True,
    shift: bool | float = True,
    knee_range: tuple[float, float] | None = None,
    estimator: str = "gls",
    robust: str = "auto",
    confidence: float = 0.95,
    noise: NoiseModel | None = None,
    bin_decades: float = DEFAULT_BIN_DECADES,
    nonfinite: str = "raise",
) -> TwoPowerLawFit:
    """Fit a broken power law: exponent ``exponent_before`` up to ``break_step``,
    ``exponent_after`` beyond, with optional floor and transient shift.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
    floor, shift : as for :func:`fit_power_law`.
    knee_range : (float, float), optional
        Search range of the break in optimizer steps; default from step 10 to the
        last step / 10**0.3.
    estimator, robust, confidence, noise, bin_decades, nonfinite
        As for :func:`fit_power_law`.

    Returns
    -------
    TwoPowerLawFit
        ``.exponent_before``, ``.exponent_after``, ``.break_step`` and
        ``.break_step_ci`` besides the common fields.
    """
    prob = _problem(steps, loss, 6, nonfinite, bin_decades)
    f = _two_power_fit(
        prob, floor=floor, shift=shift, knee_range=knee_range, estimator=estimator, noise=noise, robust=robust
    )
    return _build(
        TwoPowerLawFit,
        f,
        M.TWO_POWER.param_names,
        M.two_power_estimates,
        confidence,
        prob.curve.n_masked,
    )


def _two_power_fit(
    prob, *, floor, shift, knee_range, estimator, noise, robust, null: S.Fitted | None = None
) -> S.Fitted:
    consts = M.knee_consts(prob, knee_range)
    if null is None:
        null = _power_core_fit(prob, floor=floor, shift=shift, estimator="ols", noise=noise, robust="never")
    lb, ub, free = M.two_power_bounds(prob, floor, shift, consts)
    wh_ols = S.whitener(prob, "ols", None)
    starts = profile_starts(prob, null.core, wh_ols, lb, ub, free, consts=consts, n_best=3)
    start = fit_two_power_core(
        prob, null.core, wh_ols, floor=floor, shift=shift, consts=consts, grid=0, extra_starts=starts[:2]
    )

    def gls_refit(problem, wh, core):
        return fit_two_power_core(
            problem,
            null.core,
            wh,
            floor=floor,
            shift=shift,
            consts=consts,
            grid=0,
            extra_starts=[core.theta] + starts[2:],
        )

    return S.run_fit(
        prob,
        M.TWO_POWER,
        [start.theta],
        lb,
        ub,
        free,
        estimator=estimator,
        noise=noise,
        robust=robust,
        consts=consts,
        gls_refit=gls_refit,
    )


def compare_models(
    steps,
    loss,
    *,
    floor: bool = True,
    shift: bool | float = True,
    estimator: str = "gls",
    confidence: float = 0.95,
    noise: NoiseModel | None = None,
    bin_decades: float = DEFAULT_BIN_DECADES,
    nonfinite: str = "raise",
) -> ModelComparison:
    """Fit the three models on one likelihood and tabulate AIC/BIC.

    With the defaults this is exactly the comparison of the pipeline's fit stage
    (:func:`loss_slope.analysis.analyze_curve`): the power law and the broken power
    law are the knee test's fits, and the exponential is fitted to the same bin means
    under the same noise model (white + AR(1), with the smooth noise scale and the
    Huber pseudo-observations of the knee test when it uses them), so every AIC
    shares one likelihood.

    With a fixed floor or shift, ``estimator="ols"`` or a given ``noise``, the noise
    model is estimated from the residuals of the most flexible model (the broken
    power law) and the three fits use it without a noise scale.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
    floor, shift : as for :func:`fit_power_law` (power and two-power models).
    estimator, confidence, noise, bin_decades, nonfinite : as for :func:`fit_power_law`.

    Returns
    -------
    ModelComparison
    """
    prob = _problem(steps, loss, 6, nonfinite, bin_decades)
    if floor is True and shift is True and estimator == "gls" and noise is None:
        return comparison_from_lrt(fit_lrt(prob), confidence=confidence)
    null = _power_core_fit(prob, floor=floor, shift=shift, estimator="ols", noise=noise, robust="never")
    two = _two_power_fit(
        prob, floor=floor, shift=shift, knee_range=None, estimator="ols", noise=noise, robust="never", null=null
    )
    if noise is None:
        noise = two.noise
    fits = {
        "exponential": _build(
            ExponentialFit,
            _exponential_fit(prob, estimator=estimator, noise=noise, robust="auto"),
            M.EXPONENTIAL.param_names,
            M.exponential_estimates,
            confidence,
            prob.curve.n_masked,
        ),
        "power": _build(
            PowerLawFit,
            _power_core_fit(prob, floor=floor, shift=shift, estimator=estimator, noise=noise, robust="auto"),
            M.POWER.param_names,
            M.power_estimates,
            confidence,
            prob.curve.n_masked,
        ),
        "two_power": _build(
            TwoPowerLawFit,
            _two_power_fit(
                prob,
                floor=floor,
                shift=shift,
                knee_range=None,
                estimator=estimator,
                noise=noise,
                robust="auto",
                null=null,
            ),
            M.TWO_POWER.param_names,
            M.two_power_estimates,
            confidence,
            prob.curve.n_masked,
        ),
    }
    return _comparison(fits, noise)


def _exponential_fit(prob: S.Problem, *, estimator: str, noise: NoiseModel | None, robust: str) -> S.Fitted:
    lb, ub, free = M.exponential_bounds(prob)
    return S.run_fit(
        prob,
        M.EXPONENTIAL,
        M.exponential_starts(prob),
        lb,
        ub,
        free,
        estimator=estimator,
        noise=noise,
        robust=robust,
        linear_raw=estimator == "ols" and prob.row_scale is None,
    )


def comparison_from_lrt(lrt: LrtFit, *, confidence: float = 0.95) -> ModelComparison:
    """The three-model comparison on the knee test's likelihood.

    ``lrt`` is the knee test's fit (:func:`loss_slope.analysis.search.fit_lrt`): its
    problem (bin means, noise scale, Huber pseudo-observations when used), its noise
    model and its power-law and broken-power-law fits.  The exponential is fitted to
    the same problem by GLS under the same noise model.
    """
    pw = _result_from_core(PowerLawFit, lrt.problem, lrt.null, lrt.noise, confidence=confidence, robust=lrt.robust)
    tw = _result_from_core(TwoPowerLawFit, lrt.problem, lrt.alt, lrt.noise, confidence=confidence, robust=lrt.robust)
    f = _exponential_fit(lrt.problem, estimator="gls", noise=lrt.noise, robust="never")
    f.robust = lrt.robust
    ex = _build(
        ExponentialFit, f, M.EXPONENTIAL.param_names, M.exponential_estimates, confidence, lrt.problem.curve.n_masked
    )
    return _comparison({"exponential": ex, "power": pw, "two_power": tw}, lrt.noise)


def _comparison(fits: dict, noise: NoiseModel) -> ModelComparison:
    best_a = min(fits, key=lambda k: fits[k].aic_ac)
    best_b = min(fits, key=lambda k: fits[k].bic_ac)
    best_iid = min(f.aic for f in fits.values())
    rows = []
    for name, f in fits.items():
        rows.append(
            MappingProxyType(
                {
                    "model": name,
                    "n_params": f.n_params,
                    "aic": f.aic,
                    "bic": f.bic,
                    "aic_ac": f.aic_ac,
                    "bic_ac": f.bic_ac,
                    "delta_aic": f.aic_ac - fits[best_a].aic_ac,
                    "delta_bic": f.bic_ac - fits[best_b].bic_ac,
                    "delta_aic_iid": f.aic - best_iid,
                    "r2": f.r2,
                }
            )
        )
    return ModelComparison(
        fits=MappingProxyType(dict(fits)), table=tuple(rows), best_aic=best_a, best_bic=best_b, noise=noise
    )


def _result_from_core(
    cls,
    problem: S.Problem,
    core: S.Core,
    noise: NoiseModel,
    *,
    estimator: str = "gls",
    confidence: float = 0.95,
    robust: bool = False,
) -> FitResult:
    """Build a result from an existing fit (no refit), e.g. the knee detector's."""
    names, convert = core.spec.param_names, core.spec.estimates
    raw = S.raw_residuals(problem, core)
    kurt = S.excess_kurtosis(np.diff(raw))
    cov, chi2, scale = S.covariance(problem, core, noise, estimator)
    f = S.Fitted(
        problem, core, noise, cov, chi2, scale, robust, kurt > S.heavy_tail_threshold(problem.n), kurt, raw, estimator
    )
    return _build(cls, f, names, convert, confidence, problem.curve.n_masked)
