"""Mean models for log loss, with analytic Jacobians (private).

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

import numpy as np
from scipy.special import expit

#: Rounding of the two-power knee in ln(tau) units.  A little smoothing keeps the
#: objective differentiable on binned data; the softplus is symmetric, so a sharp
#: knee is located without bias.
KNEE_WIDTH = 0.03

#: Minimum distance of the knee after the transient, in ln(tau) (0.11 decades).
KNEE_DELTA = 0.25

POWER_NAMES = ("log_amp", "exponent", "floor", "shift")
TWO_POWER_NAMES = ("log_amp", "exponent_before", "exponent_after", "knee_pos", "floor", "shift")
THREE_POWER_NAMES = ("log_amp", "exponent_1", "exponent_2", "exponent_3", "knee_pos", "knee2_pos", "floor", "shift")
EXP_NAMES = ("log_amp", "rate")

#: Least distance between the two breaks of ``three_power``, in ln(tau) (a factor 2).
KNEE2_DELTA = float(np.log(2.0))


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


MODELS = {
    "power": (power, POWER_NAMES),
    "two_power": (two_power, TWO_POWER_NAMES),
    "three_power": (three_power, THREE_POWER_NAMES),
    "exponential": (exponential, EXP_NAMES),
}
