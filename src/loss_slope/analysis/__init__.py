"""Analysis library: knees, power laws, slopes and the H1/H2 study statistics.

Importable without Snakemake.  Every analysis function takes arrays in and returns
a frozen dataclass; bad input raises a domain error from
:mod:`loss_slope.analysis.exceptions`.  See ``docs/analysis.md``.
"""

from .curve import CurveAnalysis, analyze_curve, cumulative_lr
from .exceptions import (
    AnalysisError,
    ConstantLoss,
    FitFailed,
    InvalidCurve,
    InvalidSteps,
    NonFiniteValues,
    NonPositiveLoss,
    NotEnoughPoints,
    UnknownMethod,
)
from .fits import (
    Estimate,
    ExponentialFit,
    FitResult,
    ModelComparison,
    PowerLawFit,
    ResidualDiagnostics,
    TwoPowerLawFit,
    compare_models,
    fit_exponential,
    fit_power_law,
    fit_two_power_law,
)
from .knee import DEFAULT_KNEE_METHOD, KNEE_METHODS, LRT_THRESHOLD, KneeResult, detect_knee, register_knee_method
from .noise import NoiseModel, estimate_noise
from .scan import HingeScan, hinge_scan
from .shape import FitCheck, ShapeTest, check_fit, single_power_law
from .slopes import SlopeResult, WindowScan, alpha_early, alpha_full, alpha_window, window_scan

# The study statistics (pandas, scipy.stats) are imported on first use, so that a
# per-run fit job (loss_slope.report.fit_run), which needs none of them, does not
# pay for pandas at start-up: ``from loss_slope.analysis import h2_statistics``
# works as before (PEP 562 module ``__getattr__``).
_STATS_NAMES = (
    "Correlation",
    "H1Result",
    "H2Result",
    "LevelComparison",
    "LocoPrediction",
    "Screening",
    "Share",
    "WindowHeatmap",
    "correlation",
    "h1_statistics",
    "h2_statistics",
    "h2_statistics_diverged_worst_rank",
    "h2_window_heatmap",
    "screen_curve",
    "wilson_interval",
)


def __getattr__(name):
    if name in _STATS_NAMES:
        from . import stats

        value = getattr(stats, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_STATS_NAMES))


__all__ = [
    # knees
    "detect_knee",
    "KneeResult",
    "KNEE_METHODS",
    "DEFAULT_KNEE_METHOD",
    "LRT_THRESHOLD",
    "register_knee_method",
    # fits
    "fit_power_law",
    "fit_exponential",
    "fit_two_power_law",
    "compare_models",
    "FitResult",
    "PowerLawFit",
    "ExponentialFit",
    "TwoPowerLawFit",
    "ModelComparison",
    "Estimate",
    "ResidualDiagnostics",
    "NoiseModel",
    "estimate_noise",
    # scan
    "hinge_scan",
    "HingeScan",
    # slopes
    "alpha_window",
    "alpha_early",
    "alpha_full",
    "window_scan",
    "SlopeResult",
    "WindowScan",
    # study statistics
    "screen_curve",
    "Screening",
    "wilson_interval",
    "Share",
    "h1_statistics",
    "H1Result",
    "correlation",
    "Correlation",
    "h2_statistics",
    "h2_statistics_diverged_worst_rank",
    "H2Result",
    "LevelComparison",
    "LocoPrediction",
    "h2_window_heatmap",
    "WindowHeatmap",
    # per-run helper
    "analyze_curve",
    "CurveAnalysis",
    "cumulative_lr",
    # H1 per run: one power law after the knee?
    "single_power_law",
    "ShapeTest",
    "check_fit",
    "FitCheck",
    # errors
    "AnalysisError",
    "InvalidCurve",
    "NotEnoughPoints",
    "InvalidSteps",
    "NonFiniteValues",
    "NonPositiveLoss",
    "ConstantLoss",
    "UnknownMethod",
    "FitFailed",
]
