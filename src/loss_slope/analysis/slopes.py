"""Plain log-log slopes of a loss curve over epoch windows.

The slope is the OLS fit of ``log loss = b - alpha * ln(step + 1)`` on the raw
points of a window (``t = step + 1`` is the number of optimizer updates applied,
so 0-based logged steps are valid).  ``alpha`` is dimensionless and identical for
nats and bits.  Windows are half-open in fractional epochs:
``start_epoch <= step / steps_per_epoch < end_epoch``.

Standard errors are honest under autocorrelated noise: by default the exact
covariance of OLS under a white + AR(1) model fitted to the window's residuals
(``se_method="ar"``); ``"hac"`` gives Newey-West with Andrews' AR(1) plug-in
bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import log_t, prepare_curve, time_on_curve, z_value
from .exceptions import NotEnoughPoints
from .noise import estimate_noise
from .solver import iid_loglik

__all__ = ["SlopeResult", "WindowScan", "alpha_window", "alpha_early", "alpha_full", "window_scan"]

#: Default early window, in epochs.
EARLY_WINDOW = (5.0, 15.0)
MIN_WINDOW_POINTS = 10


@dataclass(frozen=True)
class SlopeResult:
    """A log-log slope over a window.

    Attributes
    ----------
    alpha : float
        ``-d log(loss) / d ln(step + 1)`` (dimensionless).
    stderr : float
    ci : tuple of float
    start_step, end_step : float
        First and last step used.
    start_epoch, end_epoch : float
        Window bounds requested (epochs; NaN if not epoch-based).
    n_points : int
    intercept : float
        ``b`` in log-loss units of the input.
    r2 : float
        R^2 of log loss in the window.
    aic, bic : float
        statsmodels OLS criteria (2 coefficients).
    se_method : str
    noise_ar_phi : float
        AR(1) coefficient of the window's residual noise model.
    effective_n : float
    start_reason : str
        Why the window starts where it does (``"window"``, ``"knee"``, ``"fallback"``).
    """

    alpha: float
    stderr: float
    ci: tuple[float, float]
    start_step: float
    end_step: float
    start_epoch: float
    end_epoch: float
    n_points: int
    intercept: float
    r2: float
    aic: float
    bic: float
    se_method: str
    noise_ar_phi: float
    effective_n: float
    start_reason: str = "window"

    def to_dict(self, prefix: str = "alpha") -> dict[str, float | int | str]:
        return {
            prefix: self.alpha,
            f"{prefix}_se": self.stderr,
            f"{prefix}_ci_low": self.ci[0],
            f"{prefix}_ci_high": self.ci[1],
            f"{prefix}_start_step": self.start_step,
            f"{prefix}_end_step": self.end_step,
            f"{prefix}_n_points": self.n_points,
            f"{prefix}_r2": self.r2,
            f"{prefix}_start_reason": self.start_reason,
        }


def _hac_meat(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, int]:
    """Newey-West meat with Andrews' AR(1) plug-in bandwidth."""
    n = u.size
    rho = float(np.dot(u[1:], u[:-1]) / max(np.dot(u[:-1], u[:-1]), 1e-300))
    rho = min(max(rho, -0.99), 0.99)
    a1 = 4.0 * rho**2 / ((1 - rho) ** 2 * (1 + rho) ** 2)
    bw = int(min(n - 1, math.ceil(1.1447 * (a1 * n) ** (1.0 / 3.0))))
    g = x * u[:, None]
    meat = g.T @ g
    for lag in range(1, bw + 1):
        w = 1.0 - lag / (bw + 1.0)
        c = g[lag:].T @ g[:-lag]
        meat += w * (c + c.T)
    return meat, bw


def _slope(steps: np.ndarray, y: np.ndarray, *, confidence: float, se_method: str):
    n = steps.size
    if n < MIN_WINDOW_POINTS:
        raise NotEnoughPoints(MIN_WINDOW_POINTS, n, "points in the window")
    x = log_t(steps)
    if np.ptp(x) <= 0:
        raise NotEnoughPoints(2, 1, "distinct steps in the window")
    X = np.column_stack((np.ones(n), x))
    q, r = np.linalg.qr(X)
    beta = np.linalg.solve(r, q.T @ y)
    u = y - X @ beta
    rss = float(u @ u)
    yc = y - y.mean()
    tss = float(yc @ yc)
    xtx_inv = np.linalg.inv(X.T @ X)
    if se_method == "ar":
        noise = estimate_noise(u)
        meat = noise.sandwich_meat(X)
        phi, neff = noise.ar_phi, noise.effective_n(n)
        label = "OLS sandwich under white+AR(1) noise"
    elif se_method == "hac":
        meat, bw = _hac_meat(X, u)
        phi, neff = float("nan"), float("nan")
        label = f"Newey-West HAC, bandwidth {bw}"
    else:
        raise ValueError("se_method must be 'ar' or 'hac'")
    cov = xtx_inv @ meat @ xtx_inv
    se = math.sqrt(max(cov[1, 1], 0.0))
    z = z_value(confidence)
    alpha = -float(beta[1])
    ll = iid_loglik(max(rss, 1e-300), n)
    return dict(
        alpha=alpha,
        stderr=se,
        ci=(alpha - z * se, alpha + z * se),
        n_points=n,
        intercept=float(beta[0]),
        r2=1.0 - rss / tss if tss > 0 else float("nan"),
        aic=-2 * ll + 4.0,
        bic=-2 * ll + 2.0 * math.log(n),
        se_method=label,
        noise_ar_phi=phi,
        effective_n=neff,
        start_step=float(steps[0]),
        end_step=float(steps[-1]),
    )


def alpha_window(
    steps,
    loss,
    start_epoch: float,
    end_epoch: float,
    steps_per_epoch: float,
    *,
    confidence: float = 0.95,
    se_method: str = "ar",
    allow_partial: bool = False,
    nonfinite: str = "raise",
) -> SlopeResult:
    """Log-log slope over ``start_epoch <= step / steps_per_epoch < end_epoch``.

    Parameters
    ----------
    steps : array_like, shape (n,)
        0-based optimizer steps.
    loss : array_like, shape (n,)
        Loss (> 0), any unit.
    start_epoch, end_epoch : float
        Window in (fractional) epochs.
    steps_per_epoch : float
        Optimizer steps per epoch (391 for CIFAR-10 at batch 128).
    confidence : float
    se_method : {"ar", "hac"}
    allow_partial : bool
        Accept a curve that ends before ``end_epoch`` (the window is truncated);
        by default that raises, so a short run is never compared silently.
    nonfinite : {"raise", "drop"}

    Returns
    -------
    SlopeResult

    Raises
    ------
    NotEnoughPoints
        Fewer than 10 points in the window, or the curve ends before the window.
    """
    if not steps_per_epoch > 0:
        raise ValueError("steps_per_epoch must be > 0")
    if not end_epoch > start_epoch:
        raise ValueError("end_epoch must be > start_epoch")
    curve = prepare_curve(steps, loss, min_points=2, nonfinite=nonfinite)
    ep = curve.steps / float(steps_per_epoch)
    if not allow_partial and ep[-1] < end_epoch - 1.0 / float(steps_per_epoch) - 1e-9:
        raise NotEnoughPoints(
            int(math.ceil(end_epoch * steps_per_epoch)),
            int(curve.steps[-1]) + 1,
            "steps to cover the window (curve ends early)",
        )
    sel = (ep >= start_epoch) & (ep < end_epoch)
    out = _slope(curve.steps[sel], curve.y[sel], confidence=confidence, se_method=se_method)
    return SlopeResult(start_epoch=float(start_epoch), end_epoch=float(end_epoch), start_reason="window", **out)


def alpha_early(
    steps, loss, *, steps_per_epoch: float, window: tuple[float, float] = EARLY_WINDOW, **options
) -> SlopeResult:
    """α_early: :func:`alpha_window` over ``window`` (default epochs 5-15)."""
    return alpha_window(steps, loss, window[0], window[1], steps_per_epoch, **options)


def alpha_full(
    steps,
    loss,
    *,
    knee_step: float | None,
    steps_per_epoch: float,
    fallback_start_epoch: float = 1.0,
    confidence: float = 0.95,
    se_method: str = "ar",
    nonfinite: str = "raise",
) -> SlopeResult:
    """α_full: log-log slope from the knee to the end of the curve.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
    knee_step : float or None
        Knee step (e.g. ``detect_knee(...).step``); ``None`` or NaN means no knee,
        and the window starts at ``fallback_start_epoch`` (``start_reason`` says which).
    steps_per_epoch : float
    fallback_start_epoch : float
        Start (epochs) used when there is no knee.

    Returns
    -------
    SlopeResult
    """
    if not steps_per_epoch > 0:
        raise ValueError("steps_per_epoch must be > 0")
    curve = prepare_curve(steps, loss, min_points=2, nonfinite=nonfinite)
    if knee_step is not None and math.isfinite(knee_step):
        start, reason = float(knee_step), "knee"
    else:
        start, reason = fallback_start_epoch * float(steps_per_epoch), "fallback"
    sel = curve.steps >= start
    out = _slope(curve.steps[sel], curve.y[sel], confidence=confidence, se_method=se_method)
    return SlopeResult(
        start_epoch=start / float(steps_per_epoch),
        end_epoch=float(curve.steps[-1] / steps_per_epoch),
        start_reason=reason,
        **out,
    )


@dataclass(frozen=True, eq=False)
class WindowScan:
    """α over shifted windows (robustness of α_early to the window choice).

    Attributes
    ----------
    starts, ends : ndarray, shape (a,), (b,)
        Window starts and ends in epochs.
    alpha : ndarray, shape (a, b)
        Slope for window ``[starts[i], ends[j])``; NaN where the window is empty,
        has fewer than 10 points or runs past the end of the curve (see ``valid``).
    valid : ndarray of bool, shape (a, b)
    nominal : float
        α of the nominal window.
    spread : float
        max - min of the valid α.
    sd : float
        Standard deviation of the valid α.
    """

    starts: np.ndarray
    ends: np.ndarray
    alpha: np.ndarray
    valid: np.ndarray
    nominal: float
    spread: float
    sd: float

    @property
    def relative_spread(self) -> float:
        """spread / |nominal|."""
        return self.spread / abs(self.nominal) if self.nominal else float("inf")


def window_alphas(steps: np.ndarray, y: np.ndarray, starts_step: np.ndarray, ends_step: np.ndarray) -> np.ndarray:
    """OLS log-log slopes for many windows at once via prefix sums.

    Parameters
    ----------
    steps, y : ndarray, shape (n,)
        Validated steps and log loss.
    starts_step, ends_step : ndarray, shape (a,), (b,)
        Half-open window bounds in steps.

    Returns
    -------
    alpha : ndarray, shape (a, b), NaN where fewer than 10 points.
    """
    x = log_t(steps)
    xm = x.mean()
    ym = y.mean()
    xc, yc = x - xm, y - ym

    def pre(a):
        return np.concatenate(([0.0], np.cumsum(a)))

    c1, cx, cy, cxx, cxy = pre(np.ones_like(x)), pre(xc), pre(yc), pre(xc * xc), pre(xc * yc)
    i0 = np.searchsorted(steps, starts_step, side="left")[:, None]
    i1 = np.searchsorted(steps, ends_step, side="left")[None, :]
    k = c1[i1] - c1[i0]
    sx, sy = cx[i1] - cx[i0], cy[i1] - cy[i0]
    sxx, sxy = cxx[i1] - cxx[i0], cxy[i1] - cxy[i0]
    with np.errstate(invalid="ignore", divide="ignore"):
        vxx = sxx - sx * sx / k
        vxy = sxy - sx * sy / k
        slope = vxy / vxx
    ok = (k >= MIN_WINDOW_POINTS) & (vxx > 0)
    return np.where(ok, -slope, np.nan)


def window_scan(
    steps,
    loss,
    *,
    steps_per_epoch: float,
    window: tuple[float, float] = EARLY_WINDOW,
    shift: float = 5.0,
    stride: float = 1.0,
    nonfinite: str = "raise",
    time=None,
) -> WindowScan:
    """Slopes with the window's start and end each shifted by up to ±``shift`` epochs.

    Parameters
    ----------
    steps, loss : array_like, shape (n,)
    steps_per_epoch : float
    window : (float, float)
        Nominal window in epochs (default 5-15).
    shift : float
        Maximum shift of each bound, epochs.
    stride : float
        Grid spacing, epochs.
    time : array_like, shape (n,), optional
        Another time axis for the slopes (as :func:`analyze_curve`'s ``time``): the
        windows are still in epochs of steps, the slope is ``-d log loss / d ln(time + 1)``,
        so the nominal window gives ``analyze_curve``'s α_early on that axis.

    Returns
    -------
    WindowScan
    """
    if not steps_per_epoch > 0:
        raise ValueError("steps_per_epoch must be > 0")
    curve = prepare_curve(steps, loss, min_points=2, nonfinite=nonfinite)
    x, y = curve.steps, curve.y
    if time is None:

        def on_axis(step_bounds):
            return step_bounds
    else:
        tt, keep = time_on_curve(steps, time, curve)
        x, y, kept_steps = tt[keep], y[keep], curve.steps[keep]

        def on_axis(step_bounds):
            return np.interp(step_bounds, kept_steps, x)

    offs = np.arange(-shift, shift + 0.5 * stride, stride)
    starts = np.maximum(window[0] + offs, 0.0)
    starts = np.unique(starts)
    ends = window[1] + offs
    a = window_alphas(x, y, on_axis(starts * steps_per_epoch), on_axis(ends * steps_per_epoch))
    covered = ends * steps_per_epoch - 1.0 <= curve.steps[-1] + 1e-9  # no truncated windows
    a = np.where((starts[:, None] < ends[None, :]) & covered[None, :], a, np.nan)
    valid = np.isfinite(a)
    if not valid.any():
        raise NotEnoughPoints(MIN_WINDOW_POINTS, 0, "points in every shifted window")
    nom = window_alphas(
        x, y, on_axis(np.array([window[0] * steps_per_epoch])), on_axis(np.array([window[1] * steps_per_epoch]))
    )[0, 0]
    if not math.isfinite(nom):
        raise NotEnoughPoints(MIN_WINDOW_POINTS, 0, "points in the nominal window")
    vals = a[valid]
    return WindowScan(
        starts=starts,
        ends=ends,
        alpha=a,
        valid=valid,
        nominal=float(nom),
        spread=float(vals.max() - vals.min()),
        sd=float(vals.std()),
    )
