"""One-call analysis of a run's loss curve, for the pipeline's per-run fit stage.

``analyze_curve`` runs the knee detectors, the three model fits (sharing one noise
model, so their AIC/BIC are comparable), the post-knee power law, α_early and
α_full, and returns a frozen :class:`CurveAnalysis` whose ``to_dict()`` is a flat
JSON-serialisable row.  A component that cannot be computed (e.g. a curve too short
for the early window) does not abort the run: its fields are NaN and the reason is
recorded under ``errors`` (and as ``error_<component>`` in the dict).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .data import DEFAULT_BIN_DECADES, min_points_for, prepare_curve, time_on_curve
from .exceptions import AnalysisError, InvalidCurve, NotEnoughPoints, UnknownMethod
from .fits import comparison_from_lrt, fit_power_law
from .knee import DEFAULT_KNEE_METHOD, KNEE_METHODS, detect_knee, lrt_knee
from .results import CurveAnalysis, FitCheck, KneeResult, ShapeTest
from .shape import check_fit, single_power_law
from .slopes import EARLY_WINDOW, SlopeResult, alpha_full, alpha_window
from .two_break import two_break_test

__all__ = ["CurveAnalysis", "analyze_curve", "cumulative_lr"]

NAN = float("nan")


def cumulative_lr(lr) -> np.ndarray:
    """The learning-rate time axis: Σ lr over the steps before each step, in steps at peak LR.

    The loss logged at step ``i`` is measured before update ``i``, so its time is
    ``sum(lr[:i]) / max(lr)``: 0 at step 0 and equal to the step count wherever the
    LR sits at its peak.  Under warm-up and decay this is the axis on which a
    schedule-free power law stays a power law (the "S1" of the learning-rate
    annealing scaling law of Tissue et al., 2024).

    Parameters
    ----------
    lr : array_like, shape (n,)
        Learning rate of every logged step, as logged (>= 0).

    Returns
    -------
    ndarray, shape (n,)
    """
    lr = np.asarray(lr, dtype=float)
    if lr.size == 0 or not np.all(np.isfinite(lr)) or np.any(lr < 0) or not np.max(lr) > 0:
        raise InvalidCurve("the learning rate must be finite, >= 0 and not all zero")
    return np.concatenate(([0.0], np.cumsum(lr[:-1]))) / float(np.max(lr))


@dataclass(frozen=True)
class _TimeAxis:
    """The fit's time axis and its map back to optimizer steps."""

    name: str
    t: np.ndarray
    steps: np.ndarray
    keep: np.ndarray | None

    @classmethod
    def of(cls, steps, time, curve) -> _TimeAxis:
        if time is None:
            return cls("step", curve.steps, curve.steps, None)
        tt, keep = time_on_curve(steps, time, curve)
        return cls("time", tt[keep], curve.steps[keep], keep)

    def to_steps(self, t: float) -> float:
        return float(np.interp(t, self.t, self.steps)) if math.isfinite(t) else t

    def from_steps(self, step: float) -> float:
        return float(np.interp(step, self.steps, self.t)) if math.isfinite(step) else step

    def epoch_to_t(self, epoch: float, spe: float) -> float:
        if self.name == "step":
            return epoch
        return float(np.interp(epoch * spe, self.steps, self.t)) / spe

    def knee_in_steps(self, k: KneeResult, spe: float) -> KneeResult:
        if self.name == "step" or not k.found:
            return k
        step = self.to_steps(k.step)
        lo, hi = k.step_ci
        return dataclasses.replace(k, step=step, step_ci=(self.to_steps(lo), self.to_steps(hi)), epoch=step / spe)

    def slope_in_steps(self, sr: SlopeResult, spe: float, window=None) -> SlopeResult:
        """A slope fitted on this axis, its first and last point as steps and its bounds
        in epochs of steps (a window: the epochs it was asked for)."""
        if self.name == "step":
            return sr
        if window is None:
            window = (self.to_steps(sr.start_epoch * spe) / spe, self.to_steps(sr.end_epoch * spe) / spe)
        return dataclasses.replace(
            sr,
            start_step=self.to_steps(sr.start_step),
            end_step=self.to_steps(sr.end_step),
            start_epoch=float(window[0]),
            end_epoch=float(window[1]),
        )


def analyze_curve(
    steps,
    loss,
    *,
    steps_per_epoch: float,
    knee_methods: Sequence[str] = (DEFAULT_KNEE_METHOD, "burn_in_aic"),
    knee_options: Mapping[str, Mapping] | None = None,
    early_window: tuple[float, float] = EARLY_WINDOW,
    val_steps=None,
    val_loss=None,
    confidence: float = 0.95,
    bin_decades: float = DEFAULT_BIN_DECADES,
    nonfinite: str = "raise",
    time=None,
    h1_knee_methods: Sequence[str] = (),
) -> CurveAnalysis:
    """Analyse one training-loss curve.

    Parameters
    ----------
    steps : array_like, shape (n,)
        0-based optimizer steps of the training loss.
    loss : array_like, shape (n,)
        Per-step training loss (> 0), nats or bits.
    steps_per_epoch : float
        Optimizer steps per epoch.
    knee_methods : sequence of str
        Knee detectors to run (names in ``KNEE_METHODS``).  The default detector is
        always run, because α_full and the post-knee power law start at its knee.
    knee_options : mapping, optional
        Per-method keyword options, e.g. ``{"ce_threshold": {"threshold_nats": 1.0}}``.
    early_window : (float, float)
        α_early window in epochs (default 5-15).
    val_steps, val_loss : array_like, optional
        Validation curve; used for ``best_val_ce`` and by the knee methods whose
        registry entry has ``uses_validation`` (e.g. ``ce_threshold``; without a
        validation curve they read the training loss).
    confidence : float
    bin_decades : float
    nonfinite : {"raise", "drop"}
    time : array_like, shape (n,), optional
        Another time axis for the knees, fits, H1 test and slopes, one value per
        step, strictly increasing where kept: e.g. :func:`cumulative_lr`.  Knee
        steps are reported back on the step axis, and windows are still chosen in
        epochs of steps.  ``None``: the optimizer step.
    h1_knee_methods : sequence of str
        Knee methods (among ``knee_methods``, other than the default) under whose
        knee the H1 decision is also made (``shape_by_knee``).

    Returns
    -------
    CurveAnalysis

    Raises
    ------
    InvalidCurve
        When the training curve itself is unusable (a domain error to record as the
        run's exclusion reason).
    UnknownMethod
        For an unknown knee method name.
    """
    for name in knee_methods:
        if name not in KNEE_METHODS:
            raise UnknownMethod("knee", name, KNEE_METHODS)
    spe = float(steps_per_epoch)
    if not spe > 0:
        raise ValueError("steps_per_epoch must be > 0")
    opts = {k: dict(v) for k, v in (knee_options or {}).items()}
    curve = prepare_curve(steps, loss, min_points=min_points_for(6), nonfinite=nonfinite)
    s, l_ = curve.steps, curve.loss
    axis = _TimeAxis.of(steps, time, curve)
    t = axis.t
    if axis.keep is not None:
        s, l_ = s[axis.keep], l_[axis.keep]
    errors: dict[str, str] = {}
    knees: dict[str, KneeResult] = {}
    checks: dict[str, FitCheck] = {}
    comparison = None
    power = None
    shape = None
    two_break = None

    # default detector; its fits double as the power / two-power model fits
    try:
        dopts = dict(opts.get(DEFAULT_KNEE_METHOD, {}))
        res, lrt = lrt_knee(t, l_, steps_per_epoch=spe, confidence=confidence, bin_decades=bin_decades, **dopts)
        knees[DEFAULT_KNEE_METHOD] = axis.knee_in_steps(res, spe)
        try:
            two_break = two_break_test(t, l_, bin_decades=bin_decades, knee_fit=lrt)
        except AnalysisError as exc:
            errors["h1_two_break"] = str(exc)
        try:
            comparison = comparison_from_lrt(lrt, confidence=confidence)
            for model, fit in comparison.fits.items():
                checks[model] = check_fit(fit, t, l_)
        except AnalysisError as exc:
            errors["comparison"] = str(exc)
    except AnalysisError as exc:
        errors[f"knee_{DEFAULT_KNEE_METHOD}"] = str(exc)
        res = None
    knee_t = res.step if (res is not None and res.found) else None

    for name in knee_methods:
        if name == DEFAULT_KNEE_METHOD:
            continue
        o = dict(opts.get(name, {}))
        o.setdefault("steps_per_epoch", spe)
        if KNEE_METHODS[name].uses_validation and val_loss is not None:
            # read on the validation curve's own steps: its knee is already on the step axis
            xs, xl, knee_method_axis = val_steps, val_loss, None
        else:
            xs, xl, knee_method_axis = t, l_, axis
            if axis.name != "step" and KNEE_METHODS[name].epoch_windows:
                o["epochs"] = axis.steps / spe
        try:
            k = detect_knee(xs, xl, method=name, **o)
            knees[name] = knee_method_axis.knee_in_steps(k, spe) if knee_method_axis is not None else k
        except AnalysisError as exc:
            errors[f"knee_{name}"] = str(exc)

    try:
        sel = t >= (knee_t if knee_t is not None else -math.inf)
        power = fit_power_law(t[sel], l_[sel], confidence=confidence, bin_decades=bin_decades)
        checks["post_knee"] = check_fit(power, t[sel], l_[sel])
    except AnalysisError as exc:
        errors["power_post_knee"] = str(exc)
    try:
        shape = single_power_law(
            t,
            l_,
            knee_step=knee_t,
            threshold=dopts.get("threshold"),
            confidence=confidence,
            bin_decades=bin_decades,
            segment_fit=power,
            two_break=two_break,
            two_break_error=errors.get("h1_two_break"),
        )
    except AnalysisError as exc:
        errors["h1_single_power_law"] = str(exc)

    by_knee: dict[str, ShapeTest] = {}
    for name in h1_knee_methods:
        k = knees.get(name)
        if k is None or name == DEFAULT_KNEE_METHOD:
            continue
        try:
            by_knee[name] = single_power_law(
                t,
                l_,
                knee_step=axis.from_steps(k.step) if k.found else None,
                threshold=dopts.get("threshold"),
                confidence=confidence,
                bin_decades=bin_decades,
            )
        except AnalysisError as exc:
            errors[f"h1_single_power_law_knee_{name}"] = str(exc)

    a_early = a_full = None
    try:
        if axis.name != "step" and axis.steps[-1] < early_window[1] * spe - 1.0 - 1e-9 * spe:
            # on another axis the window's end is mapped through the steps there are, which would
            # silently truncate it: the coverage is judged in steps, as on the step axis
            raise NotEnoughPoints(
                int(math.ceil(early_window[1] * spe)),
                int(axis.steps[-1]) + 1,
                "steps to cover the window (curve ends early)",
            )
        a_early = alpha_window(
            t,
            l_,
            axis.epoch_to_t(early_window[0], spe),
            axis.epoch_to_t(early_window[1], spe),
            spe,
            confidence=confidence,
        )
        a_early = axis.slope_in_steps(a_early, spe, early_window)
    except AnalysisError as exc:
        errors["alpha_early"] = str(exc)
    try:
        a_full = alpha_full(
            t,
            l_,
            knee_step=knee_t,
            steps_per_epoch=spe,
            confidence=confidence,
            fallback_start_epoch=axis.epoch_to_t(1.0, spe),
        )
        a_full = axis.slope_in_steps(a_full, spe)
    except AnalysisError as exc:
        errors["alpha_full"] = str(exc)

    best_val = NAN
    if val_loss is not None:
        try:
            vc = prepare_curve(
                val_steps if val_steps is not None else np.arange(len(val_loss)),
                val_loss,
                min_points=1,
                nonfinite=nonfinite,
            )
            best_val = float(np.min(vc.loss))
        except AnalysisError as exc:
            errors["best_val_ce"] = str(exc)

    return CurveAnalysis(
        knees=MappingProxyType(knees),
        comparison=comparison,
        power_post_knee=power,
        shape=shape,
        fit_checks=MappingProxyType(checks),
        post_knee_start_step=axis.to_steps(knee_t) if knee_t is not None else float(s[0]),
        shape_by_knee=MappingProxyType(by_knee),
        time_axis=axis.name,
        alpha_early=a_early,
        alpha_full=a_full,
        best_val_ce=best_val,
        steps_per_epoch=spe,
        n_points=curve.n,
        n_masked=curve.n_masked,
        errors=MappingProxyType(errors),
    )
