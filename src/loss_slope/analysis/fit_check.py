"""Does a fitted curve follow the data?  One check for every fit the analysis reports.

A fit can converge and still miss the curve: a power law pushed onto a curve with
two breaks, a fit with a parameter on its bound, a floor that makes it rise.
:func:`check_fit` compares the fit's prediction with the log-binned mean of the
data it was fitted to; a fit that fails is reported as a failed fit, never as an
answer.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from .results import FitCheck

__all__ = ["FitCheck", "check_fit", "MISFIT_DECADES", "MISFIT_TOLERANCE", "MISFIT_SE"]

NAN = float("nan")


class Predicts(Protocol):
    """Anything fitted to a curve that predicts the loss at given steps."""

    def predict(self, steps) -> np.ndarray: ...


#: Width (decades of step + 1) of the bins in which a fit is compared with the data.
MISFIT_DECADES = 0.1
#: A fit misses the data when a bin's mean log residual exceeds this (ln 1.5: 50 %) ...
MISFIT_TOLERANCE = math.log(1.5)
#: ... and also exceeds this many standard errors of that bin mean.
MISFIT_SE = 4.0


def check_fit(fit: Predicts, steps, loss, *, tolerance: float = MISFIT_TOLERANCE) -> FitCheck:
    """Compare a fit's prediction with the log-binned mean of the data it was fitted to.

    A fit fails when a bin's mean log residual exceeds ``tolerance`` and
    :data:`MISFIT_SE` standard errors of that mean (the s.e. inflated for lag-1
    autocorrelation), or when its prediction rises from the first to the last
    step of the segment while the data's first and last bins fall.

    Parameters
    ----------
    fit : FitResult or any fitted curve with ``predict(steps)``
    steps, loss : array_like, shape (n,)
        The points the fit was made on (loss > 0, any unit).
    tolerance : float
        Log units.

    Returns
    -------
    FitCheck
    """
    s = np.asarray(steps, dtype=float)
    y = np.log(np.asarray(loss, dtype=float))
    ok = np.isfinite(y)
    s, y = s[ok], y[ok]
    with np.errstate(all="ignore"):
        pred = np.log(fit.predict(s))
    r = y - pred
    if not np.all(np.isfinite(r)):
        return FitCheck(False, "the fit's prediction is not finite", NAN, NAN, False)
    ids = np.floor(np.log10(s + 1.0) / MISFIT_DECADES).astype(np.int64)
    _, inv, cnt = np.unique(ids, return_inverse=True, return_counts=True)
    mean_r = np.bincount(inv, weights=r) / cnt
    mean_s = np.bincount(inv, weights=s) / cnt
    rc = r - mean_r[inv]
    var = np.bincount(inv, weights=rc * rc) / np.maximum(cnt - 1, 1)
    dev = r - r.mean()
    den = float(dev @ dev)
    phi = float(np.clip(dev[1:] @ dev[:-1] / den, 0.0, 0.99)) if den > 0 and r.size > 2 else 0.0
    se = np.sqrt(var / cnt * (1 + phi) / (1 - phi))
    # a one-point bin has no s.e. of its own: use the residual s.d. of the whole fit
    se = np.where(cnt > 1, se, math.sqrt(den / max(r.size - 1, 1)) * math.sqrt((1 + phi) / (1 - phi)))
    i = int(np.argmax(np.abs(mean_r)))
    worst, worst_step = float(abs(mean_r[i])), float(mean_s[i])
    bad = (np.abs(mean_r) > tolerance) & (np.abs(mean_r) > MISFIT_SE * se)
    data_first, data_last = (
        mean_r[0] + float(np.mean(pred[inv == 0])),
        mean_r[-1] + float(np.mean(pred[inv == inv[-1]])),
    )
    rising = bool(pred[-1] > pred[0] + 1e-9 and data_last < data_first)
    if bad.any():
        j = int(np.flatnonzero(bad)[np.argmax(np.abs(mean_r[bad]))])
        return FitCheck(
            False,
            f"the fit misses the log-binned mean by {math.exp(abs(mean_r[j])):.3g}x near step {mean_s[j]:.4g} "
            f"(tolerance {math.exp(tolerance):.3g}x)",
            worst,
            worst_step,
            rising,
        )
    if rising:
        return FitCheck(False, "the fit rises with the step while the data fall", worst, worst_step, rising)
    return FitCheck(True, None, worst, worst_step, rising)
