"""Analysis library: knees, power laws, slopes and the H1/H2 study statistics.

Importable without Snakemake.  Every analysis function takes arrays in and returns
a frozen dataclass; bad input raises a domain error (an :class:`AnalysisError`).
The top level holds what a notebook needs; everything else is in its module (see
``docs/analysis.md``, "Public API")::

    >>> from loss_slope.analysis import CurveSpec, analyze_curve, make_curve
    >>> curve = make_curve(CurveSpec(n_steps=2000, alpha=0.6, noise_sigma=0.02), seed=0)
    >>> row = analyze_curve(curve.steps, curve.loss, steps_per_epoch=100).to_dict()
    >>> round(row["power_exponent"], 2), row["h1_single_power_law"]
    (0.6, True)

The study statistics (:func:`h1_statistics`, :func:`h2_statistics`) live in
:mod:`loss_slope.analysis.stats`, which needs pandas; they are loaded on first
access, so that a per-run fit job importing this package does not pay for pandas
at start-up.
"""

from .curve import analyze_curve, cumulative_lr
from .exceptions import AnalysisError, InvalidCurve
from .fits import compare_models, fit_exponential, fit_power_law, fit_two_power_law
from .knee import detect_knee
from .shape import single_power_law
from .synthetic import CurveSpec, make_curve
from .two_break import two_break_test

__all__ = [
    # one run
    "analyze_curve",
    "cumulative_lr",
    "detect_knee",
    "fit_power_law",
    "fit_exponential",
    "fit_two_power_law",
    "compare_models",
    "single_power_law",
    "two_break_test",
    # the study
    "h1_statistics",
    "h2_statistics",
    # known-truth curves
    "CurveSpec",
    "make_curve",
    # errors
    "AnalysisError",
    "InvalidCurve",
]

#: Names served from :mod:`loss_slope.analysis.stats` (pandas) on first access.
_STATS = ("h1_statistics", "h2_statistics")


def __getattr__(name: str):
    """PEP 562: import the study statistics (and with them pandas) only when first used."""
    if name in _STATS:
        from . import stats

        value = getattr(stats, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
