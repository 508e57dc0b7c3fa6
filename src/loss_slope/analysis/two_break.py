"""Two breaks or one?  The whole-curve test behind the per-run H1 decision.

H1 says: after a burn-in (one break, the knee) the loss follows one power law.
Its alternative is a second break after the first.  :func:`two_break_test`
compares the two directly on the whole curve, on one likelihood:

* null: a power law with one break, floor and transient shift (``two_power``,
  the knee detector's alternative model);
* alternative: the same with two breaks (``three_power``), the second at least
  a factor 2 after the first.

Both are fitted by GLS on log-spaced bin means under the white + AR(1) noise
model (with a smooth noise scale where the curve shows one) estimated from the
residuals of the two-break fit, so that an unmodelled break does not pass for
low-frequency noise.  The statistic is the misfit-scaled likelihood ratio, as in
the knee test.

Two constraints keep the null from hiding a knee in its transient:

* the shift of each model is at most :data:`SHIFT_CAP` times its first break step
  (a transient that outlasts the burn-in would bend the segment the hypothesis is
  about);
* the break locations are searched globally (a grid of linear least-squares fits
  in log-log, then free fits from the best cells), because the profile from one
  start misses the second break when the first one sits in a plateau.

A second break counts only when the statistic exceeds the threshold *and* the
fitted shape is a knee followed by a break: the first break steepens the curve
(the end of a burn-in is the loss starting to fall) and both change the exponent
by at least :data:`MIN_BREAK_CHANGE`.  Two breaks that flatten and then steepen
a plateau are the burn-in's own shape, not a departure from one power law after
it.  The threshold was set on known-truth curves without a second break
(``bench/bench_h1_shape.py``; see docs/analysis.md, "Per-run H1 decision").
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from . import models as M, solver as S
from .data import DEFAULT_BIN_DECADES, min_points_for, prepare_curve
from .exceptions import NotEnoughPoints
from .fit_check import check_fit
from .results import TwoBreakTest
from .search import REML_SLACK, LrtFit, best_local_minima, fit_lrt

__all__ = ["TwoBreakTest", "two_break_test", "TWO_BREAK_THRESHOLD", "MIN_BREAK_CHANGE", "SHIFT_CAP"]

NAN = float("nan")

#: Threshold on the scaled LR statistic (two breaks vs one); its false-positive
#: rate on known-truth curves with one knee (or none) and one power law is 4 %
#: (docs/benchmarks.md, "H1 per run").
TWO_BREAK_THRESHOLD = 4.0
#: The first break must steepen the curve, and the second change its exponent, by at least this much.
MIN_BREAK_CHANGE = 0.15
#: A model's transient shift is at most this x its first break step.
SHIFT_CAP = 0.5
#: Grid of break positions (per axis) for the linear global search.
GRID = 24
#: Points of the profile of the extra break around the null's knee.
PROFILE_GRID = 9


def _not_tested(reason: str, threshold: float, min_change: float) -> TwoBreakTest:
    return TwoBreakTest(False, NAN, threshold, min_change, (NAN, NAN), (NAN, NAN, NAN), NAN, reason)


def _hinge(x: np.ndarray, xk: float) -> np.ndarray:
    return M.KNEE_WIDTH * np.logaddexp(0.0, (x - xk) / M.KNEE_WIDTH)


def _grid_starts(prob: S.Problem, wh: S.Whitener, consts: dict, shifts, *, two: bool, n_best: int = 3):
    """Starts from the best break positions of a linear fit in log-log.

    With the floor at 0 and the shift held, the broken power law is linear in
    (log amplitude, exponent, exponent changes); every grid cell (one or two
    breaks) is one small least-squares solve.
    """
    cands = []
    yw = wh(prob.yb)
    for t0 in shifts:
        x = np.log(prob.sb + t0)
        lo = math.log(consts["s_lo"] + t0) + M.KNEE_DELTA
        hi = math.log(consts["s_hi"] + t0)
        if not hi > lo:
            continue
        xs = np.linspace(lo, hi, GRID)
        hinges = [_hinge(x, xk) for xk in xs]
        base = np.column_stack((np.ones_like(x), -x))
        pairs = (
            [(i, j) for i in range(GRID) for j in range(i + 1, GRID) if xs[j] - xs[i] >= M.KNEE2_DELTA - 1e-9]
            if two
            else [(i, None) for i in range(GRID)]
        )
        for i, j in pairs:
            cols = [base, -hinges[i][:, None]] + ([-hinges[j][:, None]] if j is not None else [])
            Xw = wh(np.column_stack(cols))
            beta, *_ = np.linalg.lstsq(Xw, yw, rcond=None)
            r = yw - Xw @ beta
            cands.append((float(r @ r), t0, xs[i], None if j is None else xs[j], beta))
    cands.sort(key=lambda c: c[0])
    out = []
    for _, t0, x1, x2, beta in cands[:n_best]:
        la, a1, a2 = beta[0], beta[1], beta[1] + beta[2]
        if two:
            f, g = M.three_power_positions(x1, x2, t0, consts)
            out.append(np.array([la, a1, a2, a2 + beta[3], f, g, 0.0, t0]))
        else:
            lo = math.log(consts["s_lo"] + t0) + M.KNEE_DELTA
            hi = math.log(consts["s_hi"] + t0)
            out.append(np.array([la, a1, a2, (x1 - lo) / (hi - lo), 0.0, t0]))
    return out


def _profile_starts(prob: S.Problem, null: S.Core, wh: S.Whitener, consts: dict, box, n_best: int = 2):
    """Starts with the null's knee as the first break (second swept after it) and as the second."""
    lb, ub = box
    la, a1, a2, f, c, t0 = null.theta
    xk, _, _ = M.knee_log_tau(f, t0, consts["s_lo"], consts["s_hi"])
    lo = math.log(consts["s_lo"] + t0) + M.KNEE_DELTA
    hi = math.log(consts["s_hi"] + t0)
    held = np.ones(8, dtype=bool)
    held[4] = held[5] = False
    out = []
    for after in (True, False):
        if after:
            xs = np.linspace(xk + M.KNEE2_DELTA, hi, PROFILE_GRID)
            pos = [M.three_power_positions(xk, x2, t0, consts) for x2 in xs]
            th = np.array([la, a1, a2, a2, 0.0, 0.0, c, t0])
        else:
            xs = np.linspace(lo, xk - M.KNEE2_DELTA, PROFILE_GRID)
            pos = [M.three_power_positions(x1, xk, t0, consts) for x1 in xs]
            th = np.array([la, a1, a1, a2, 0.0, 0.0, c, t0])
        if not xs[-1] > xs[0]:
            continue
        prof = []
        for fg in pos:
            th = th.copy()
            th[4], th[5] = fg
            core = S.nls(
                prob, M.THREE_POWER, np.clip(th, lb, ub), held, lb, ub, wh, consts=consts, max_iter=15, ftol=1e-4
            )
            prof.append(core)
            th = core.theta
        out += best_local_minima(prof, n_best)
    return out


def _first_break(spec: M.ModelSpec, theta: np.ndarray, consts: dict) -> float:
    if spec is M.TWO_POWER:
        return M.knee_step_of(theta, consts)
    return M.three_power_steps(theta, consts)[0]


def _bounds(prob: S.Problem, spec: M.ModelSpec, consts: dict):
    if spec is M.TWO_POWER:
        return M.two_power_bounds(prob, True, True, consts)
    return M.three_power_bounds(prob, consts)


def _fit(prob: S.Problem, spec: M.ModelSpec, starts, wh: S.Whitener, consts: dict) -> S.Core:
    """Best fit over ``starts`` with the shift at most SHIFT_CAP x the first break step.

    The cap depends on the fitted break, so it is applied by refitting with the
    cap of the previous fit until the fit respects it (three rounds at most).
    """
    saved = prob.shift_cap
    try:
        prob.shift_cap = None
        best = None
        for _ in range(4):
            lb, ub, free = _bounds(prob, spec, consts)
            cands = ([best.theta] if best is not None else []) + list(starts)
            best = None
            for th in cands:
                core = S.nls(prob, spec, np.clip(np.asarray(th, dtype=float), lb, ub), free, lb, ub, wh, consts=consts)
                if best is None or core.chi2 < best.chi2:
                    best = core
            shift = best.theta[-1]
            cap = SHIFT_CAP * max(_first_break(spec, best.theta, consts), 1.0)
            if shift <= cap * (1 + 1e-6):
                break
            prob.shift_cap = cap
        best.consts = dict(consts)
        return best
    finally:
        prob.shift_cap = saved


def _from_knee_fit(fit: LrtFit, threshold: float, min_change: float) -> TwoBreakTest:
    prob = fit.problem
    try:
        consts = M.knee_consts(prob)
        box3 = M.three_power_bounds(prob, consts)[:2]
    except NotEnoughPoints as exc:
        return _not_tested(f"too short for two breaks: {exc}", threshold, min_change)
    lb2, ub2, _ = M.two_power_bounds(prob, True, True, consts)
    wh_ols = S.whitener(prob, "ols", None)
    shifts = sorted({1.0, float(np.clip(fit.alt.theta[5], lb2[5], ub2[5]))})
    null0 = _fit(
        prob, M.TWO_POWER, [fit.alt.theta, *_grid_starts(prob, wh_ols, consts, shifts, two=False)], wh_ols, consts
    )
    starts = _profile_starts(prob, null0, wh_ols, consts, box3) + _grid_starts(prob, wh_ols, consts, shifts, two=True)
    alt0 = _fit(prob, M.THREE_POWER, [*starts, M.THREE_POWER.starts(null0.theta)], wh_ols, consts)
    # noise model from the residuals of the flexible (two-break) fit
    sig = 1.0 if prob.row_scale is None else prob.row_scale
    std = S.raw_residuals(prob, alt0) / sig
    noise = S.noise_from_fit(prob, alt0, std, slack=REML_SLACK)
    wh = S.whitener(prob, "gls", noise)
    null = _fit(prob, M.TWO_POWER, [null0.theta, fit.alt.theta], wh, consts)
    alt = _fit(prob, M.THREE_POWER, [alt0.theta, M.THREE_POWER.starts(null.theta)], wh, consts)
    if alt.chi2 > null.chi2:  # poor local optimum: search again from the GLS null
        again = _fit(prob, M.THREE_POWER, [*_profile_starts(prob, null, wh, consts, box3), alt.theta], wh, consts)
        alt = again if again.chi2 < alt.chi2 else alt
    scale = max(1.0, alt.chi2 / max(prob.m - alt.k, 1))
    stat = max(null.chi2 - alt.chi2, 0.0) / scale
    k1, k2 = M.three_power_steps(alt.theta, consts)
    a = tuple(float(v) for v in alt.theta[1:4])
    knee = M.knee_step_of(null.theta, consts)
    shape_ok = a[1] - a[0] >= min_change and abs(a[2] - a[1]) >= min_change
    result = TwoBreakTest(
        False,
        float(stat),
        threshold,
        min_change,
        (k1, k2),
        a,
        knee,
        "",
        _theta=alt.theta.copy(),
        _mean=alt.fn(),
        _y_ref=prob.y_ref,
    )
    chk = check_fit(result, prob.s, np.exp(prob.y + prob.y_ref))
    found = bool(stat > threshold and shape_ok and chk.ok)
    if stat > threshold and shape_ok and not chk.ok:
        reason = f"the two-break fit (statistic {stat:.3g}) is a failed fit: {chk.reason}; no second break"
    elif found:
        reason = (
            f"two breaks (steps {k1:.4g} and {k2:.4g}, exponents {a[0]:.3g} -> {a[1]:.3g} -> {a[2]:.3g}) fit "
            f"better than a knee and one power law (statistic {stat:.3g} > {threshold:g})"
        )
    elif stat > threshold:
        reason = (
            f"the best two-break fit (exponents {a[0]:.3g} -> {a[1]:.3g} -> {a[2]:.3g}, statistic {stat:.3g}) "
            f"is not a knee and a second break: the first must steepen by >= {min_change:g} and the second "
            f"change the exponent by >= {min_change:g}; no second break"
        )
    else:
        reason = f"no second break (statistic {stat:.3g} <= {threshold:g})"
    return replace(result, found=found, reason=reason)


def two_break_test(
    steps,
    loss,
    *,
    threshold: float | None = None,
    min_change: float = MIN_BREAK_CHANGE,
    bin_decades: float = DEFAULT_BIN_DECADES,
    knee_fit: LrtFit | None = None,
) -> TwoBreakTest:
    """Does the curve have a second break after its knee?

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
        The whole curve (0-based optimizer steps or another increasing time axis;
        loss > 0, any unit).
    threshold : float, optional
        On the scaled LR statistic (default :data:`TWO_BREAK_THRESHOLD`).
    min_change : float
        Least exponent change at each break for two breaks to count.
    bin_decades : float
    knee_fit : optional
        The default knee detector's fit of the same curve (``analyze_curve``
        reuses it); fitted here when not given.

    Returns
    -------
    TwoBreakTest
    """
    thr = TWO_BREAK_THRESHOLD if threshold is None else float(threshold)
    if knee_fit is None:
        curve = prepare_curve(steps, loss, min_points=min_points_for(8), nonfinite="drop")
        prob = S.Problem(curve, bin_decades=bin_decades)
        if prob.m < 16:
            raise NotEnoughPoints(16, prob.m, "log-spaced bins")
        knee_fit = fit_lrt(prob)
    return _from_knee_fit(knee_fit, thr, float(min_change))
