"""Report stage entry point: figures (PNG + SVG) and ``summary.md``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ._io import read_json
from .figures import render_figures
from .study_stats import StudyStats
from .summary_md import render_summary

__all__ = ["build_report", "by_stem", "load_curves"]


def by_stem(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """Group output paths by file name without extension: ``{"ablation": [png, svg]}``."""
    out: dict[str, list[str]] = {}
    for p in paths:
        name = Path(p).name
        out.setdefault(name[: name.rindex(".")] if "." in name else name, []).append(str(p))
    return out


def load_curves(fit_files: Sequence[str | Path]) -> dict:
    """``run_key`` -> fit JSON for each fit file."""
    out = {}
    for p in fit_files:
        fit = read_json(p)
        out[f"{fit['row']['variant']}/{fit['row']['run']}"] = fit
    return out


def build_report(
    *,
    table_parquet,
    stats_json,
    fit_files: Sequence[str | Path],
    figures: Mapping[str, Sequence[str | Path]],
    variant_figures: Mapping[str, Sequence[str | Path]],
    summary_md,
    tables: Mapping[str, str | Path] | None = None,
    partial: bool = False,
) -> None:
    """Pipeline entry point (rule ``build_report``).

    Parameters
    ----------
    table_parquet, stats_json : path
        Outputs of ``summarize``.
    fit_files : sequence of path
        The same fit JSONs ``summarize`` read (curves for the figures).
    figures : mapping
        Figure name (a key of :data:`loss_slope.report.registry.FIGURES`) -> paths
        (the first one, a PNG, is embedded in the summary); the rule passes every
        registered figure.
    variant_figures : mapping
        Variant -> paths of its loss-curve figure.
    summary_md : path
    tables : mapping, optional
        Label -> table path, linked from the summary.
    partial : bool
    """
    table = pd.read_parquet(table_parquet)
    stats = StudyStats.from_dict(read_json(stats_json))
    curves = load_curves(fit_files)
    render_figures(table, stats, curves, figures, variant_figures)
    here = Path(summary_md).parent

    def rel(p) -> str:
        return Path(os.path.relpath(Path(p), here)).as_posix()

    text = render_summary(
        table,
        stats,
        {k: rel(v[0]) for k, v in figures.items()},
        variant_figure_paths={k: rel(v[0]) for k, v in variant_figures.items()},
        table_paths={k: rel(v) for k, v in (tables or {}).items()},
        partial=partial,
    )
    Path(summary_md).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_md).write_text(text)
