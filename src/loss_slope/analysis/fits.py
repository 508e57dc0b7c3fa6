"""Power-law, exponential and broken power-law fits of a loss curve.

All models are fitted to **log loss** (multiplicative noise becomes additive).
The public fit functions are here; each runs a model's estimation procedure
(:mod:`loss_slope.analysis.estimation`) and builds its result
(:mod:`loss_slope.analysis.build`).

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

import numpy as np

from . import models as M, solver as S
from .build import fit_result, model_comparison, result_from_core
from .data import DEFAULT_BIN_DECADES
from .estimation import curve_problem, exponential_fit, power_fit, two_power_fit
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
from .search import LrtFit, fit_lrt

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
    "comparison_from_lrt",
]


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
    prob = curve_problem(steps, loss, 4, nonfinite, bin_decades)
    f = power_fit(prob, floor=floor, shift=shift, estimator=estimator, noise=noise, robust=robust)
    if f.estimator == "gls" and not f.robust:
        # profile-likelihood interval for the exponent (honest when the floor or
        # shift sits on its bound)
        lb, ub, _, _ = M.power_bounds(prob, floor, shift)
        q = S.t_quantile(confidence, f)
        k_free = int(np.sum(f.core.free[:1]))  # position of the exponent among free params
        se = math.sqrt(max(f.cov[k_free, k_free], 0.0))
        wh = S.whitener(prob, "gls", f.noise)
        f.profile[1] = S.profile_interval(prob, f.core, wh, lb, ub, index=1, crit=q * q * f.scale, se_guess=se)
    return fit_result(f, confidence)


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
    prob = curve_problem(steps, loss, 2, nonfinite, bin_decades)
    f = exponential_fit(prob, estimator=estimator, noise=noise, robust=robust)
    return fit_result(f, confidence)


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
    prob = curve_problem(steps, loss, 6, nonfinite, bin_decades)
    f = two_power_fit(
        prob, floor=floor, shift=shift, knee_range=knee_range, estimator=estimator, noise=noise, robust=robust
    )
    return fit_result(f, confidence)


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
    prob = curve_problem(steps, loss, 6, nonfinite, bin_decades)
    if floor is True and shift is True and estimator == "gls" and noise is None:
        return comparison_from_lrt(fit_lrt(prob), confidence=confidence)
    null = power_fit(prob, floor=floor, shift=shift, estimator="ols", noise=noise, robust="never")
    two = two_power_fit(
        prob, floor=floor, shift=shift, knee_range=None, estimator="ols", noise=noise, robust="never", null=null
    )
    if noise is None:
        noise = two.noise
    fits = {
        "exponential": fit_result(exponential_fit(prob, estimator=estimator, noise=noise, robust="auto"), confidence),
        "power": fit_result(
            power_fit(prob, floor=floor, shift=shift, estimator=estimator, noise=noise, robust="auto"), confidence
        ),
        "two_power": fit_result(
            two_power_fit(
                prob,
                floor=floor,
                shift=shift,
                knee_range=None,
                estimator=estimator,
                noise=noise,
                robust="auto",
                null=null,
            ),
            confidence,
        ),
    }
    return model_comparison(fits, noise)


def comparison_from_lrt(lrt: LrtFit, *, confidence: float = 0.95) -> ModelComparison:
    """The three-model comparison on the knee test's likelihood.

    ``lrt`` is the knee test's fit (:func:`loss_slope.analysis.search.fit_lrt`): its
    problem (bin means, noise scale, Huber pseudo-observations when used), its noise
    model and its power-law and broken-power-law fits.  The exponential is fitted to
    the same problem by GLS under the same noise model.
    """
    pw = result_from_core(lrt.problem, lrt.null, lrt.noise, confidence=confidence, robust=lrt.robust)
    tw = result_from_core(lrt.problem, lrt.alt, lrt.noise, confidence=confidence, robust=lrt.robust)
    f = exponential_fit(lrt.problem, estimator="gls", noise=lrt.noise, robust="never")
    f.robust = lrt.robust
    ex = fit_result(f, confidence)
    return model_comparison({"exponential": ex, "power": pw, "two_power": tw}, lrt.noise)
