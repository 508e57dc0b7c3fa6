"""One model estimated on one curve: the procedures behind the public fits.

:func:`curve_problem` validates and bins a curve; :func:`power_fit`,
:func:`two_power_fit` and :func:`exponential_fit` estimate one model on it end to
end -- box and starting values from its :class:`~loss_slope.analysis.models.ModelSpec`
(for the broken power law, starts from the knee-position profile of
:mod:`loss_slope.analysis.search`), then :func:`loss_slope.analysis.solver.run_fit`
(OLS pilot, noise model, GLS, Huber fallback, covariance) -- and return the
solver's :class:`~loss_slope.analysis.solver.Fitted`, from which
:func:`loss_slope.analysis.build.fit_result` makes the result.
"""

from __future__ import annotations

from . import models as M, solver as S
from .data import min_points_for, prepare_curve
from .exceptions import InvalidCurve, NotEnoughPoints
from .noise import NoiseModel
from .search import fit_two_power_core, profile_starts

__all__ = ["curve_problem", "power_fit", "two_power_fit", "exponential_fit"]


def curve_problem(steps, loss, n_params: int, nonfinite: str, bin_decades: float) -> S.Problem:
    """The validated, binned curve for a model of ``n_params`` parameters (enough points and bins)."""
    curve = prepare_curve(steps, loss, min_points=min_points_for(n_params), nonfinite=nonfinite)
    prob = S.Problem(curve, bin_decades=bin_decades)
    if prob.m < n_params + 2:
        raise NotEnoughPoints(n_params + 2, prob.m, "log-spaced bins (use a smaller bin_decades)")
    return prob


def power_fit(prob: S.Problem, *, floor, shift, estimator: str, noise: NoiseModel | None, robust: str) -> S.Fitted:
    """The power law (``floor`` and ``shift`` as for :func:`loss_slope.analysis.fits.fit_power_law`)."""
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


def two_power_fit(
    prob: S.Problem,
    *,
    floor,
    shift,
    knee_range,
    estimator: str,
    noise: NoiseModel | None,
    robust: str,
    null: S.Fitted | None = None,
) -> S.Fitted:
    """The broken power law: OLS starts from the knee-position profile around the
    power law ``null`` (fitted by OLS here when not given), refitted from them under
    the noise model for GLS."""
    consts = M.knee_consts(prob, knee_range)
    if null is None:
        null = power_fit(prob, floor=floor, shift=shift, estimator="ols", noise=noise, robust="never")
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


def exponential_fit(prob: S.Problem, *, estimator: str, noise: NoiseModel | None, robust: str) -> S.Fitted:
    """The exponential; exact raw-point OLS for ``"ols"`` on constant-scale noise."""
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
