"""Noise model for log-loss residuals: white noise plus an AR(1) wander.

Batch-to-batch SGD noise is multiplicative (so additive in log loss) and
autocorrelated.  We model the log-loss residual of row ``i`` as::

    e_i = w_i + u_i,   w_i ~ iid N(0, white_var),   u_i = phi * u_{i-1} + eta_i

(an ARMA(1, 1) process), estimated by the Whittle likelihood on the periodogram of
the residuals of a fitted mean curve.  The model gives

* the exact covariance of log-binned means (for GLS and for the knee test),
* the exact covariance of any least-squares estimator (a parametric sandwich, the
  "honest" standard errors under autocorrelation), and
* an effective sample size.

Rows are the logged points in order; a gap in the steps is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize, signal

from .data import LogBins
from .exceptions import FitFailed

__all__ = ["NoiseModel", "estimate_noise", "estimate_scale"]

_PHI_MAX = 0.9995


@dataclass(frozen=True)
class NoiseModel:
    """White + AR(1) noise in log-loss units.

    Attributes
    ----------
    white_var : float
        Variance of the iid part (log units squared).
    ar_var : float
        Stationary variance of the AR(1) part.
    ar_phi : float
        AR(1) coefficient, in [0, 1).
    """

    white_var: float
    ar_var: float
    ar_phi: float

    @property
    def variance(self) -> float:
        """Marginal variance of one residual."""
        return self.white_var + self.ar_var

    @property
    def long_run_variance(self) -> float:
        """Sum of all autocovariances (spectral density at 0, times 2*pi)."""
        p = self.ar_phi
        return self.white_var + self.ar_var * (1.0 + p) / (1.0 - p)

    @property
    def inflation(self) -> float:
        """Variance inflation of a long mean relative to iid noise (>= ~1)."""
        return self.long_run_variance / self.variance

    def effective_n(self, n: int) -> float:
        """Effective number of independent points among ``n`` consecutive rows."""
        return float(n) / max(self.inflation, 1e-12) if self.variance > 0 else float(n)

    def autocovariance(self, lags: np.ndarray) -> np.ndarray:
        """Autocovariance at integer lags (array)."""
        lags = np.abs(np.asarray(lags))
        out = self.ar_var * self.ar_phi ** lags.astype(float)
        return out + np.where(lags == 0, self.white_var, 0.0)

    # ------------------------------------------------------------------ bins
    def bin_covariance(self, bins: LogBins) -> np.ndarray:
        """Covariance matrix of the bin means.

        Parameters
        ----------
        bins : LogBins
            Bins of consecutive rows.

        Returns
        -------
        ndarray, shape (m, m)
        """
        n = bins.count
        p = self.ar_phi
        s2 = self.ar_var
        if p <= 0 or s2 <= 0:
            return np.diag((self.white_var + s2) / n)
        q = 1.0 - p
        lp = math.log(p)
        pn = np.exp(n * lp)
        a = (1.0 - pn) / q  # sum_{k<n} p^k
        d = n * (1.0 + p) / q - 2.0 * p * (1.0 - pn) / q**2  # sum_{i,j} p^|i-j|
        v = a / n
        last = bins.stop - 1
        gap = bins.start[None, :] - last[:, None]  # > 0 above the diagonal
        with np.errstate(over="ignore", under="ignore"):
            dec = np.exp(np.clip(gap, 0, None) * lp)
        cov = s2 * np.outer(v, v) * dec
        cov = np.triu(cov, 1)
        cov = cov + cov.T
        cov[np.diag_indices_from(cov)] = (self.white_var * n + s2 * d) / n**2
        return cov

    def bin_cholesky(self, bins: LogBins) -> np.ndarray:
        """Lower Cholesky factor of :meth:`bin_covariance` (with a tiny jitter if needed)."""
        cov = self.bin_covariance(bins)
        try:
            return linalg.cholesky(cov, lower=True, check_finite=False)
        except linalg.LinAlgError:
            jitter = 1e-10 * float(np.mean(np.diag(cov)))
            try:
                return linalg.cholesky(cov + jitter * np.eye(cov.shape[0]), lower=True, check_finite=False)
            except linalg.LinAlgError as exc:
                raise FitFailed(f"noise covariance of the bins is not positive definite ({self})") from exc

    # ------------------------------------------------------------------ rows
    def times(self, x: np.ndarray) -> np.ndarray:
        """Return ``Sigma @ x`` for the row covariance (O(n) recursive filters).

        Parameters
        ----------
        x : ndarray, shape (n,) or (n, k)
        """
        x = np.asarray(x, dtype=float)
        out = self.white_var * x
        if self.ar_var > 0 and self.ar_phi > 0:
            p = self.ar_phi
            fwd = signal.lfilter([1.0], [1.0, -p], x, axis=0)
            bwd = signal.lfilter([1.0], [1.0, -p], x[::-1], axis=0)[::-1]
            out = out + self.ar_var * (fwd + bwd - x)
        elif self.ar_var > 0:
            out = out + self.ar_var * x
        return out

    def sandwich_meat(self, x: np.ndarray) -> np.ndarray:
        """``X' Sigma X`` for a row-level design ``X`` of shape (n, k)."""
        return x.T @ self.times(x)


def _whittle_objective(theta, cosw, per, cnt):
    sw2, se2 = math.exp(theta[0]), math.exp(theta[1])
    phi = math.tanh(theta[2]) * _PHI_MAX
    dden = 1.0 - 2.0 * phi * cosw + phi * phi
    ar = se2 / dden
    f = sw2 + ar
    val = float(np.dot(cnt, np.log(f) + per / f))
    w = cnt * (1.0 / f - per / f**2)
    dphi = (1.0 - math.tanh(theta[2]) ** 2) * _PHI_MAX
    g = np.array(
        [
            float(np.sum(w * sw2)),
            float(np.sum(w * ar)),
            float(np.sum(w * (-ar / dden) * (2.0 * phi - 2.0 * cosw))) * dphi,
        ]
    )
    return val, g


#: the smallest white variance of a noise model: a log-loss residual s.d. of 1e-12, the
#: rounding of a double near 1 (below it residuals are rounding, not noise)
MIN_VAR = 1e-24


def estimate_noise(residuals, *, max_points: int = 65_536) -> NoiseModel:
    """Estimate a white + AR(1) noise model by the Whittle likelihood.

    Parameters
    ----------
    residuals : array_like, shape (n,)
        Log-loss residuals from a fitted mean curve, in row order.
    max_points : int
        Longer series are truncated to their last ``max_points`` rows (speed).

    Returns
    -------
    NoiseModel
    """
    r = np.asarray(residuals, dtype=float)
    r = r[-max_points:]
    r = r - r.mean()
    n = r.size
    var = float(np.dot(r, r) / max(n, 1))
    if n < 16 or var <= MIN_VAR:
        # no noise to model (an exact curve): the floor keeps the covariance positive definite
        return NoiseModel(white_var=max(var, MIN_VAR), ar_var=0.0, ar_phi=0.0)
    spec = np.fft.rfft(r)
    j = np.arange(1, (n - 1) // 2 + 1)
    per = (spec.real[j] ** 2 + spec.imag[j] ** 2) / n
    # Keep the lowest frequencies exactly; average the rest in bins 2 % wide in
    # frequency, where the spectral model is smooth (a binned Whittle likelihood).
    edges = np.unique(
        np.concatenate(
            (
                np.arange(0, min(j.size, 256)),
                np.geomspace(256, j.size, 200).astype(int) if j.size > 256 else [],
                [j.size],
            )
        ).astype(int)
    )
    cnt = np.diff(edges).astype(float)
    per = np.add.reduceat(per, edges[:-1]) / cnt
    freq = np.add.reduceat(j.astype(float), edges[:-1]) / cnt
    cosw = np.cos(2.0 * math.pi * freq / n)

    # moment-based starting values
    g1 = float(np.dot(r[1:], r[:-1]) / n)
    g2 = float(np.dot(r[2:], r[:-2]) / n)
    starts = []
    if g1 > 0 and g2 > 0:
        p0 = min(max(g2 / g1, 0.05), 0.995)
        s0 = min(g1 / p0, 0.95 * var)
        starts.append((max(var - s0, 0.02 * var), s0, p0))
    else:
        starts.append((0.5 * var, 0.5 * var, 0.9))
    starts.append((0.9 * var, 0.1 * var, 0.99))
    best = None
    lo_v = math.log(1e-8 * var)
    hi_v = math.log(10.0 * var)
    for sw2, s2, p0 in starts:
        se2 = s2 * (1.0 - p0 * p0)
        th0 = np.array(
            [
                math.log(max(sw2, 1e-8 * var)),
                math.log(max(se2, 1e-8 * var)),
                math.atanh(min(p0, 0.999) / _PHI_MAX),
            ]
        )
        res = optimize.minimize(
            _whittle_objective,
            th0,
            args=(cosw, per, cnt),
            jac=True,
            method="L-BFGS-B",
            bounds=[(lo_v, hi_v), (lo_v - 10.0, hi_v), (-3.0, 5.0)],
        )
        if best is None or res.fun < best.fun:
            best = res
    sw2 = math.exp(best.x[0])
    se2 = math.exp(best.x[1])
    phi = math.tanh(best.x[2]) * _PHI_MAX
    if phi <= 0:
        # a negative or null AR part: fold it into white noise (conservative for means)
        return NoiseModel(white_var=sw2 + se2 / (1 - phi * phi), ar_var=0.0, ar_phi=0.0)
    return NoiseModel(white_var=sw2, ar_var=se2 / (1.0 - phi * phi), ar_phi=phi)


def reml_refine(
    noise: NoiseModel,
    bins: LogBins,
    jac: np.ndarray,
    resid: np.ndarray,
    *,
    n_grid: int = 9,
    slack: float = 0.0,
    adaptive: bool = False,
    bin_scale: np.ndarray | None = None,
) -> NoiseModel:
    """Re-estimate the AR(1) coefficient by restricted maximum likelihood on bin means.

    The Whittle estimate uses residuals of a fitted mean curve, and a flexible curve
    (floor, shift, knee) soaks up part of a slow wander: ``phi`` and with it the
    long-run variance come out too small, which would make spurious knees look
    significant.  Keeping the white variance and the AR *innovation* variance from
    Whittle (both fixed by the high frequencies), this maximises over ``phi`` the
    REML likelihood of the bin means, which accounts for the degrees of freedom
    absorbed by the mean model (``jac``: its bin Jacobian at the fit).

    Parameters
    ----------
    noise : NoiseModel
        Whittle estimate.
    bins : LogBins
    jac : ndarray, shape (m, k)
        Jacobian of the fitted mean model on the bins.
    resid : ndarray, shape (m,)
        Bin residuals of the fit.
    n_grid : int
        Grid size in ln(1 - phi).
    slack : float
        Return the *largest* ``phi`` whose REML log-likelihood is within ``slack`` of
        the maximum (a one-sided confidence bound): with few correlation lengths in
        the curve ``phi`` is poorly determined, and erring towards more persistence
        keeps tests conservative.  0 gives the REML estimate.
    bin_scale : ndarray, shape (m,), optional
        Heteroscedastic noise: the bin covariance is ``D C D`` with ``D = diag(bin_scale)``
        (see :func:`estimate_scale`).
    adaptive : bool
        Scale ``slack`` by ``min(1, sqrt(10 / (n (1 - phi_reml))))``: full slack
        only when the curve spans fewer than ~10 correlation lengths.

    Returns
    -------
    NoiseModel
    """
    if noise.ar_phi <= 0 or noise.ar_var <= 0:
        return noise
    p0 = noise.ar_phi
    eta2 = noise.ar_var * (1.0 - p0 * p0)
    u0 = math.log(1.0 - p0)
    u_lo = math.log(1.0 - _PHI_MAX)
    grid = np.unique(np.concatenate((np.linspace(u0 + 0.7, u_lo, n_grid), [u0])))
    cands = []
    for u in grid:
        phi = min(1.0 - math.exp(u), _PHI_MAX)
        if phi <= 0:
            continue
        cand = NoiseModel(white_var=noise.white_var, ar_var=eta2 / (1.0 - phi * phi), ar_phi=phi)
        try:
            L = linalg.cholesky(cand.bin_covariance(bins), lower=True, check_finite=False)
        except linalg.LinAlgError:
            continue
        if bin_scale is not None:
            L = bin_scale[:, None] * L
        jt = linalg.solve_triangular(L, jac, lower=True, check_finite=False)
        rt = linalg.solve_triangular(L, resid, lower=True, check_finite=False)
        q, rr = np.linalg.qr(jt)
        e = rt - q @ (q.T @ rt)
        ll = (
            -float(np.sum(np.log(np.diag(L))))
            - float(np.sum(np.log(np.abs(np.diag(rr)) + 1e-300)))
            - 0.5 * float(e @ e)
        )
        cands.append((ll, cand))
    if not cands:
        return noise
    top, best = max(cands, key=lambda t: t[0])
    if adaptive:
        # few correlation lengths in the curve -> phi poorly known -> more slack
        n_rows = float(bins.stop[-1] - bins.start[0])
        slack = slack * min(1.0, math.sqrt(10.0 / max(n_rows * (1.0 - best.ar_phi), 1e-9)))
    return max((c for ll, c in cands if ll >= top - slack), key=lambda c: c.ar_phi)


#: Coarse groups for the noise-scale estimate: width in decades of (step + 1) ...
SCALE_GROUP_DECADES = 0.1
#: ... and minimum number of first differences per group.
SCALE_GROUP_MIN = 24
#: Heteroscedasticity is modelled only when the fitted scale varies by more than
#: this factor over the curve ...
SCALE_MIN_RATIO = 1.5
#: ... and the quadratic scale model beats a constant by this chi-square (2 dof).
SCALE_MIN_CHI2 = 25.0


def estimate_scale(steps, residuals) -> tuple[np.ndarray | None, float]:
    """Smooth scale of the log-loss noise along the curve (heteroscedasticity).

    Batch-level log loss of a classifier is far from constant-variance: when most
    examples of a batch are fitted, the batch loss is carried by a few mistakes and
    its logarithm scatters widely (on the demo runs the robust s.d. of log loss
    grows from ~0.005 on the initial plateau to ~1 at the end).  A constant noise
    model then gives the plateau and the drop the weight of the noisy tail, and any
    structure there is invisible to a likelihood-ratio test.

    Model: ``e_i = sigma(step_i) * (w_i + u_i)`` with ``w + u`` the white + AR(1)
    noise of :class:`NoiseModel`.  ``ln sigma`` is a quadratic in
    ``log10(step + 1)`` fitted to the log of robust (MAD) s.d.s of the *first
    differences* of the residuals (which remove slow AR wander and smooth misfit)
    in coarse log-spaced groups (0.1 decade, >= 24 differences), weighted by
    their sampling precision (var(ln MAD) ~ 1.36 / n); this quadratic is the
    *test* for heteroscedasticity.  The scale used is the group estimates smoothed
    by a 3-point running mean and interpolated linearly in ``log10(step + 1)``
    (flat beyond the first/last group).  It is used only when the quadratic
    beats a constant by chi-square > :data:`SCALE_MIN_CHI2` and varies by more than
    :data:`SCALE_MIN_RATIO` over the curve; otherwise ``None`` (constant noise),
    so homoscedastic curves are analysed exactly as before.

    Parameters
    ----------
    steps : ndarray, shape (n,)
    residuals : ndarray, shape (n,)
        Raw log-loss residuals of a fitted mean curve.

    Returns
    -------
    (scale, ratio)
        ``scale``: per-row sigma normalised to geometric mean 1 over the rows, or
        ``None``; ``ratio``: max / min of the fitted sigma over the curve (1.0
        when not modelled).
    """
    s = np.asarray(steps, dtype=float)
    r = np.asarray(residuals, dtype=float)
    if s.size < 4 * SCALE_GROUP_MIN:
        return None, 1.0
    d = np.diff(r)
    xd = np.log10(s[1:] + 1.0)
    gid = np.floor((xd - xd[0]) / SCALE_GROUP_DECADES).astype(np.int64)
    # merge groups forward until each has SCALE_GROUP_MIN differences
    cuts = [0]
    last = 0
    for i in np.flatnonzero(np.diff(gid)) + 1:
        if i - last >= SCALE_GROUP_MIN:
            cuts.append(int(i))
            last = int(i)
    if d.size - cuts[-1] < SCALE_GROUP_MIN and len(cuts) > 1:
        cuts.pop()
    cuts.append(d.size)
    xs, ls, ns = [], [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        seg = d[a:b]
        mad = float(np.median(np.abs(seg - np.median(seg))))
        if mad <= 0:
            continue
        xs.append(float(np.mean(xd[a:b])))
        ls.append(math.log(mad))
        ns.append(float(b - a))
    if len(xs) < 5:
        return None, 1.0
    xs, ls, ns = np.array(xs), np.array(ls), np.array(ns)
    w = ns / 1.36
    xc = xs - np.average(xs, weights=w)
    X = np.column_stack((np.ones_like(xc), xc, xc * xc))
    sw = np.sqrt(w)
    beta, *_ = np.linalg.lstsq(X * sw[:, None], ls * sw, rcond=None)
    rss_q = float(np.sum(w * (ls - X @ beta) ** 2))
    rss_0 = float(np.sum(w * (ls - np.average(ls, weights=w)) ** 2))
    x_row = np.clip(np.log10(s + 1.0), xs[0], xs[-1]) - (xs - xc)[0]
    lsig = beta[0] + beta[1] * x_row + beta[2] * x_row * x_row
    ratio = float(math.exp(np.max(lsig) - np.min(lsig)))
    if rss_0 - rss_q < SCALE_MIN_CHI2 or ratio < SCALE_MIN_RATIO:
        return None, 1.0
    # the scale itself: the group estimates, smoothed by a 3-point running mean
    # (in ln sigma, weighted by precision) and interpolated linearly in log10(step+1).
    # A global quadratic cannot follow a flat plateau followed by a steep rise.
    k = ls.size
    sm = np.empty(k)
    for i in range(k):
        a, b = max(i - 1, 0), min(i + 2, k)
        sm[i] = np.average(ls[a:b], weights=w[a:b])
    lsig = np.interp(np.log10(s + 1.0), xs, sm)
    ratio = float(math.exp(np.max(lsig) - np.min(lsig)))
    lsig = lsig - float(np.mean(lsig))
    return np.exp(lsig), ratio
