"""Result types of the analysis: what every fit, test and detector returns.

Frozen dataclasses with a flat ``to_dict()`` (the pipeline's row) and, for the fits,
the knee detectors and the model comparison, a short text ``summary()``.  Each
model of :mod:`loss_slope.analysis.models` names its fit's result type here
(``ModelSpec.result_type``); this module does not import the models: a fitted
result carries its mean function for :meth:`FitResult.predict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from .noise import NoiseModel
from .slopes import SlopeResult

__all__ = [
    "Estimate",
    "ResidualDiagnostics",
    "FitResult",
    "PowerLawFit",
    "ExponentialFit",
    "TwoPowerLawFit",
    "ModelComparison",
    "KneeResult",
    "FitCheck",
    "TwoBreakTest",
    "ShapeTest",
    "CurveAnalysis",
]

NAN = float("nan")


def _g(v: float) -> str:
    """Four significant digits (``nan`` and ``inf`` as such)."""
    return f"{v:.4g}"


# ====================================================================== fits
@dataclass(frozen=True)
class Estimate:
    """A parameter estimate.

    Attributes
    ----------
    value : float
    stderr : float
        Standard error (0 for a fixed parameter).
    ci : tuple of float
        (low, high) confidence interval at the fit's ``confidence``.
    """

    value: float
    stderr: float
    ci: tuple[float, float]


@dataclass(frozen=True)
class ResidualDiagnostics:
    """Residual checks of a fit (raw log-loss residuals).

    Attributes
    ----------
    sigma : float
        Residual s.d. (log units).
    robust_sigma : float
        1.4826 x MAD of the residuals.
    lag1_autocorr : float
        Lag-1 autocorrelation of the residuals.
    durbin_watson : float
    skewness, excess_kurtosis : float
    heavy_tailed : bool
        Whether the Huber fallback criterion fired.
    noise : NoiseModel
        White + AR(1) model fitted to the residuals.
    effective_n : float
        Effective number of independent points.
    reduced_chi2 : float
        GLS chi-square of the bin means per degree of freedom (about 1 when the
        mean model and noise model fit).
    """

    sigma: float
    robust_sigma: float
    lag1_autocorr: float
    durbin_watson: float
    skewness: float
    excess_kurtosis: float
    heavy_tailed: bool
    noise: NoiseModel
    effective_n: float
    reduced_chi2: float


@dataclass(frozen=True)
class FitResult:
    """Common part of every fit result.

    Attributes
    ----------
    model : str
        ``"power"``, ``"exponential"`` or ``"two_power"``.
    params : Mapping[str, Estimate]
        Estimates in physical units (loss unit of the input, optimizer steps).
    fixed : tuple of str
        Names of parameters held fixed.
    n_obs : int
        Number of points fitted.
    n_params : int
        Number of free mean parameters (statsmodels' ``k``).
    rss : float
        Raw residual sum of squares of log loss.
    loglik, aic, bic : float
        iid-Gaussian criteria (statsmodels convention).
    aic_ac, bic_ac : float
        Autocorrelation-aware criteria (noise-model likelihood of the bin means).
    r2 : float
        R^2 of log loss over the raw points.
    r2_binned : float
        R^2 of the log-binned mean log loss (each bin weighted equally), i.e. the
        straightness seen on a log-log plot.
    estimator : str
    se_method : str
    robust : bool
        Whether the Huber fallback was used.
    confidence : float
    converged : bool
    n_masked : int
        Non-finite points dropped (``nonfinite="drop"``).
    step_range : tuple of float
        First and last step fitted.
    diagnostics : ResidualDiagnostics
    at_bound : Mapping[str, bool]
        Per fitted parameter: whether the estimate sits on a bound of its box.
    hit_bound : tuple of str
        Parameters on a bound that is not a natural value of the model: every
        bound except a zero floor and the shift's lower bound (no transient).  A fit
        with a non-empty ``hit_bound`` is an edge solution, not an interior optimum.
    """

    model: str
    params: Mapping[str, Estimate]
    fixed: tuple[str, ...]
    n_obs: int
    n_params: int
    rss: float
    loglik: float
    aic: float
    bic: float
    aic_ac: float
    bic_ac: float
    r2: float
    r2_binned: float
    estimator: str
    se_method: str
    robust: bool
    confidence: float
    converged: bool
    n_masked: int
    step_range: tuple[float, float]
    diagnostics: ResidualDiagnostics
    theta: tuple[float, ...] = field(repr=False)
    y_ref: float = field(repr=False)
    #: the model's mean function with ``model_consts`` bound: ``mean(theta, steps, jac=False) -> (m, None)``
    #: in log loss minus ``y_ref``
    mean: Callable = field(repr=False, compare=False)
    model_consts: Mapping[str, float] = field(repr=False, default_factory=lambda: MappingProxyType({}))
    at_bound: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    hit_bound: tuple[str, ...] = ()

    def predict(self, steps) -> np.ndarray:
        """Fitted loss at ``steps`` (same unit as the input loss).

        Parameters
        ----------
        steps : array_like, shape (k,)

        Returns
        -------
        ndarray, shape (k,)
        """
        m, _ = self.mean(np.asarray(self.theta), np.asarray(steps, dtype=float), jac=False)
        return np.exp(m + self.y_ref)

    def summary(self) -> str:
        """A short text table of the fit (estimates, intervals, criteria, noise)."""
        pct = f"{100 * self.confidence:g}%"
        lines = [
            f"{type(self).__name__} ({self.model}): {self.n_obs} points, steps {_g(self.step_range[0])} to "
            f"{_g(self.step_range[1])}, {self.estimator.upper()}" + (", Huber" if self.robust else ""),
            f"  {'parameter':<16} {'value':>11} {'s.e.':>11}   {pct} interval",
        ]
        for name, est in self.params.items():
            mark = " (fixed)" if name in self.fixed else (" (at bound)" if self.at_bound.get(name) else "")
            lines.append(
                f"  {name:<16} {_g(est.value):>11} {_g(est.stderr):>11}   [{_g(est.ci[0])}, {_g(est.ci[1])}]{mark}"
            )
        d = self.diagnostics
        lines += [
            f"  AIC {self.aic:.1f}  BIC {self.bic:.1f}  AIC_ac {self.aic_ac:.1f}  BIC_ac {self.bic_ac:.1f}  "
            f"R2 {self.r2:.4f} (binned {self.r2_binned:.4f})",
            f"  noise: AR(1) phi {d.noise.ar_phi:.3f}, effective n {d.effective_n:.0f}, "
            f"reduced chi2 {d.reduced_chi2:.3g}" + ("" if self.converged else "; NOT CONVERGED"),
        ]
        return "\n".join(lines)

    def to_dict(self, prefix: str = "") -> dict[str, float | int | str | bool]:
        """Flat JSON-serialisable summary."""
        out: dict = {}
        for name, est in self.params.items():
            out[f"{prefix}{name}"] = est.value
            out[f"{prefix}{name}_se"] = est.stderr
            out[f"{prefix}{name}_ci_low"] = est.ci[0]
            out[f"{prefix}{name}_ci_high"] = est.ci[1]
            out[f"{prefix}{name}_at_bound"] = bool(self.at_bound.get(name, False))
        out[f"{prefix}hit_bound"] = ",".join(self.hit_bound) or None
        for key in ("aic", "bic", "aic_ac", "bic_ac", "r2", "r2_binned", "rss", "loglik"):
            out[f"{prefix}{key}"] = float(getattr(self, key))
        out[f"{prefix}n_obs"] = self.n_obs
        out[f"{prefix}robust"] = self.robust
        out[f"{prefix}reduced_chi2"] = self.diagnostics.reduced_chi2
        out[f"{prefix}noise_ar_phi"] = self.diagnostics.noise.ar_phi
        out[f"{prefix}effective_n"] = self.diagnostics.effective_n
        return out


@dataclass(frozen=True)
class PowerLawFit(FitResult):
    """loss = floor + amplitude * (step + shift)^(-exponent)."""

    @property
    def exponent(self) -> float:
        """Power-law exponent alpha (dimensionless)."""
        return self.params["exponent"].value

    @property
    def exponent_se(self) -> float:
        return self.params["exponent"].stderr

    @property
    def exponent_ci(self) -> tuple[float, float]:
        """(low, high) confidence interval of alpha."""
        return self.params["exponent"].ci

    @property
    def amplitude(self) -> float:
        return self.params["amplitude"].value

    @property
    def floor(self) -> float:
        """Loss floor c (input unit)."""
        return self.params["floor"].value

    @property
    def shift(self) -> float:
        """Transient shift t0 (steps)."""
        return self.params["shift"].value


@dataclass(frozen=True)
class ExponentialFit(FitResult):
    """loss = amplitude * exp(-rate * step)."""

    @property
    def rate(self) -> float:
        """Decay rate per optimizer step."""
        return self.params["rate"].value

    @property
    def rate_ci(self) -> tuple[float, float]:
        return self.params["rate"].ci


@dataclass(frozen=True)
class TwoPowerLawFit(FitResult):
    """Broken power law: floor + A * g(step + shift), exponent changing at a break.

    The break is rounded by a softplus of width ``KNEE_WIDTH`` in ln(step + shift).
    """

    @property
    def exponent_before(self) -> float:
        return self.params["exponent_before"].value

    @property
    def exponent_after(self) -> float:
        return self.params["exponent_after"].value

    @property
    def break_step(self) -> float:
        """Optimizer step of the break."""
        return self.params["break_step"].value

    @property
    def break_step_ci(self) -> tuple[float, float]:
        return self.params["break_step"].ci


@dataclass(frozen=True)
class ModelComparison:
    """Exponential vs power law vs broken power law on one curve.

    Attributes
    ----------
    fits : Mapping[str, FitResult]
        ``"exponential"``, ``"power"``, ``"two_power"``.
    table : tuple of Mapping
        One row per model: ``model, n_params, aic, bic, aic_ac, bic_ac,
        delta_aic, delta_bic, delta_aic_iid, r2``.  ``delta_*`` are relative to the
        best model by the autocorrelation-aware criterion (``aic_ac``/``bic_ac``);
        ``delta_aic_iid`` uses the naive iid AIC.
    best_aic, best_bic : str
        Preferred model by ``aic_ac`` and ``bic_ac``.
    noise : NoiseModel
        The common noise model.
    """

    fits: Mapping[str, FitResult]
    table: tuple[Mapping[str, float | int | str], ...]
    best_aic: str
    best_bic: str
    noise: NoiseModel

    def summary(self) -> str:
        """A short text table: criteria of each model, deltas to the best, the preferred model."""
        lines = [
            f"Model comparison ({len(self.fits)} models, one noise model: AR(1) phi {self.noise.ar_phi:.3f})",
            f"  {'model':<12} {'k':>2} {'AIC_ac':>11} {'dAIC':>9} {'dBIC':>9} {'dAIC_iid':>9} {'R2':>8}",
        ]
        for row in self.table:
            lines.append(
                f"  {row['model']:<12} {row['n_params']:>2} {row['aic_ac']:>11.1f} {row['delta_aic']:>9.2f} "
                f"{row['delta_bic']:>9.2f} {row['delta_aic_iid']:>9.2f} {row['r2']:>8.4f}"
            )
        lines.append(f"  best by AIC_ac: {self.best_aic}; by BIC_ac: {self.best_bic}")
        return "\n".join(lines)

    def delta_aic(self, a: str, b: str) -> float:
        """AIC_ac(a) - AIC_ac(b): positive means ``b`` is preferred."""
        return self.fits[a].aic_ac - self.fits[b].aic_ac

    def to_dict(self) -> dict[str, float | str]:
        out: dict = {}
        for row in self.table:
            for key in ("aic", "bic", "aic_ac", "bic_ac", "delta_aic", "delta_bic", "delta_aic_iid", "r2"):
                out[f"{row['model']}_{key}"] = row[key]
        out["best_aic"] = self.best_aic
        out["best_bic"] = self.best_bic
        return out


# ====================================================================== knees
@dataclass(frozen=True)
class KneeResult:
    """Outcome of a knee detector.

    Attributes
    ----------
    method : str
        Registry name of the detector.
    found : bool
        Whether a knee was detected.
    step : float
        Optimizer step of the knee (NaN when not found).
    step_ci : tuple of float
        Confidence interval of the step (NaN, NaN when not available).
    epoch : float
        ``step / steps_per_epoch`` when ``steps_per_epoch`` was given, else NaN.
    delta_aic : float
        AIC(no-knee model) - AIC(knee model); positive favours the knee.  NaN when
        the method compares no models.
    delta_bic : float
        Same for BIC.
    statistic : float
        The test statistic the decision is based on.
    threshold : float
        The decision threshold on ``statistic``.
    test : str
        Human-readable description of the test.
    exponent_before, exponent_after : float
        Exponents on either side of the knee (NaN when not estimated).
    n_points : int
        Number of points used.
    details : Mapping[str, float]
        Method-specific extras (read-only).
    """

    method: str
    found: bool
    step: float
    step_ci: tuple[float, float]
    epoch: float
    delta_aic: float
    delta_bic: float
    statistic: float
    threshold: float
    test: str
    exponent_before: float = NAN
    exponent_after: float = NAN
    n_points: int = 0
    details: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def summary(self) -> str:
        """A short text summary: decision, knee step and interval, statistic against threshold."""
        head = f"KneeResult ({self.method}): " + (
            f"knee at step {_g(self.step)} [{_g(self.step_ci[0])}, {_g(self.step_ci[1])}]"
            + (f", epoch {self.epoch:.3g}" if math.isfinite(self.epoch) else "")
            if self.found
            else "no knee"
        )
        lines = [
            head,
            f"  statistic {_g(self.statistic)} vs threshold {_g(self.threshold)}; "
            f"delta AIC {_g(self.delta_aic)}, delta BIC {_g(self.delta_bic)}; {self.n_points} points",
        ]
        if math.isfinite(self.exponent_before) or math.isfinite(self.exponent_after):
            lines.append(f"  exponent {_g(self.exponent_before)} -> {_g(self.exponent_after)}")
        lines.append(f"  test: {self.test}")
        return "\n".join(lines)

    def to_dict(self, prefix: str = "") -> dict[str, float | bool | str]:
        """Flat JSON-serialisable summary (NaN kept as float NaN)."""
        return {
            f"{prefix}found": bool(self.found),
            f"{prefix}step": float(self.step),
            f"{prefix}step_ci_low": float(self.step_ci[0]),
            f"{prefix}step_ci_high": float(self.step_ci[1]),
            f"{prefix}epoch": float(self.epoch),
            f"{prefix}delta_aic": float(self.delta_aic),
            f"{prefix}delta_bic": float(self.delta_bic),
            f"{prefix}statistic": float(self.statistic),
            f"{prefix}threshold": float(self.threshold),
            f"{prefix}exponent_before": float(self.exponent_before),
            f"{prefix}exponent_after": float(self.exponent_after),
        }


# ====================================================================== checks and H1 tests
@dataclass(frozen=True)
class FitCheck:
    """Whether a fitted mean curve follows the data.

    Attributes
    ----------
    ok : bool
    reason : str or None
        Why not (``None`` when ok).
    max_binned_residual : float
        Largest |mean log residual| over bins of :data:`MISFIT_DECADES` decades
        (log units: 0.22 is 25 %).
    max_residual_step : float
        Mean step of that bin.
    rising : bool
        The fit rises over the segment while the data fall.
    """

    ok: bool
    reason: str | None
    max_binned_residual: float
    max_residual_step: float
    rising: bool


@dataclass(frozen=True)
class TwoBreakTest:
    """Result of :func:`two_break_test`.

    Attributes
    ----------
    found : bool
        A second break: ``statistic > threshold``, the first break steepens the
        curve by ``>= min_change``, the second changes the exponent by
        ``>= min_change``, and the two-break fit follows the data
        (:func:`loss_slope.analysis.fit_check.check_fit`).
    statistic : float
        Scaled LR statistic (NaN when the curve is too short for two breaks).
    threshold, min_change : float
    break_steps : (float, float)
        Steps of the two breaks of the alternative fit.
    exponents : (float, float, float)
        Exponents before, between and after them.
    knee_step : float
        Break step of the null (one-break) fit.
    reason : str
    """

    found: bool
    statistic: float
    threshold: float
    min_change: float
    break_steps: tuple[float, float]
    exponents: tuple[float, float, float]
    knee_step: float
    reason: str
    #: the two-break fit: normalised parameters, mean function (``three_power`` with
    #: its knee range bound) and log-loss offset; ``None`` when not fitted
    _theta: np.ndarray | None = field(default=None, repr=False, compare=False)
    _mean: Callable | None = field(default=None, repr=False, compare=False)
    _y_ref: float = field(default=0.0, repr=False, compare=False)

    def predict(self, steps) -> np.ndarray:
        """Loss of the two-break fit at ``steps`` (NaN when not fitted)."""
        s = np.asarray(steps, dtype=float)
        if self._theta is None:
            return np.full(s.shape, NAN)
        m, _ = self._mean(self._theta, s, False)
        return np.exp(m + self._y_ref)

    def to_dict(self, prefix: str = "h1_two_break_") -> dict:
        return {
            f"{prefix}found": self.found,
            f"{prefix}statistic": self.statistic,
            f"{prefix}threshold": self.threshold,
            f"{prefix}step_1": self.break_steps[0],
            f"{prefix}step_2": self.break_steps[1],
            f"{prefix}exponent_1": self.exponents[0],
            f"{prefix}exponent_2": self.exponents[1],
            f"{prefix}exponent_3": self.exponents[2],
        }


@dataclass(frozen=True)
class ShapeTest:
    """The per-run H1 decision and its evidence.

    Attributes
    ----------
    decision : bool or None
        One power law after the knee (``None``: undecided, see ``reason``).
    reason : str
        Why (for every outcome).
    segment_start : float
        First optimizer step of the tested segment.
    further_break_statistic, earlier_break_statistic : float
        Scaled LR statistics of the break tests after and before the knee (NaN when
        not run); a break when above ``threshold``.
    further_break_step : float
        Most likely break step after the knee (whether or not significant).
    threshold : float
    exponent_first_half, exponent_second_half : float
        Exponents of the two halves (floor and shift held at the segment's fit).
    drift, drift_ci : float, (float, float)
        Second minus first, and its interval.
    max_binned_residual : float
        Largest |mean log residual| of the segment's power-law fit (log units).
    fit_ok : bool
    fit_reason : str or None
    literal_r2 : float
        Straight-line log-log R² of the segment.
    two_break : TwoBreakTest or None
        The whole-curve two-break test (``None``: not run).
    """

    decision: bool | None
    reason: str
    segment_start: float
    further_break_statistic: float
    further_break_step: float
    earlier_break_statistic: float
    threshold: float
    exponent_first_half: float
    exponent_second_half: float
    drift: float
    drift_ci: tuple[float, float]
    max_binned_residual: float
    fit_ok: bool
    fit_reason: str | None
    literal_r2: float
    two_break: TwoBreakTest | None = None

    def to_dict(self, prefix: str = "h1_") -> dict:
        tb = (
            self.two_break.to_dict(f"{prefix}two_break_")
            if self.two_break is not None
            else {f"{prefix}two_break_{k}": (None if k == "found" else NAN) for k in _TWO_BREAK_KEYS}
        )
        return tb | {
            f"{prefix}single_power_law": self.decision,
            f"{prefix}reason": self.reason,
            f"{prefix}segment_start_step": self.segment_start,
            f"{prefix}further_break_statistic": self.further_break_statistic,
            f"{prefix}further_break_step": self.further_break_step,
            f"{prefix}earlier_break_statistic": self.earlier_break_statistic,
            f"{prefix}exponent_first_half": self.exponent_first_half,
            f"{prefix}exponent_second_half": self.exponent_second_half,
            f"{prefix}exponent_drift": self.drift,
            f"{prefix}exponent_drift_ci_low": self.drift_ci[0],
            f"{prefix}exponent_drift_ci_high": self.drift_ci[1],
            f"{prefix}max_binned_residual": self.max_binned_residual,
            f"{prefix}literal_r2": self.literal_r2,
        }


_TWO_BREAK_KEYS = ("found", "statistic", "threshold", "step_1", "step_2", "exponent_1", "exponent_2", "exponent_3")


# ====================================================================== one run
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
        curve when no knee was found).
    shape : ShapeTest or None
        The per-run H1 decision: is the curve after the knee one power law
        (:func:`loss_slope.analysis.shape.single_power_law`).
    fit_checks : Mapping[str, FitCheck]
        Whether each fitted curve follows the data (``"exponential"``, ``"power"``,
        ``"two_power"``, ``"post_knee"``).
    post_knee_start_step : float
        Optimizer step where the post-knee segment starts (the first step when no
        knee was found).
    shape_by_knee : Mapping[str, ShapeTest]
        The H1 decision with the burn-in ended by another knee definition (see
        ``h1_knee_methods``).
    alpha_early : SlopeResult or None
    alpha_full : SlopeResult or None
    best_val_ce : float
        Minimum validation loss (input unit), NaN when no validation curve given.
    steps_per_epoch : float
    time_axis : str
        ``"step"``, or ``"time"`` when another time axis was given.
    n_points : int
    n_masked : int
    errors : Mapping[str, str]
        Component -> reason, for every component that could not be computed.
    """

    knees: Mapping[str, KneeResult]
    comparison: ModelComparison | None
    power_post_knee: PowerLawFit | None
    shape: ShapeTest | None
    fit_checks: Mapping[str, FitCheck]
    post_knee_start_step: float
    shape_by_knee: Mapping[str, ShapeTest]
    alpha_early: SlopeResult | None
    alpha_full: SlopeResult | None
    best_val_ce: float
    steps_per_epoch: float
    time_axis: str
    n_points: int
    n_masked: int
    errors: Mapping[str, str]

    def to_dict(self) -> dict[str, float | int | str | bool]:
        """Flat, strictly JSON-serialisable row.

        Missing numbers are ``None`` (null): a knee that was not found, or a
        component that failed -- whose reason is under ``error_<component>``.
        """
        out: dict = {
            "n_points": self.n_points,
            "n_masked": self.n_masked,
            "steps_per_epoch": self.steps_per_epoch,
            "time_axis": self.time_axis,
        }
        for name, k in self.knees.items():
            out.update(k.to_dict(prefix=f"knee_{name}_"))
        if self.comparison is not None:
            out.update(self.comparison.to_dict())
            for model, fit in self.comparison.fits.items():
                for pname, est in fit.params.items():
                    out[f"{model}_{pname}"] = est.value
                    out[f"{model}_{pname}_se"] = est.stderr
                    out[f"{model}_{pname}_ci_low"], out[f"{model}_{pname}_ci_high"] = est.ci
                    out[f"{model}_{pname}_at_bound"] = bool(fit.at_bound.get(pname, False))
                out[f"{model}_hit_bound"] = ",".join(fit.hit_bound) or None
        if self.power_post_knee is not None:
            out.update(self.power_post_knee.to_dict(prefix="post_knee_"))
        else:
            out.update({"post_knee_r2": NAN, "post_knee_exponent": NAN})
        out["post_knee_start_step"] = self.post_knee_start_step
        for name, chk in self.fit_checks.items():
            out[f"{name}_fit_ok"] = chk.ok
            out[f"{name}_fit_reason"] = chk.reason
            out[f"{name}_max_binned_residual"] = chk.max_binned_residual
        if self.shape is not None:
            out.update(self.shape.to_dict())
        else:
            out.update({"h1_single_power_law": None, "h1_literal_r2": NAN})
        for name, sh in self.shape_by_knee.items():
            out[f"h1_single_power_law_knee_{name}"] = sh.decision
            out[f"h1_reason_knee_{name}"] = sh.reason
            out[f"h1_literal_r2_knee_{name}"] = sh.literal_r2
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
