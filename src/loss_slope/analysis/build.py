"""From an estimated model to its result.

:func:`fit_result` turns one estimated model (:class:`loss_slope.analysis.solver.Fitted`)
into the frozen result its :class:`~loss_slope.analysis.models.ModelSpec` names
(``result_type``): the reported estimates (``ModelSpec.estimates``) and intervals,
the iid and noise-model information criteria, R^2, bound flags and
:func:`residual_diagnostics`.  :func:`result_from_core` does the same for a model
fitted elsewhere (the knee test's fits), :func:`model_comparison` tabulates the
fits of one curve.  Nothing here knows a particular model but through its spec.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np

from . import solver as S
from .noise import NoiseModel
from .results import Estimate, FitResult, ModelComparison, ResidualDiagnostics

__all__ = ["fit_result", "result_from_core", "model_comparison", "residual_diagnostics"]


def fit_result(f: S.Fitted, confidence: float) -> FitResult:
    """The frozen result of an estimated model, of the type its spec names.

    Estimates in physical units (``ModelSpec.estimates``) with Wald intervals at
    ``confidence`` (Student-t with the effective degrees of freedom), replaced by
    the profile-likelihood interval for every parameter in ``f.profile``; iid and
    noise-model information criteria; R^2 of the raw points and of the bin means;
    bound flags; residual diagnostics.
    """
    spec = f.core.spec
    if spec.result_type is None:
        raise ValueError(f"model {spec.name!r} has no result type")
    names = spec.param_names
    z = S.t_quantile(confidence, f)
    core, prob = f.core, f.problem
    p = core.theta.size
    cov = np.zeros((p, p))
    cov[np.ix_(core.free, core.free)] = f.cov
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    params = spec.estimates(core.theta, se, z, prob.y_ref, cov=cov, consts=core.consts)
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
    # R^2, RSS and the iid criteria are of the observed log loss, also when the model was fitted
    # to Huber pseudo-observations (the knee test's problem); the noise-model criteria are of the fit
    raw = S.observed_residuals(prob, core) if prob.pseudo else f.raw_resid
    rss = float(raw @ raw)
    y_obs = prob.y if not prob.pseudo else prob.curve.y - prob.y_ref
    yc = y_obs - y_obs.mean()
    tss = float(yc @ yc)
    ll = S.iid_loglik(max(rss, 1e-300), n)
    mb, _ = prob.bin_model(core.fn(), core.theta, jac=False)
    yb = S.observed_bin_means(prob)
    rb = yb - mb
    ybc = yb - yb.mean()
    r2b = 1.0 - float(rb @ rb) / float(ybc @ ybc) if float(ybc @ ybc) > 0 else float("nan")
    nic = f.noise_ic or f.noise
    ll_ac = S.gls_loglik(prob, f.chi2_gls, nic)
    neff = max(nic.effective_n(n), 2.0)
    se_method = ("GLS" if f.estimator == "gls" else "sandwich") + " covariance under white+AR(1) noise"
    if f.robust:
        se_method += ", Huber pseudo-observations"
    return spec.result_type(
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
        n_masked=prob.curve.n_masked,
        step_range=(float(prob.s[0]), float(prob.s[-1])),
        diagnostics=residual_diagnostics(f),
        theta=tuple(float(v) for v in core.theta),
        y_ref=prob.y_ref,
        mean=core.fn(),
        model_consts=MappingProxyType(dict(core.consts)),
        at_bound=MappingProxyType(at_bound),
        hit_bound=tuple(hit),
    )


def result_from_core(
    problem: S.Problem,
    core: S.Core,
    noise: NoiseModel,
    *,
    estimator: str = "gls",
    confidence: float = 0.95,
    robust: bool = False,
) -> FitResult:
    """The result of a model fitted elsewhere (no refit), e.g. by the knee test: its
    covariance under ``noise``, the heavy-tail diagnostic of its raw residuals."""
    raw = S.observed_residuals(problem, core)
    kurt = S.excess_kurtosis(np.diff(raw))
    cov, chi2, scale = S.covariance(problem, core, noise, estimator)
    f = S.Fitted(
        problem, core, noise, cov, chi2, scale, robust, kurt > S.heavy_tail_threshold(problem.n), kurt, raw, estimator
    )
    return fit_result(f, confidence)


def model_comparison(fits: dict[str, FitResult], noise: NoiseModel) -> ModelComparison:
    """Tabulate fits of one curve on one likelihood: criteria, deltas to the best, the best by ``aic_ac``/``bic_ac``."""
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


def residual_diagnostics(f: S.Fitted) -> ResidualDiagnostics:
    """Residual checks of an estimated model (raw log-loss residuals, noise model, reduced chi-square)."""
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
