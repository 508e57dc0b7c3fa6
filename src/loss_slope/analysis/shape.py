"""Is the curve after its knee one power law?  A test of shape, not of noise.

R² of per-step log loss mixes two things: how well the mean model fits and how
noisy the batches are.  An exact power law with realistic batch noise fails
"R² ≥ 0.98"; a clearly broken power law can pass it.  :func:`single_power_law`
decides the shape question with tests whose false-positive rate does not depend
on the noise level:

1. **No further break.**  The calibrated broken-power likelihood-ratio test (the
   knee detector's test: floor + shift power law against a broken power law under
   white + AR(1) noise with a smooth noise scale) finds no break in the segment
   after the knee.
2. **No earlier break.**  When a knee was found, the same test finds none before
   it either.  Otherwise the detected knee is the second of two breaks, and the
   curve after the first one (the real end of the burn-in) is not one power law.
3. **No second break on the whole curve.**  A power law with two breaks does not
   fit the whole curve better than one with a single break (the knee):
   :func:`loss_slope.analysis.two_break.two_break_test`, which fits the knee and
   the second break jointly and so keeps its power when the knee detector finds
   only one of the two breaks.
4. **No drift of the exponent.**  The exponents of the first and the second half
   of the segment (halves in log time; floor and shift held at the segment's fit,
   estimated jointly by GLS under the knee test's noise model) agree: the interval
   of their difference covers zero, or the difference is below ``drift_tolerance``.

The decision is ``True`` when all hold, ``False`` when one fails, and ``None``
(with the reason) when the segment is too short to test or the segment's power-law
fit visibly misses the data (:func:`check_fit`): a failed fit is neither "a power
law" nor "not a power law".

The largest residual of the segment's fit against the log-binned mean, and the
protocol's literal criterion (R² of a straight line in log loss against log step on the
same segment), are reported beside the decision.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import stdtrit

from . import solver as S
from .data import DEFAULT_BIN_DECADES, min_points_for, prepare_curve
from .exceptions import AnalysisError, NotEnoughPoints
from .fit_check import MISFIT_DECADES, check_fit
from .fits import fit_power_law
from .results import FitCheck, FitResult, ShapeTest, TwoBreakTest
from .search import LRT_THRESHOLD, fit_lrt
from .two_break import MIN_BREAK_CHANGE

__all__ = ["FitCheck", "ShapeTest", "check_fit", "single_power_law", "literal_r2", "MISFIT_DECADES"]

NAN = float("nan")

#: After a knee at step k the transient is over: the segment's shift is at most this x k.
SHIFT_CAP = 0.5
#: A real knee is rounded: the further-break and drift tests start at this x the knee
#: step (0.18 decades later), so that the end of the knee's rounding is not taken for a
#: further break.  The power-law fit, its misfit check and the literal R² use the whole
#: segment from the knee.
KNEE_ROUNDING = 1.5
#: Fewest log-spaced bins a segment needs for the break test.
MIN_BINS = 12


def literal_r2(steps, loss) -> float:
    """R² of a straight line in log loss against log(step + 1) over every point.

    The literal criterion of the study's protocol ("R² ≥ 0.98 in log-log"); it
    measures batch noise as much as shape, so it is reported, not decided on.
    """
    x = np.log(np.asarray(steps, dtype=float) + 1.0)
    y = np.log(np.asarray(loss, dtype=float))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return NAN
    xc, yc = x - x.mean(), y - y.mean()
    syy = float(yc @ yc)
    if syy == 0:
        return NAN
    return float((xc @ yc) ** 2 / (float(xc @ xc) * syy))


def _problem(steps, loss, bin_decades, shift_cap=None):
    curve = prepare_curve(steps, loss, min_points=min_points_for(6), nonfinite="drop")
    prob = S.Problem(curve, bin_decades=bin_decades)
    prob.shift_cap = shift_cap
    if prob.m < MIN_BINS:
        raise NotEnoughPoints(MIN_BINS, prob.m, "log-spaced bins")
    return prob


def _drift(lrt, mid: float, confidence: float) -> tuple[float, float, tuple[float, float]]:
    """Exponent drift between the halves, as a GLS score regression on the null fit.

    Around the segment's power-law fit (floor and shift held), the bin residuals are
    regressed on the Jacobian columns of log amplitude and exponent plus the exponent
    column restricted to the second half, under the knee test's noise model: the
    last coefficient is the change of exponent at ``mid`` (to first order, the
    difference of the exponents fitted to the two halves).  Returns the first-half
    exponent, the second-half exponent and the interval of their difference.
    """
    prob, null = lrt.problem, lrt.null
    mb, J = prob.bin_model(null.fn(), null.theta)
    H = (prob.sb >= mid).astype(float)
    X = np.column_stack((J[:, 0], J[:, 1], J[:, 1] * H))
    wh = S.whitener(prob, "gls", lrt.noise)
    Xw, rw = wh(X), wh(prob.yb - mb)
    beta, *_ = np.linalg.lstsq(Xw, rw, rcond=None)
    u = rw - Xw @ beta
    dof = max(prob.m - null.k - 1, 1)
    scale = max(1.0, float(u @ u) / dof)
    cov = np.linalg.pinv(Xw.T @ Xw) * scale
    se = math.sqrt(max(float(cov[2, 2]), 0.0))
    df = max(lrt.noise.effective_n(prob.n) - null.k - 1, 2.0)
    q = float(stdtrit(df, 0.5 + confidence / 2.0))
    a1 = float(null.theta[1] + beta[1])
    d = float(beta[2])
    return a1, a1 + d, (d - q * se, d + q * se)


def single_power_law(
    steps,
    loss,
    *,
    knee_step: float | None = None,
    threshold: float | None = None,
    drift_tolerance: float = 0.1,
    confidence: float = 0.95,
    bin_decades: float = DEFAULT_BIN_DECADES,
    segment_fit: FitResult | None = None,
    two_break: TwoBreakTest | None = None,
    two_break_error: str | None = None,
    min_change: float = MIN_BREAK_CHANGE,
) -> ShapeTest:
    """Decide whether the curve from ``knee_step`` on is one power law.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
        The whole curve (0-based optimizer steps or another increasing time axis;
        loss > 0, any unit).
    knee_step : float, optional
        End of the burn-in (the detected knee); ``None`` tests the whole curve.
    threshold : float, optional
        Break-test threshold (default :data:`loss_slope.analysis.search.LRT_THRESHOLD`).
    drift_tolerance : float
        Exponent drift below this is not a drift, whatever its interval.
    confidence : float
        Level of the drift interval.
    bin_decades : float
    segment_fit : FitResult, optional
        The power-law fit of the segment (floor + shift), for the misfit check;
        fitted here when not given.
    min_change : float
        A break counts only when it changes the exponent by at least this much: the
        rounding of a smooth knee is not a further break (see
        :data:`loss_slope.analysis.two_break.MIN_BREAK_CHANGE`).
    two_break : TwoBreakTest, optional
        The whole-curve two-break test; a second break found there makes the
        decision ``False``.  Not run here (it belongs to the knee it was fitted
        with, the default detector's).
    two_break_error : str, optional
        Why the whole-curve two-break test could not be fitted, when it was tried and
        failed: a curve that passes every other test is then undecided, not one power
        law (the test that could not be made is not a test passed).

    Returns
    -------
    ShapeTest
    """
    thr = LRT_THRESHOLD if threshold is None else float(threshold)
    s = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    fin = np.isfinite(y) & (y > 0)
    s, y = s[fin], y[fin]
    start = float(s[0]) if knee_step is None or not math.isfinite(knee_step) else float(knee_step)
    seg = s >= start
    ss, ys = s[seg], y[seg]
    lit = literal_r2(ss, ys)
    empty = dict(
        segment_start=start,
        further_break_statistic=NAN,
        further_break_step=NAN,
        earlier_break_statistic=NAN,
        threshold=thr,
        exponent_first_half=NAN,
        exponent_second_half=NAN,
        drift=NAN,
        drift_ci=(NAN, NAN),
        max_binned_residual=NAN,
        literal_r2=lit,
        two_break=two_break,
    )
    try:
        fit = segment_fit if segment_fit is not None else fit_power_law(ss, ys, bin_decades=bin_decades)
    except AnalysisError as exc:
        if two_break is not None and two_break.found:
            return ShapeTest(
                False,
                f"{two_break.reason}; the post-knee power law could not be fitted: {exc}",
                fit_ok=False,
                fit_reason=str(exc),
                **empty,
            )
        return ShapeTest(
            None, f"the post-knee power law could not be fitted: {exc}", fit_ok=False, fit_reason=str(exc), **empty
        )
    chk = check_fit(fit, ss, ys)
    empty["max_binned_residual"] = chk.max_binned_residual
    if not chk.ok:
        # a failed fit decides nothing; a second break found by a fit that does follow the data does
        if two_break is not None and two_break.found:
            return ShapeTest(
                False,
                f"{two_break.reason}; the post-knee power law is a failed fit: {chk.reason}",
                fit_ok=False,
                fit_reason=chk.reason,
                **empty,
            )
        return ShapeTest(None, f"failed fit: {chk.reason}", fit_ok=False, fit_reason=chk.reason, **empty)
    has_knee = knee_step is not None and math.isfinite(knee_step)
    # the break and drift tests start once the knee's own rounding is over
    tested = ss >= (start * KNEE_ROUNDING if has_knee else start)
    ts, ty = ss[tested], ys[tested]
    try:
        cap = SHIFT_CAP * max(start, 1.0) if has_knee else None
        lrt = fit_lrt(_problem(ts, ty, bin_decades, cap))
    except NotEnoughPoints as exc:
        if two_break is not None and two_break.found:
            return ShapeTest(False, two_break.reason, fit_ok=True, fit_reason=None, **empty)
        return ShapeTest(
            None, f"the post-knee segment is too short to test: {exc}", fit_ok=True, fit_reason=None, **empty
        )
    empty["further_break_statistic"] = float(lrt.stat)
    empty["further_break_step"] = float(lrt.knee_step)
    reasons = []
    change = abs(float(lrt.alt.theta[2] - lrt.alt.theta[1]))
    if lrt.stat > thr and change >= min_change:
        reasons.append(
            f"a further break near step {empty['further_break_step']:.4g} (statistic {lrt.stat:.3g} > {thr:g}, "
            f"exponent {lrt.alt.theta[1]:.3g} -> {lrt.alt.theta[2]:.3g})"
        )
    if has_knee:
        pre = s < start
        try:
            pre_fit = fit_lrt(_problem(s[pre], y[pre], bin_decades))
            empty["earlier_break_statistic"] = float(pre_fit.stat)
            if pre_fit.stat > thr and abs(float(pre_fit.alt.theta[2] - pre_fit.alt.theta[1])) >= min_change:
                k0 = float(pre_fit.knee_step)
                reasons.append(
                    f"an earlier break near step {k0:.4g} (statistic {pre_fit.stat:.3g} > {thr:g}): "
                    f"the knee at step {start:.4g} is a second break"
                )
        except NotEnoughPoints:
            pass  # a burn-in too short to hold a break of its own
    # drift of the exponent between the halves of the segment in log time
    mid = math.sqrt((ts[0] + 1.0) * (ts[-1] + 1.0)) - 1.0
    a1, a2, ci = _drift(lrt, mid, confidence)
    d = a2 - a1
    empty.update(exponent_first_half=a1, exponent_second_half=a2, drift=d, drift_ci=ci)
    if (ci[0] > 0 or ci[1] < 0) and abs(d) >= drift_tolerance:
        reasons.append(
            f"the exponent drifts from {a1:.3g} to {a2:.3g} between the halves "
            f"(difference {d:+.3g}, interval [{ci[0]:.3g}, {ci[1]:.3g}])"
        )
    if two_break is not None and two_break.found:
        reasons.append(two_break.reason)
    if reasons:
        return ShapeTest(False, "; ".join(reasons), fit_ok=True, fit_reason=None, **empty)
    passed = f"no further break (statistic {lrt.stat:.3g} <= {thr:g}) and no drift of the exponent"
    if two_break_error is not None:
        return ShapeTest(
            None,
            f"{passed}, but the two-break test on the whole curve could not be fitted: {two_break_error}",
            fit_ok=True,
            fit_reason=None,
            **empty,
        )
    whole = (
        f", and {two_break.reason} on the whole curve"
        if two_break is not None and math.isfinite(two_break.statistic)
        else ""
    )
    return ShapeTest(
        True,
        f"{passed}{whole}",
        fit_ok=True,
        fit_reason=None,
        **empty,
    )
