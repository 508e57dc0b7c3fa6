"""Knee detection: where a loss curve changes its power-law exponent.

Methods live in the registry :data:`KNEE_METHODS`, one :class:`KneeMethod` entry
per detector, and are selected by name (e.g. from the pipeline config)::

    detect_knee(steps, loss)                          # calibrated default
    detect_knee(steps, loss, method="burn_in_aic", steps_per_epoch=391)

An entry carries everything the rest of the package reads about its method: the
detector, how its options come from the config's ``analysis.fit`` block, whether
it reads the validation curve, whether H1 is also decided under its knee, and its
label, short name and colour in the report.  The config schema's allowed names,
``analyze_curve``, the fit stage, the summary and the figures all follow the
registry, so adding a method is one entry here plus its detector (see
``docs/analysis.md``, "Adding a knee method").

``"broken_power_lrt"`` (default)
    Likelihood-ratio test of a power law with floor and transient shift
    ``c + a (step + t0)^-alpha`` against the same curve with a break in the
    exponent (6 vs 4 parameters), both fitted by GLS on log-spaced bin means under
    a white + AR(1) noise model estimated from the residuals.  Because the floor and
    the plateau are *in* the null model, they cannot masquerade as knees; because
    the noise model carries the autocorrelation, AR wander does not inflate the
    evidence.  The break location is not identified under the null (Davies'
    problem), so the threshold on the (misfit-scaled) LR statistic was calibrated
    by simulation on knee-free curves (see ``docs/analysis.md`` and
    :mod:`loss_slope.analysis.calibration`).
``"burn_in_aic"``
    The protocol's burn-in end: the first epoch ``e`` at which a single power law
    beats an exponential (iid-OLS ``ΔAIC >= 2``) on the curve up to that epoch.
``"ce_threshold"``
    The protocol's other definition: the first point where the loss (validation CE)
    is <= 1.0 nats.
``"hinge"``
    The two-segment log-log hinge (continuous piecewise line in ln(step + 1)),
    best break from the O(n) cumulative-sum scan; "found" when its iid ΔAIC
    exceeds ``min_delta_aic`` (default 2).  Uncalibrated: it flags most curves
    with a floor or plateau (see the benchmark); kept for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from . import solver as S
from .data import DEFAULT_BIN_DECADES, log_t, min_points_for, prepare_curve, z_value
from .exceptions import InvalidCurve, NotEnoughPoints, UnknownMethod
from .results import KneeResult
from .scan import hinge_scan
from .search import LRT_THRESHOLD, LrtFit, fit_lrt

__all__ = [
    "KneeResult",
    "KneeMethod",
    "detect_knee",
    "KNEE_METHODS",
    "DEFAULT_KNEE_METHOD",
    "LRT_THRESHOLD",
    "broken_power_lrt",
    "lrt_knee",
]

NAN = float("nan")


def _epoch(step: float, steps_per_epoch: float | None) -> float:
    if steps_per_epoch is None or not math.isfinite(step):
        return NAN
    return step / float(steps_per_epoch)


def _check_spe(steps_per_epoch) -> float | None:
    if steps_per_epoch is None:
        return None
    spe = float(steps_per_epoch)
    if not spe > 0:
        raise ValueError("steps_per_epoch must be > 0")
    return spe


def lrt_knee(
    steps,
    loss,
    *,
    steps_per_epoch=None,
    threshold: float | None = None,
    knee_range: tuple[float, float] | None = None,
    min_change: float = 0.0,
    robust: str = "auto",
    hetero: bool = True,
    confidence: float = 0.95,
    bin_decades: float = DEFAULT_BIN_DECADES,
    nonfinite: str = "raise",
) -> tuple[KneeResult, LrtFit]:
    """The default detector's decision and the fit it was made on.

    Validates the curve, runs :func:`loss_slope.analysis.search.fit_lrt` and turns
    its statistic into a :class:`KneeResult`; ``analyze_curve`` reuses the fit for
    the model comparison and the two-break test.  Options as for
    :func:`broken_power_lrt`.
    """
    spe = _check_spe(steps_per_epoch)
    thr = LRT_THRESHOLD if threshold is None else float(threshold)
    curve = prepare_curve(steps, loss, min_points=min_points_for(6), nonfinite=nonfinite)
    prob = S.Problem(curve, bin_decades=bin_decades)
    if prob.m < 12:
        raise NotEnoughPoints(12, prob.m, "log-spaced bins")
    fit = fit_lrt(prob, knee_range=knee_range, robust=robust, hetero=hetero)
    a1, a2 = float(fit.alt.theta[1]), float(fit.alt.theta[2])
    step = fit.knee_step
    lo, hi, se = fit.knee_ci(z_value(confidence))
    found = bool(fit.stat > thr and abs(a2 - a1) >= min_change)
    neff = max(fit.noise.effective_n(curve.n), 2.0)
    res = KneeResult(
        method="broken_power_lrt",
        found=found,
        step=step if found else NAN,
        step_ci=(lo, hi) if found else (NAN, NAN),
        epoch=_epoch(step, spe) if found else NAN,
        delta_aic=fit.stat - 2.0 * 2,
        delta_bic=fit.stat - 2.0 * math.log(neff),
        statistic=fit.stat,
        threshold=thr,
        test=(
            "GLS likelihood ratio, power law (floor+shift) vs broken power law, white+AR(1) noise, "
            "simulation-calibrated threshold"
        ),
        exponent_before=a1,
        exponent_after=a2,
        n_points=curve.n,
        details=MappingProxyType(
            {
                "best_break_step": step,
                "break_step_se": se,
                "misfit_scale": fit.scale,
                "noise_ar_phi": fit.noise.ar_phi,
                "effective_n": neff,
                "robust": float(fit.robust),
                "noise_scale_ratio": fit.scale_ratio,
                "n_masked": float(curve.n_masked),
            }
        ),
    )
    return res, fit


def broken_power_lrt(steps, loss, **options) -> KneeResult:
    """Calibrated broken-power-law likelihood-ratio test (the default).

    A thin wrapper over :func:`loss_slope.analysis.search.fit_lrt` (see :func:`lrt_knee`).

    Options
    -------
    threshold : float
        Decision threshold on the scaled LR statistic (default
        :data:`LRT_THRESHOLD`, calibrated for a false-positive rate below 5 %).
    knee_range : (float, float)
        Knee search range in optimizer steps (default: step 10 to last / 10**0.3).
        Changing it changes the null distribution: recalibrate.
    min_change : float
        Minimum |exponent_after - exponent_before| to report a knee.
    hetero : bool
        Model a smooth change of the noise scale along the curve when the
        residuals show one (:func:`loss_slope.analysis.noise.estimate_scale`);
        ``False`` forces constant-scale noise.
    steps_per_epoch, confidence, bin_decades, nonfinite
        As for :func:`detect_knee` and :func:`loss_slope.analysis.fit_power_law`.
    """
    return lrt_knee(steps, loss, **options)[0]


# ====================================================================== other detectors
def _burn_in_aic(
    steps,
    loss,
    *,
    steps_per_epoch,
    min_delta_aic: float = 2.0,
    window: str = "cumulative",
    min_points: int = 10,
    nonfinite: str = "raise",
    epochs=None,
):
    """The protocol's burn-in end: first epoch where a power law beats an exponential.

    For each epoch ``e`` = 0, 1, 2, ... both models are fitted by iid OLS on log
    loss -- the power law as ``log L = b - alpha ln(step + 1)``, the exponential as
    ``log L = b - r step`` -- to the points of the window, and the knee is the first
    ``e`` with ``AIC_exp - AIC_pow >= min_delta_aic`` (both have 2 coefficients, so
    this is ``n ln(RSS_exp / RSS_pow)``).  ``window="cumulative"`` (default) uses
    the curve up to the end of epoch ``e``; ``"remaining"`` uses epoch ``e`` to the
    end (which almost always fires at epoch 0 on per-step data).  The knee step is
    the first step of epoch ``e + 1`` (cumulative) or of epoch ``e`` (remaining).
    Uncalibrated: the iid AIC ignores autocorrelation.

    ``epochs`` (one per point of ``steps``) places the epoch boundaries when ``steps`` is
    another time axis (the cumulative LR): the windows stay whole epochs of optimizer
    steps, and the knee is the axis value where its epoch starts.  Default
    ``steps / steps_per_epoch``.
    """
    if steps_per_epoch is None:
        raise TypeError("burn_in_aic needs steps_per_epoch")
    if window not in ("cumulative", "remaining"):
        raise ValueError("window must be 'cumulative' or 'remaining'")
    spe = _check_spe(steps_per_epoch)
    curve = prepare_curve(steps, loss, min_points=min_points, nonfinite=nonfinite)
    s, y = curve.steps, curve.y
    n = s.size
    lt = log_t(s)
    ss = s / spe
    if epochs is None:
        ep = ss
    else:
        raw = np.asarray(steps, dtype=float)
        if np.shape(epochs) != raw.shape:
            raise InvalidCurve("epochs must have one value per step")
        ep = np.interp(s, raw, np.asarray(epochs, dtype=float))  # at the points the curve kept
    # centre for numerical stability; prefix sums give every window in O(1)
    y0, x0, t0 = y.mean(), lt.mean(), ss.mean()
    yc, xc, tc = y - y0, lt - x0, ss - t0

    def pre(a):
        return np.concatenate(([0.0], np.cumsum(a)))

    P = {
        k: pre(v)
        for k, v in dict(
            one=np.ones(n), y=yc, yy=yc * yc, x=xc, xx=xc * xc, xy=xc * yc, t=tc, tt=tc * tc, ty=tc * yc
        ).items()
    }

    def rss(i0, i1, a):
        k = i1 - i0
        sy = P["y"][i1] - P["y"][i0]
        sa = P[a][i1] - P[a][i0]
        vaa = P[a + a][i1] - P[a + a][i0] - sa * sa / k
        vay = P[a + "y"][i1] - P[a + "y"][i0] - sa * sy / k
        vyy = P["yy"][i1] - P["yy"][i0] - sy * sy / k
        return max(vyy - (vay * vay / vaa if vaa > 0 else 0.0), 1e-300)

    e_max = int(math.floor(ep[-1]))
    first = None
    last_delta = NAN
    for e in range(0, e_max + 1):
        if window == "cumulative":
            i0, i1 = 0, int(np.searchsorted(ep, e + 1, side="left"))
        else:
            i0, i1 = int(np.searchsorted(ep, e, side="left")), n
        k = i1 - i0
        if k < min_points:
            if window == "cumulative":
                continue
            break
        delta = k * (math.log(rss(i0, i1, "t")) - math.log(rss(i0, i1, "x")))
        last_delta = delta
        if delta >= min_delta_aic:
            first = (e, delta)
            break
    found = first is not None
    knee_epoch = (first[0] + 1 if window == "cumulative" else first[0]) if found else NAN
    if not found:
        step = NAN
    elif knee_epoch > ep[-1]:
        step = float(s[-1])
    else:
        step = float(knee_epoch * spe) if epochs is None else float(np.interp(knee_epoch, ep, s))
    return KneeResult(
        method="burn_in_aic",
        found=found,
        step=step,
        step_ci=(NAN, NAN),
        epoch=float(knee_epoch) if found else NAN,
        delta_aic=float(first[1]) if found else float(last_delta),
        delta_bic=float(first[1]) if found else float(last_delta),
        statistic=float(first[1]) if found else float(last_delta),
        threshold=float(min_delta_aic),
        test=f"iid OLS AIC(exponential) - AIC(power law), {window} window, >= threshold",
        n_points=curve.n,
        details=MappingProxyType({"epoch_index": float(first[0]) if found else NAN}),
    )


def _ce_threshold(
    steps, loss, *, steps_per_epoch=None, threshold_nats: float = 1.0, unit: str = "nats", nonfinite: str = "raise"
):
    """First point where the loss (validation CE) is <= ``threshold_nats``.

    ``unit="bits"`` converts the threshold to bits (``threshold_nats / ln 2``) so
    the same step is found whatever unit the loss is logged in.
    """
    spe = _check_spe(steps_per_epoch)
    if unit not in ("nats", "bits"):
        raise ValueError("unit must be 'nats' or 'bits'")
    curve = prepare_curve(steps, loss, min_points=1, nonfinite=nonfinite)
    thr = threshold_nats if unit == "nats" else threshold_nats / math.log(2.0)
    # compare in log space so that nats and bits give bit-identical decisions
    hit = np.flatnonzero(curve.y - math.log(thr) <= 1e-12)
    found = hit.size > 0
    step = float(curve.steps[hit[0]]) if found else NAN
    return KneeResult(
        method="ce_threshold",
        found=found,
        step=step,
        step_ci=(NAN, NAN),
        epoch=_epoch(step, spe),
        delta_aic=NAN,
        delta_bic=NAN,
        statistic=float(np.min(curve.loss)),
        threshold=float(thr),
        test=f"first loss <= {threshold_nats:g} nats",
        n_points=curve.n,
    )


def _hinge(
    steps, loss, *, steps_per_epoch=None, min_delta_aic: float = 2.0, min_size: int = 10, nonfinite: str = "raise"
):
    """Best continuous two-segment fit in (ln(step + 1), log loss), from the O(n) scan.

    Found when ``AIC(line) - AIC(hinge) > min_delta_aic`` with the break counted as
    a parameter (iid OLS likelihood).
    """
    spe = _check_spe(steps_per_epoch)
    curve = prepare_curve(steps, loss, min_points=2 * min_size + 1, nonfinite=nonfinite)
    sc = hinge_scan(log_t(curve.steps), curve.y, min_size=min_size)
    # count the break as a 4th parameter for the decision
    d_aic = float(sc.aic_line - (sc.aic[sc.best] + 2.0))
    d_bic = float(sc.bic_line - (sc.bic[sc.best] + math.log(curve.n)))
    step = float(curve.steps[sc.candidates[sc.best]])
    found = d_aic > min_delta_aic
    return KneeResult(
        method="hinge",
        found=bool(found),
        step=step if found else NAN,
        step_ci=(NAN, NAN),
        epoch=_epoch(step, spe) if found else NAN,
        delta_aic=d_aic,
        delta_bic=d_bic,
        statistic=d_aic,
        threshold=float(min_delta_aic),
        test="iid OLS ΔAIC, line vs continuous hinge in ln(step+1) (uncalibrated)",
        exponent_before=-sc.slope_before,
        exponent_after=-sc.slope_after,
        n_points=curve.n,
        details=MappingProxyType({"best_break_step": step}),
    )


# ====================================================================== the registry
#: Config options of a method: ``(analysis.fit block, loss unit) -> keyword options of its detector``.
OptionsFromConfig = Callable[[Mapping[str, Any], str], dict]


def no_options(fit: Mapping[str, Any], loss_unit: str) -> dict:
    """Options of a method that takes none from the config."""
    return {}


@dataclass(frozen=True)
class KneeMethod:
    """One knee detector and what the pipeline and the report need to know about it.

    Attributes
    ----------
    name : str
        Registry key; the config's ``analysis.fit.knee_methods`` and the row's
        ``knee_<name>_*`` columns use it.
    detect : callable
        ``detect(steps, loss, *, steps_per_epoch, **options) -> KneeResult``; it raises
        an :class:`~loss_slope.analysis.exceptions.AnalysisError` for a curve it cannot judge.
    label : str
        Its legend label in the figures.
    short : str
        Its short name in the figures' tick labels.
    color : str
        Its matplotlib colour in the figures.
    options : callable
        ``options(fit, loss_unit) -> dict``: the detector's keyword options from the
        config's ``analysis.fit`` block and ``analysis.loss_unit``.
    uses_validation : bool
        The detector reads the validation curve, on the step axis, when the run has
        one (the training curve on the analysis time axis otherwise).
    h1_criterion : str or None
        When set, H1 is also decided after this method's knee (``shape_by_knee``) and
        this is the criterion's label in the summary; ``None``: it is not.
    epoch_windows : bool
        The detector works in whole epochs: on another time axis it is given each
        point's epoch of optimizer steps (``epochs=``), so its windows stay epochs.
    """

    name: str
    detect: Callable[..., KneeResult]
    label: str
    short: str
    color: str
    options: OptionsFromConfig = no_options
    uses_validation: bool = False
    h1_criterion: str | None = None
    epoch_windows: bool = False


#: The knee detectors by name, in the order the report lists them.
KNEE_METHODS: dict[str, KneeMethod] = {
    m.name: m
    for m in (
        KneeMethod(
            name="broken_power_lrt",
            detect=broken_power_lrt,
            label="LRT knee (calibrated)",
            short="LRT",
            color="#d62728",
            options=lambda fit, loss_unit: {"threshold": float(fit["lrt_threshold"])},
        ),
        KneeMethod(
            name="burn_in_aic",
            detect=_burn_in_aic,
            label="burn-in end (AIC)",
            short="AIC",
            color="#9467bd",
            options=lambda fit, loss_unit: {"min_delta_aic": float(fit["burn_in_min_delta_aic"])},
            h1_criterion="one power law after the burn-in end found by AIC",
            epoch_windows=True,
        ),
        KneeMethod(
            name="ce_threshold",
            detect=_ce_threshold,
            label="val CE ≤ threshold",
            short="CE",
            color="#8c564b",
            options=lambda fit, loss_unit: {"threshold_nats": float(fit["ce_threshold_nats"]), "unit": loss_unit},
            uses_validation=True,
            h1_criterion="one power law after the validation CE first reaches the threshold",
        ),
        KneeMethod(
            name="hinge",
            detect=_hinge,
            label="hinge (uncalibrated)",
            short="hinge",
            color="#17becf",
            options=lambda fit, loss_unit: {"min_delta_aic": float(fit["hinge_min_delta_aic"])},
        ),
    )
}

#: Name of the default (calibrated) detector: ``analyze_curve`` always runs it, and
#: the post-knee power law, α_full and the main H1 decision start at its knee.
DEFAULT_KNEE_METHOD = "broken_power_lrt"


def detect_knee(steps, loss, *, method: str = DEFAULT_KNEE_METHOD, **options) -> KneeResult:
    """Detect the knee of a loss curve.

    Parameters
    ----------
    steps : array_like, shape (n,)
        0-based optimizer steps, strictly increasing.
    loss : array_like, shape (n,)
        Loss (> 0).  Nats or bits give the same knee.
    method : str
        Name in :data:`KNEE_METHODS`; default ``"broken_power_lrt"``.
    **options
        Keyword options of the method (e.g. ``steps_per_epoch``, ``threshold``).

    Returns
    -------
    KneeResult
        ``found``, ``step`` (NaN when not found), ``step_ci``, ``delta_aic``,
        ``delta_bic``, ``statistic``, ``threshold`` and ``test``.

    Raises
    ------
    UnknownMethod
        If ``method`` is not registered.
    InvalidCurve
        Bad input.
    """
    try:
        entry = KNEE_METHODS[method]
    except KeyError:
        raise UnknownMethod("knee", method, KNEE_METHODS) from None
    return entry.detect(steps, loss, **options)
