"""The models: one specification per mean model of log loss.

Each :class:`ModelSpec` bundles what defines a model -- the mean function with its
analytic Jacobian, the names of its parameters (normalised and as reported), its
box, its starting values, the conversion of a fitted parameter vector to the
reported estimates and the result type of its fit (from
:mod:`loss_slope.analysis.results`).  The solver (:mod:`loss_slope.analysis.solver`)
knows nothing about any model but its spec.

All models are evaluated in *normalised* log units: the caller subtracts a
reference ``y_ref`` from log loss, so amplitudes and floors are relative to
``exp(y_ref)``; this makes every fit exactly invariant to the loss unit (nats vs
bits only shifts ``y_ref``).

Parameter vectors
-----------------
power      : [log_amp, exponent, floor, shift]
two_power  : [log_amp, exponent_before, exponent_after, knee_pos, floor, shift]
             where knee_pos in [0, 1] places the knee (see knee_log_tau)
three_power: [log_amp, exponent_1, exponent_2, exponent_3, knee_pos, knee2_pos, floor, shift]
             two breaks; knee2_pos in [0, 1] places the second break between
             the first (plus KNEE2_DELTA) and the end of the search range
exponential: [log_amp, rate]           (rate per step)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .exceptions import NotEnoughPoints
from .results import Estimate, ExponentialFit, FitResult, PowerLawFit, TwoPowerLawFit
from .solver import wls

#: Rounding of the two-power knee in ln(tau) units.  A little smoothing keeps the
#: objective differentiable on binned data; the softplus is symmetric, so a sharp
#: knee is located without bias.
KNEE_WIDTH = 0.03

#: Minimum distance of the knee after the transient, in ln(tau) (0.11 decades).
KNEE_DELTA = 0.25

#: Least distance between the two breaks of ``three_power``, in ln(tau) (a factor 2).
KNEE2_DELTA = float(np.log(2.0))

#: Box for power-law exponents: loss curves do not fall faster than t^-6.
EXPONENT_BOUNDS = (-1.0, 6.0)

#: Default search range of the knee: from this step ...
KNEE_MIN_STEP = 10.0
#: ... to the last step divided by 10**KNEE_TAIL_DECADES (>= 0.3 decade of tail).
KNEE_TAIL_DECADES = 0.3


def _log_floor(c: float) -> float:
    return np.log(c) if c > 0 else -np.inf


def power(theta: np.ndarray, s: np.ndarray, jac: bool = True):
    """log(c + exp(la) * (s + t0)^-alpha) and its Jacobian (n, 4)."""
    la, a, c, t0 = theta
    tau = s + t0
    x = np.log(tau)
    lp = la - a * x
    m = np.logaddexp(_log_floor(c), lp)
    if not jac:
        return m, None
    g = np.exp(lp - m)
    inv = np.exp(-m)
    J = np.empty((s.size, 4))
    J[:, 0] = g
    J[:, 1] = -x * g
    J[:, 2] = inv
    J[:, 3] = -a * g / tau
    return m, J


def knee_log_tau(f: float, t0: float, s_lo: float, s_hi: float, delta: float = KNEE_DELTA):
    """ln(tau_k) of the knee and its derivatives (d/df, d/dt0).

    The knee position is parametrised by ``f`` in [0, 1] between
    ``ln(s_lo + t0) + delta`` and ``ln(s_hi + t0)``: a box constraint that keeps the
    knee at least ``delta`` (in ln tau) after the transient and inside the search range.
    """
    a = np.log(s_lo + t0) + delta
    b = np.log(s_hi + t0)
    xk = a + f * (b - a)
    d_f = b - a
    d_t0 = (1.0 - f) / (s_lo + t0) + f / (s_hi + t0)
    return xk, d_f, d_t0


def two_power(
    theta: np.ndarray,
    s: np.ndarray,
    jac: bool = True,
    *,
    s_lo: float,
    s_hi: float,
    delta: float = KNEE_DELTA,
    width: float = KNEE_WIDTH,
):
    """Broken power law with floor and shift; Jacobian (n, 6).

    theta = [log_amp, exponent_before, exponent_after, knee_pos, floor, shift].
    """
    la, a1, a2, f, c, t0 = theta
    tau = s + t0
    x = np.log(tau)
    xk, dxk_df, dxk_dt0 = knee_log_tau(f, t0, s_lo, s_hi, delta)
    u = (x - xk) / width
    h = width * np.logaddexp(0.0, u)
    d = a2 - a1
    lp = la - a1 * x - d * h
    m = np.logaddexp(_log_floor(c), lp)
    if not jac:
        return m, None
    sg = expit(u)
    g = np.exp(lp - m)
    inv = np.exp(-m)
    J = np.empty((s.size, 6))
    J[:, 0] = g
    J[:, 1] = (-x + h) * g
    J[:, 2] = -h * g
    J[:, 3] = d * sg * dxk_df * g
    J[:, 4] = inv
    J[:, 5] = (-a1 / tau - d * sg * (1.0 / tau - dxk_dt0)) * g
    return m, J


def two_knees_log_tau(f: float, g: float, t0: float, s_lo: float, s_hi: float):
    """ln(tau) of both breaks of ``three_power`` and their derivatives.

    The first break is placed by ``f`` in [0, 1] between ``ln(s_lo + t0) + KNEE_DELTA``
    and ``ln(s_hi + t0) - KNEE2_DELTA``; the second by ``g`` in [0, 1] between the
    first plus :data:`KNEE2_DELTA` and ``ln(s_hi + t0)``.  Returns
    ``(x1, x2, dx1_df, dx2_df, dx2_dg, dx1_dt0, dx2_dt0)``.
    """
    lo = np.log(s_lo + t0) + KNEE_DELTA
    hi = np.log(s_hi + t0)
    span1 = hi - KNEE2_DELTA - lo
    x1 = lo + f * span1
    span2 = hi - x1 - KNEE2_DELTA
    x2 = x1 + KNEE2_DELTA + g * span2
    dlo, dhi = 1.0 / (s_lo + t0), 1.0 / (s_hi + t0)
    dx1_df = span1
    dx1_dt0 = (1.0 - f) * dlo + f * dhi
    dx2_df = (1.0 - g) * dx1_df
    dx2_dg = span2
    dx2_dt0 = (1.0 - g) * dx1_dt0 + g * dhi
    return x1, x2, dx1_df, dx2_df, dx2_dg, dx1_dt0, dx2_dt0


def three_power(
    theta: np.ndarray,
    s: np.ndarray,
    jac: bool = True,
    *,
    s_lo: float,
    s_hi: float,
    width: float = KNEE_WIDTH,
):
    """Power law with two breaks, floor and shift; Jacobian (n, 8).

    theta = [log_amp, exponent_1, exponent_2, exponent_3, knee_pos, knee2_pos, floor, shift].
    """
    la, a1, a2, a3, f, g, c, t0 = theta
    tau = s + t0
    x = np.log(tau)
    x1, x2, dx1_df, dx2_df, dx2_dg, dx1_dt0, dx2_dt0 = two_knees_log_tau(f, g, t0, s_lo, s_hi)
    u1, u2 = (x - x1) / width, (x - x2) / width
    h1 = width * np.logaddexp(0.0, u1)
    h2 = width * np.logaddexp(0.0, u2)
    d1, d2 = a2 - a1, a3 - a2
    lp = la - a1 * x - d1 * h1 - d2 * h2
    m = np.logaddexp(_log_floor(c), lp)
    if not jac:
        return m, None
    sg1, sg2 = expit(u1), expit(u2)
    gm = np.exp(lp - m)
    J = np.empty((s.size, 8))
    J[:, 0] = gm
    J[:, 1] = (-x + h1) * gm
    J[:, 2] = (-h1 + h2) * gm
    J[:, 3] = -h2 * gm
    J[:, 4] = (d1 * sg1 * dx1_df + d2 * sg2 * dx2_df) * gm
    J[:, 5] = d2 * sg2 * dx2_dg * gm
    J[:, 6] = np.exp(-m)
    J[:, 7] = (-a1 / tau - d1 * sg1 * (1.0 / tau - dx1_dt0) - d2 * sg2 * (1.0 / tau - dx2_dt0)) * gm
    return m, J


def exponential(theta: np.ndarray, s: np.ndarray, jac: bool = True):
    """la - rate * s; Jacobian (n, 2)."""
    la, r = theta
    m = la - r * s
    if not jac:
        return m, None
    J = np.empty((s.size, 2))
    J[:, 0] = 1.0
    J[:, 1] = -s
    return m, J


# ---------------------------------------------------------------- boxes and starting values
# ``problem`` is a :class:`loss_slope.analysis.solver.Problem` (normalised bin means
# ``sb``/``yb``, raw steps ``s``, ``shift_bounds()`` and ``floor_max()``).
def power_bounds(problem, floor: bool, shift) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Bounds, free mask and fixed shift for the power model."""
    t_lo, t_hi = problem.shift_bounds()
    lb = np.array([-np.inf, EXPONENT_BOUNDS[0], 0.0, t_lo])
    ub = np.array([np.inf, EXPONENT_BOUNDS[1], problem.floor_max() if floor else 1.0, t_hi])
    free = np.array([True, True, bool(floor), shift is True])
    t_fixed = 1.0 if shift is False else (float(shift) if shift is not True else 1.0)
    return lb, ub, free, t_fixed


def power_starts(problem, floor: bool, shift, t_fixed: float) -> list[np.ndarray]:
    """A few starting points for the power model (profile over the shift)."""
    sb, yb = problem.sb, problem.yb
    if shift is True:
        t_lo, t_hi = problem.shift_bounds()
        grid = np.unique(np.concatenate(([max(t_lo, 0.1), 1.0], np.geomspace(max(t_lo, 1.0), t_hi, 14))))
    else:
        grid = np.array([t_fixed])
    best = None
    for t0 in grid:
        x = np.log(sb + t0)
        X = np.column_stack((np.ones_like(x), -x))
        beta, _, rss = wls(X, yb)
        if best is None or rss < best[0]:
            best = (rss, beta, t0)
    _, beta, t0 = best
    starts = [np.array([beta[0], beta[1], 0.0, t0])]
    if floor:
        # with a floor, the power part must fall faster: restart from a steeper curve
        c = 0.5
        xs = np.log(sb + t0)
        ys = np.log(np.maximum(np.exp(yb) - c, 0.05))
        beta2, _, _ = wls(np.column_stack((np.ones_like(xs), -xs)), ys)
        starts.append(np.array([beta2[0], max(beta2[1], 0.05), c, t0]))
    return starts


def knee_consts(problem, knee_range=None) -> dict:
    """Model constants of the broken power laws: the knee search range in steps."""
    if knee_range is None:
        lo = max(KNEE_MIN_STEP, float(problem.s[0]))
        hi = float(problem.s[-1]) / 10.0**KNEE_TAIL_DECADES
    else:
        lo, hi = (float(v) for v in knee_range)
        if not (0 <= lo < hi):
            raise ValueError("knee_range must be (low, high) steps with 0 <= low < high")
    if not hi > 1.5 * max(lo, 1.0):
        if knee_range is not None:
            upper = "steps as the knee range's upper end (more than 1.5 x its lower end)"
            raise NotEnoughPoints(math.floor(1.5 * max(lo, 1.0)) + 1, int(hi), upper)
        # steps 0..n-1 hold a search from lo when (n - 1) / 10**KNEE_TAIL_DECADES > 1.5 lo
        need = math.floor(1.5 * max(lo, 1.0) * 10**KNEE_TAIL_DECADES + 1.0) + 1
        raise NotEnoughPoints(need, int(problem.s[-1]) + 1, "steps for a knee search")
    return {"s_lo": lo, "s_hi": hi}


def two_power_bounds(problem, floor: bool, shift, consts: dict):
    """Bounds and free mask of ``two_power``."""
    t_lo, t_hi = problem.shift_bounds()
    # keep the knee range non-empty: (s_lo + t0) e^delta < s_hi + t0
    ed = math.exp(KNEE_DELTA)
    t_hi = min(t_hi, 0.9 * (consts["s_hi"] - ed * consts["s_lo"]) / (ed - 1.0))
    t_hi = max(t_hi, t_lo + 1e-6)
    if not isinstance(shift, bool) and float(shift) > t_hi:
        # a fixed parameter is never moved to fit the box: that would fit another model in its name
        raise ValueError(
            f"a fixed shift of {float(shift):g} steps is beyond the broken power law's largest shift for "
            f"this curve ({t_hi:g}: the knee must stay inside the curve); fix a smaller one or leave it free"
        )
    lb = np.array([-np.inf, EXPONENT_BOUNDS[0], EXPONENT_BOUNDS[0], 0.0, 0.0, t_lo])
    ub = np.array([np.inf, EXPONENT_BOUNDS[1], EXPONENT_BOUNDS[1], 1.0, problem.floor_max() if floor else 1.0, t_hi])
    free = np.array([True, True, True, True, bool(floor), shift is True])
    return lb, ub, free


def two_power_nested(power_theta: np.ndarray) -> np.ndarray:
    """A ``two_power`` start equal to a ``power`` fit (no change of exponent, knee mid-range)."""
    la, a, c, t0 = power_theta
    return np.array([la, a, a, 0.5, c, t0])


def three_power_bounds(problem, consts: dict):
    """Bounds and free mask of ``three_power`` (floor and shift free)."""
    t_lo, t_hi = problem.shift_bounds()
    # room for two breaks: (s_lo + t0) e^(delta + delta2) < s_hi + t0
    ed = math.exp(KNEE_DELTA + KNEE2_DELTA)
    room = consts["s_hi"] - ed * consts["s_lo"]
    if room <= 0:
        raise NotEnoughPoints(
            int(math.ceil(ed * consts["s_lo"] * 10**KNEE_TAIL_DECADES)) + 1,
            int(problem.s[-1]) + 1,
            "steps for a search of two breaks",
        )
    t_hi = max(min(t_hi, 0.9 * room / (ed - 1.0)), t_lo + 1e-6)
    lo_e, hi_e = EXPONENT_BOUNDS
    lb = np.array([-np.inf, lo_e, lo_e, lo_e, 0.0, 0.0, 0.0, t_lo])
    ub = np.array([np.inf, hi_e, hi_e, hi_e, 1.0, 1.0, problem.floor_max(), t_hi])
    return lb, ub, np.ones(8, dtype=bool)


def three_power_nested(two_power_theta: np.ndarray) -> np.ndarray:
    """A ``three_power`` start equal to a ``two_power`` fit (second break at the end, no change)."""
    la, a1, a2, f, c, t0 = two_power_theta
    return np.array([la, a1, a2, a2, f, 1.0, c, t0])


def exponential_bounds(problem):
    """Bounds and free mask of ``exponential`` (unbounded, all free)."""
    return np.array([-np.inf, -np.inf]), np.array([np.inf, np.inf]), np.array([True, True])


def exponential_starts(problem) -> list[np.ndarray]:
    """The least-squares line through the bin means."""
    x = problem.sb
    beta, _, _ = wls(np.column_stack((np.ones_like(x), -x)), problem.yb)
    return [np.array(beta)]


# ---------------------------------------------------------------- break geometry
def three_power_positions(x1: float, x2: float, t0: float, consts: dict) -> tuple[float, float]:
    """``(knee_pos, knee2_pos)`` placing the breaks of ``three_power`` at ln(tau) x1 < x2 (clipped)."""
    lo = math.log(consts["s_lo"] + t0) + KNEE_DELTA
    hi = math.log(consts["s_hi"] + t0)
    span1 = hi - KNEE2_DELTA - lo
    f = min(max((x1 - lo) / span1, 0.0), 1.0) if span1 > 0 else 0.0
    x1c = lo + f * span1
    span2 = hi - x1c - KNEE2_DELTA
    g = min(max((x2 - x1c - KNEE2_DELTA) / span2, 0.0), 1.0) if span2 > 0 else 0.0
    return f, g


def three_power_steps(theta: np.ndarray, consts: dict) -> tuple[float, float]:
    """Optimizer steps of the two breaks of a ``three_power`` parameter vector."""
    x1, x2, *_ = two_knees_log_tau(theta[4], theta[5], theta[7], consts["s_lo"], consts["s_hi"])
    return float(math.exp(x1) - theta[7]), float(math.exp(x2) - theta[7])


def knee_step_of(theta: np.ndarray, consts: dict) -> float:
    """Optimizer step of the knee of a ``two_power`` parameter vector."""
    xk, _, _ = knee_log_tau(theta[3], theta[5], consts["s_lo"], consts["s_hi"])
    return float(math.exp(xk) - theta[5])


def knee_step_estimate(theta, cov, consts, z):
    """Knee step, its s.e. and CI from (knee_pos, shift) by the delta method on ln(tau_k)."""
    f, t0 = theta[3], theta[5]
    xk, d_f, d_t0 = knee_log_tau(f, t0, consts["s_lo"], consts["s_hi"])
    g = np.zeros(theta.size)
    g[3], g[5] = d_f, d_t0
    se_x = math.sqrt(max(float(g @ cov @ g), 0.0))
    tk = math.exp(float(xk))
    t0 = float(t0)
    return tk - t0, tk * se_x, (max(math.exp(xk - z * se_x) - t0, 0.0), math.exp(xk + z * se_x) - t0)


# ---------------------------------------------------------------- reported estimates
# ``estimates(theta, se, z, y_ref, *, cov, consts) -> {param_name: Estimate}``:
# ``theta`` is a fitted normalised parameter vector, ``se`` its standard errors (0
# for a fixed parameter), ``cov`` its covariance, ``y_ref`` the log-loss offset and
# ``consts`` the model constants.  Values are in physical units (input loss unit,
# steps); intervals are Wald intervals of half-width ``z`` standard errors, on the
# log scale for amplitudes and knee steps.
def _est(v, se, lo, hi) -> Estimate:
    return Estimate(float(v), float(se), (float(lo), float(hi)))


def _exp(x: float) -> float:
    # an unbounded CI on a short, poorly constrained curve: +inf, not an OverflowError
    return math.exp(x) if x < 709.0 else math.inf


def _amp(la, se, z, y_ref):
    return _est(_exp(la + y_ref), _exp(la + y_ref) * se, _exp(la - z * se + y_ref), _exp(la + z * se + y_ref))


def _lin(v, se, z, lo=-math.inf):
    return _est(v, se, max(v - z * se, lo), v + z * se)


def power_estimates(theta, se, z, y_ref, *, cov, consts) -> dict[str, Estimate]:
    """Reported estimates of ``power``: amplitude, exponent, floor (input unit), shift (steps)."""
    la, a, c, t0 = theta
    u = math.exp(y_ref)
    return {
        "amplitude": _amp(la, se[0], z, y_ref),
        "exponent": _lin(a, se[1], z),
        "floor": _est(c * u, se[2] * u, max(c - z * se[2], 0.0) * u, (c + z * se[2]) * u),
        "shift": _lin(t0, se[3], z, 0.0),
    }


def two_power_estimates(theta, se, z, y_ref, *, cov, consts) -> dict[str, Estimate]:
    """Reported estimates of ``two_power``; the break step by the delta method (:func:`knee_step_estimate`)."""
    la, a1, a2, f, c, t0 = theta
    u = math.exp(y_ref)
    ks, kse, kci = knee_step_estimate(np.asarray(theta), cov, consts, z)
    return {
        "amplitude": _amp(la, se[0], z, y_ref),
        "exponent_before": _lin(a1, se[1], z),
        "exponent_after": _lin(a2, se[2], z),
        "break_step": _est(ks, kse, kci[0], kci[1]),
        "floor": _est(c * u, se[4] * u, max(c - z * se[4], 0.0) * u, (c + z * se[4]) * u),
        "shift": _lin(t0, se[5], z, 0.0),
    }


def exponential_estimates(theta, se, z, y_ref, *, cov, consts) -> dict[str, Estimate]:
    """Reported estimates of ``exponential``: amplitude (input unit) and rate (per step)."""
    la, r = theta
    return {"amplitude": _amp(la, se[0], z, y_ref), "rate": _lin(r, se[1], z)}


# ---------------------------------------------------------------- specifications
@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines one mean model of log loss.

    Attributes
    ----------
    name : str
        Registry name (``FitResult.model``).
    mean : callable
        ``mean(theta, steps, jac=True, **consts) -> (m, J)``: normalised log loss and
        its Jacobian ``(n, len(theta_names))`` (``None`` when ``jac=False``).
    theta_names : tuple of str
        The normalised parameter vector the solver works on.
    param_names : tuple of str
        The reported parameters (physical units), aligned with ``theta_names``.
    bounds : callable
        ``bounds(problem, ...) -> (lb, ub, free, ...)``: the box and the free mask.
    starts : callable
        Starting values: ``starts(problem, ...) -> list of theta`` for the models
        fitted from the data alone, ``starts(nested_theta) -> theta`` (the nested
        model's fit as this model) for the broken power laws, whose break is searched
        by :mod:`loss_slope.analysis.search`.
    result_type : type of FitResult or None
        The result of a fit of this model (``None``: the model is only fitted
        inside a test, e.g. ``three_power`` by the two-break test).
    estimates : callable or None
        ``estimates(theta, se, z, y_ref, *, cov, consts) -> {name: Estimate}``: the
        reported parameters (``param_names``, in physical units) of a fitted
        ``theta``; ``None`` exactly when ``result_type`` is.
    """

    name: str
    mean: Callable
    theta_names: tuple[str, ...]
    param_names: tuple[str, ...]
    bounds: Callable
    starts: Callable
    result_type: type[FitResult] | None = None
    estimates: Callable | None = None

    def fn(self, consts: dict | None = None) -> Callable:
        """The mean function with the model constants (the knee search range) bound."""
        if consts:
            return functools.partial(self.mean, **consts)
        return self.mean


POWER = ModelSpec(
    name="power",
    mean=power,
    theta_names=("log_amp", "exponent", "floor", "shift"),
    param_names=("amplitude", "exponent", "floor", "shift"),
    bounds=power_bounds,
    starts=power_starts,
    result_type=PowerLawFit,
    estimates=power_estimates,
)
TWO_POWER = ModelSpec(
    name="two_power",
    mean=two_power,
    theta_names=("log_amp", "exponent_before", "exponent_after", "knee_pos", "floor", "shift"),
    param_names=("amplitude", "exponent_before", "exponent_after", "break_step", "floor", "shift"),
    bounds=two_power_bounds,
    starts=two_power_nested,
    result_type=TwoPowerLawFit,
    estimates=two_power_estimates,
)
THREE_POWER = ModelSpec(
    name="three_power",
    mean=three_power,
    theta_names=("log_amp", "exponent_1", "exponent_2", "exponent_3", "knee_pos", "knee2_pos", "floor", "shift"),
    param_names=(
        "amplitude",
        "exponent_1",
        "exponent_2",
        "exponent_3",
        "break_step_1",
        "break_step_2",
        "floor",
        "shift",
    ),
    bounds=three_power_bounds,
    starts=three_power_nested,
)
EXPONENTIAL = ModelSpec(
    name="exponential",
    mean=exponential,
    theta_names=("log_amp", "rate"),
    param_names=("amplitude", "rate"),
    bounds=exponential_bounds,
    starts=exponential_starts,
    result_type=ExponentialFit,
    estimates=exponential_estimates,
)

#: Every model by name.
MODELS: dict[str, ModelSpec] = {m.name: m for m in (POWER, TWO_POWER, THREE_POWER, EXPONENTIAL)}

__all__ = [
    "ModelSpec",
    "MODELS",
    "POWER",
    "TWO_POWER",
    "THREE_POWER",
    "EXPONENTIAL",
    "power",
    "two_power",
    "three_power",
    "exponential",
    "knee_log_tau",
    "two_knees_log_tau",
    "knee_consts",
    "knee_step_of",
    "knee_step_estimate",
    "three_power_positions",
    "three_power_steps",
    "power_estimates",
    "two_power_estimates",
    "exponential_estimates",
    "KNEE_WIDTH",
    "KNEE_DELTA",
    "KNEE2_DELTA",
    "EXPONENT_BOUNDS",
    "KNEE_MIN_STEP",
    "KNEE_TAIL_DECADES",
]
