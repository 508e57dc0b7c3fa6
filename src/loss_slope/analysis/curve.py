"""One-call analysis of a run's loss curve, for the pipeline's per-run fit stage.

``analyze_curve`` runs the knee detectors, the three model fits (sharing one noise
model, so their AIC/BIC are comparable), the post-knee power law, α_early and
α_full, and returns a frozen :class:`CurveAnalysis` whose ``to_dict()`` is a flat
JSON-serialisable row.  A component that cannot be computed (e.g. a curve too short
for the early window) does not abort the run: its fields are NaN and the reason is
recorded under ``errors`` (and as ``error_<component>`` in the dict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from ._data import DEFAULT_BIN_DECADES, min_points_for, prepare_curve
from .exceptions import AnalysisError, UnknownMethod
from .fits import (
    ModelComparison,
    PowerLawFit,
    TwoPowerLawFit,
    _comparison,
    _result_from_core,
    fit_exponential,
    fit_power_law,
)
from .knee import DEFAULT_KNEE_METHOD, KNEE_METHODS, KneeResult, _broken_power_lrt, detect_knee
from .slopes import EARLY_WINDOW, SlopeResult, alpha_full, alpha_window

__all__ = ["CurveAnalysis", "analyze_curve"]

NAN = float("nan")


@dataclass(frozen=True)
class CurveAnalysis:
    """Everything the per-run fit stage records.

    Attributes
    ----------
    knees : Mapping[str, KneeResult]
        One result per requested knee method.
    comparison : ModelComparison or None
        Exponential vs power law vs broken power law (common noise model).
    power_post_knee : PowerLawFit or None
        Power law (floor + shift) fitted from the default knee to the end (the whole
        curve when no knee was found); its ``r2`` is the H1 statistic.
    alpha_early : SlopeResult or None
    alpha_full : SlopeResult or None
    best_val_ce : float
        Minimum validation loss (input unit), NaN when no validation curve given.
    steps_per_epoch : float
    n_points : int
    n_masked : int
    errors : Mapping[str, str]
        Component -> reason, for every component that could not be computed.
    """

    knees: Mapping[str, KneeResult]
    comparison: ModelComparison | None
    power_post_knee: PowerLawFit | None
    alpha_early: SlopeResult | None
    alpha_full: SlopeResult | None
    best_val_ce: float
    steps_per_epoch: float
    n_points: int
    n_masked: int
    errors: Mapping[str, str]

    def to_dict(self) -> dict[str, float | int | str | bool]:
        """Flat, strictly JSON-serialisable row.

        Missing numbers are ``None`` (null): a knee that was not found, or a
        component that failed -- whose reason is under ``error_<component>``.
        """
        out: dict = {"n_points": self.n_points, "n_masked": self.n_masked, "steps_per_epoch": self.steps_per_epoch}
        for name, k in self.knees.items():
            out.update(k.to_dict(prefix=f"knee_{name}_"))
        if self.comparison is not None:
            out.update(self.comparison.to_dict())
            for model, fit in self.comparison.fits.items():
                for pname, est in fit.params.items():
                    out[f"{model}_{pname}"] = est.value
                    out[f"{model}_{pname}_se"] = est.stderr
        if self.power_post_knee is not None:
            p = self.power_post_knee
            out.update(
                {
                    "power_r2": p.r2,
                    "power_r2_binned": p.r2_binned,
                    "power_exponent": p.exponent,
                    "power_exponent_ci_low": p.exponent_ci[0],
                    "power_exponent_ci_high": p.exponent_ci[1],
                    "power_floor": p.floor,
                    "power_shift": p.shift,
                    "power_start_step": p.step_range[0],
                }
            )
        else:
            out.update({"power_r2": NAN, "power_r2_binned": NAN, "power_exponent": NAN})
        for name, sr in (("alpha_early", self.alpha_early), ("alpha_full", self.alpha_full)):
            if sr is not None:
                out.update(sr.to_dict(prefix=name))
            else:
                out.update({name: NAN, f"{name}_se": NAN, f"{name}_ci_low": NAN, f"{name}_ci_high": NAN})
        out["best_val_ce"] = self.best_val_ce
        for comp, msg in self.errors.items():
            out[f"error_{comp}"] = msg
        return {k: (_jsonable(v)) for k, v in out.items()}


def _jsonable(v):
    """Plain Python scalars; NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v


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
        Validation curve; used for ``best_val_ce`` and by ``ce_threshold`` (which
        otherwise uses the training loss).
    confidence : float
    bin_decades : float
    nonfinite : {"raise", "drop"}

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
    errors: dict[str, str] = {}
    knees: dict[str, KneeResult] = {}
    comparison = None
    power = None

    # default detector; its fits double as the power / two-power model fits
    try:
        dopts = dict(opts.get(DEFAULT_KNEE_METHOD, {}))
        res, lrt = _broken_power_lrt(
            s, l_, steps_per_epoch=spe, confidence=confidence, bin_decades=bin_decades, _return_fit=True, **dopts
        )
        knees[DEFAULT_KNEE_METHOD] = res
        try:
            pw = _result_from_core(
                PowerLawFit, lrt.problem, lrt.null, lrt.noise, confidence=confidence, robust=lrt.robust
            )
            tw = _result_from_core(
                TwoPowerLawFit, lrt.problem, lrt.alt, lrt.noise, confidence=confidence, robust=lrt.robust
            )
            ex = fit_exponential(
                s, l_, estimator="gls", noise=lrt.noise, confidence=confidence, bin_decades=bin_decades
            )
            comparison = _comparison({"exponential": ex, "power": pw, "two_power": tw}, lrt.noise)
        except AnalysisError as exc:
            errors["comparison"] = str(exc)
    except AnalysisError as exc:
        errors[f"knee_{DEFAULT_KNEE_METHOD}"] = str(exc)
        res = None
    knee_step = res.step if (res is not None and res.found) else None

    for name in knee_methods:
        if name == DEFAULT_KNEE_METHOD:
            continue
        o = dict(opts.get(name, {}))
        o.setdefault("steps_per_epoch", spe)
        xs, xl = s, l_
        if name == "ce_threshold" and val_loss is not None:
            xs, xl = val_steps, val_loss
        try:
            knees[name] = detect_knee(xs, xl, method=name, **o)
        except AnalysisError as exc:
            errors[f"knee_{name}"] = str(exc)

    try:
        sel = s >= (knee_step if knee_step is not None else -math.inf)
        power = fit_power_law(s[sel], l_[sel], confidence=confidence, bin_decades=bin_decades)
    except AnalysisError as exc:
        errors["power_post_knee"] = str(exc)

    a_early = a_full = None
    try:
        a_early = alpha_window(s, l_, early_window[0], early_window[1], spe, confidence=confidence)
    except AnalysisError as exc:
        errors["alpha_early"] = str(exc)
    try:
        a_full = alpha_full(s, l_, knee_step=knee_step, steps_per_epoch=spe, confidence=confidence)
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
        alpha_early=a_early,
        alpha_full=a_full,
        best_val_ce=best_val,
        steps_per_epoch=spe,
        n_points=curve.n,
        n_masked=curve.n_masked,
        errors=MappingProxyType(errors),
    )
