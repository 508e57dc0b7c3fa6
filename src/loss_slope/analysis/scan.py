"""O(n) scan of all continuous two-segment (hinge) fits.

For every candidate break ``x_k`` the model is the ordinary least-squares fit of::

    y = b0 + b1 * x + b2 * max(x - x_k, 0)

By Frisch-Waugh, adding the hinge column ``z_k`` to the straight line lowers the
residual sum of squares by ``(z_k' r0)^2 / |z_k^perp|^2`` where ``r0`` are the line's
residuals and ``z_k^perp`` is ``z_k`` with the line's columns projected out.  All the
inner products are differences of suffix sums of ``1, x, x^2, r0, x r0``, so the whole
profile costs a handful of cumulative sums: O(n) instead of n separate fits.

The reported AIC/BIC use statsmodels' convention (Gaussian log-likelihood with the
variance profiled out, ``k`` = number of regression coefficients), so each entry
equals ``statsmodels.api.OLS(y, X_k).fit().aic`` (or ``WLS`` with weights) to
floating-point precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .exceptions import InvalidCurve, NotEnoughPoints

__all__ = ["HingeScan", "hinge_scan"]


@dataclass(frozen=True, eq=False)
class HingeScan:
    """Profile of the hinge fit over all candidate breaks.

    Attributes
    ----------
    candidates : ndarray of int, shape (k,)
        Index ``i`` of each candidate break (the break is at ``x[i]``).
    x_break : ndarray, shape (k,)
        Break positions (units of ``x``).
    rss : ndarray, shape (k,)
        (Weighted) residual sum of squares of each hinge fit.
    aic, bic : ndarray, shape (k,)
        statsmodels AIC/BIC of each hinge fit (3 coefficients; the break location
        is *not* counted, as in a fixed-design OLS).
    rss_line, aic_line, bic_line : float
        The same for the straight line (2 coefficients).
    best : int
        Position (into ``candidates``) of the lowest RSS.
    slope_before, slope_after : float
        Slopes of the best hinge fit on either side of its break.
    n_obs : int
    """

    candidates: np.ndarray
    x_break: np.ndarray
    rss: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    rss_line: float
    aic_line: float
    bic_line: float
    best: int
    slope_before: float
    slope_after: float
    n_obs: int

    @property
    def delta_aic(self) -> np.ndarray:
        """AIC(line) - AIC(hinge) for every candidate (positive favours a break)."""
        return self.aic_line - self.aic

    @property
    def best_x(self) -> float:
        """Break position of the best hinge fit."""
        return float(self.x_break[self.best])


def _suffix(a: np.ndarray) -> np.ndarray:
    """s[k] = sum(a[k+1:])  (strict suffix sums)."""
    c = np.cumsum(a[::-1])[::-1]
    out = np.empty_like(c)
    out[:-1] = c[1:]
    out[-1] = 0.0
    return out


def _prefix(a: np.ndarray) -> np.ndarray:
    """p[k] = sum(a[:k])  (strict prefix sums)."""
    out = np.empty_like(a)
    out[0] = 0.0
    np.cumsum(a[:-1], out=out[1:])
    return out


def hinge_scan(x, y, *, weights=None, min_size: int = 3) -> HingeScan:
    """Fit the continuous hinge at every candidate break in O(n).

    Parameters
    ----------
    x : array_like, shape (n,)
        Strictly increasing abscissa (e.g. ln(step + 1)).
    y : array_like, shape (n,)
        Ordinate (e.g. log loss).
    weights : array_like, shape (n,), optional
        Positive WLS weights (e.g. bin counts); OLS when omitted.
    min_size : int
        Minimum number of points on each side of a break (>= 2).

    Returns
    -------
    HingeScan

    Raises
    ------
    NotEnoughPoints
        If ``n < 2 * min_size + 1``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    if y.size != n:
        raise InvalidCurve("x and y differ in length")
    min_size = max(int(min_size), 2)
    if n < 2 * min_size + 1:
        raise NotEnoughPoints(2 * min_size + 1, n)
    if np.any(np.diff(x) <= 0):
        raise InvalidCurve("x must be strictly increasing")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise InvalidCurve("weights must be finite and > 0")

    sw = w.sum()
    xc = x - np.dot(w, x) / sw
    yc = y - np.dot(w, y) / sw
    sxx = np.dot(w, xc * xc)
    beta = np.dot(w, xc * yc) / sxx
    r0 = yc - beta * xc
    rss0 = float(np.dot(w, r0 * r0))

    # Right hinge z = (x - x_k)_+ uses suffix sums; the left hinge (x_k - x)_+ spans
    # the same model (their difference is linear in x) and uses prefix sums.  Each
    # candidate uses the side with fewer points: less cancellation in |z^perp|^2.
    wx, wxx, wr, wxr = w * xc, w * xc * xc, w * r0, w * xc * r0
    u0, u1, u2, t0, t1 = _suffix(w), _suffix(wx), _suffix(wxx), _suffix(wr), _suffix(wxr)
    zr = t1 - xc * t0
    z1 = u1 - xc * u0
    zx = u2 - xc * u1
    zz = u2 - 2.0 * xc * u1 + xc * xc * u0
    p0, p1, p2 = _prefix(w), _prefix(wx), _prefix(wxx)
    q0, q1 = _prefix(wr), _prefix(wxr)
    left = p0 < u0
    zr = np.where(left, xc * q0 - q1, zr)
    z1 = np.where(left, xc * p0 - p1, z1)
    zx = np.where(left, xc * p1 - p2, zx)
    zz = np.where(left, xc * xc * p0 - 2.0 * xc * p1 + p2, zz)
    zperp = zz - z1 * z1 / sw - zx * zx / sxx

    k = np.arange(min_size - 1, n - min_size)  # break at x[k]: >= min_size points each side incl. x[k]
    zp = zperp[k]
    ok = zp > 1e-12 * np.maximum(zz[k], 1e-300)
    rss = np.where(ok, rss0 - zr[k] ** 2 / np.where(ok, zp, 1.0), rss0)
    rss = np.maximum(rss, 0.0)

    logw = 0.5 * float(np.sum(np.log(w))) if weights is not None else 0.0

    def _ic(r, kpar):
        llf = -0.5 * n * (math.log(2 * math.pi) + np.log(r / n) + 1.0) + logw
        return -2.0 * llf + 2.0 * kpar, -2.0 * llf + kpar * math.log(n)

    aic, bic = _ic(rss, 3)
    aic0, bic0 = _ic(rss0, 2)
    best = int(np.argmin(rss))
    kb = int(k[best])
    # slopes of the best hinge: b1 (before), b1 + b2 (after)
    b2 = zr[kb] / zperp[kb] if ok[best] else 0.0
    # coefficient of x after adding the hinge column: beta - b2 * (z.x)/sxx
    b1 = beta - b2 * zx[kb] / sxx
    if left[kb]:  # y = b0 + b1 x + b2 (x_k - x)_+: slope b1 - b2 before, b1 after
        b1 = b1 - b2
    return HingeScan(
        candidates=k,
        x_break=x[k],
        rss=rss,
        aic=np.asarray(aic),
        bic=np.asarray(bic),
        rss_line=rss0,
        aic_line=float(aic0),
        bic_line=float(bic0),
        best=best,
        slope_before=float(b1),
        slope_after=float(b1 + b2),
        n_obs=n,
    )
