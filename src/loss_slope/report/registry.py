"""Every study figure of the report, listed once.

:data:`FIGURES` is the one list the pipeline reads: the rule ``build_report``
declares one PNG and one SVG per entry (``workflow/rules/report.smk``), the build
step draws each with its builder (:mod:`.figures`) and ``summary.md`` embeds
each in its section (:mod:`.summary_md`), all in this order.

Adding a figure is one entry here plus its builder, a function of
:mod:`loss_slope.report.figures` with the signature ``(table, stats, curves) ->
Figure`` (and its longer caption for Snakemake's HTML report,
``workflow/report/<name>.rst``).  ``tests/report/test_registry.py`` checks that the
rule's outputs, the builders, the captions and ``summary.md`` all follow it.

Imported by the Snakefile: no numpy, pandas or matplotlib here.  The per-variant
loss curves (``figures/curves/<variant>``, one per variant) are not in this list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["FIGURES", "SECTIONS", "FigureSpec", "figures_in"]

#: Where a figure can go: ``summary.md`` section -> its category in Snakemake's HTML report.
SECTIONS: Mapping[str, str] = MappingProxyType(
    {
        "health": "1. Run health",  # top of summary.md, under the run counts
        "h1": "2. H1: power law after the knee",  # end of "## H1"
        "h2": "3. H2: early slope vs best validation CE",  # end of "## H2"
        "variants": "4. Variants and models",  # "## Per variant"
        "models": "4. Variants and models",  # "## Model comparison, knees and the LR × WD grid"
    }
)


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report.

    Attributes
    ----------
    name : str
        File stem: ``figures/<name>.png`` and ``.svg``; HTML caption ``workflow/report/<name>.rst``.
    section : str
        Key of :data:`SECTIONS`: where ``summary.md`` embeds it, and its HTML report category.
    label : str
        Its label in Snakemake's HTML report.
    caption : str
        One line: what it shows.
    builder : str
        Name of the function of :mod:`loss_slope.report.figures` that draws it,
        ``(table, stats, curves) -> Figure`` (a name, so that this module imports no matplotlib).
    """

    name: str
    section: str
    label: str
    caption: str
    builder: str

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"figure {self.name!r}: section {self.section!r} is not one of {sorted(SECTIONS)}")

    @property
    def category(self) -> str:
        """Its category in Snakemake's HTML report."""
        return SECTIONS[self.section]

    def files(self, folder: str) -> list[str]:
        """The files it is written to under a report folder: PNG (embedded in ``summary.md``) and SVG."""
        return [f"{folder}/figures/{self.name}.{ext}" for ext in ("png", "svg")]


def _registry(*specs: FigureSpec) -> Mapping[str, FigureSpec]:
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"figure names listed twice: {dup}")
    return MappingProxyType({s.name: s for s in specs})


#: name -> :class:`FigureSpec`, in report order (HTML report and, within a section, ``summary.md``).
FIGURES: Mapping[str, FigureSpec] = _registry(
    FigureSpec(
        "run_health",
        "health",
        "valid / invalid / diverged / missing per variant",
        "Run health per variant (ok / too short / invalid / diverged / missing)",
        "plot_run_health",
    ),
    FigureSpec(
        "h1_criteria",
        "h1",
        "share per criterion and knee definition",
        "H1: share of runs meeting each criterion and knee definition, with intervals",
        "plot_h1_criteria",
    ),
    FigureSpec(
        "r2_histogram",
        "h1",
        "literal R² histogram",
        "H1: the literal criterion's R² (straight line after the knee), by H1 decision",
        "plot_r2_histogram",
    ),
    FigureSpec(
        "loss_curves_mosaic",
        "h1",
        "six loss curves with fits",
        "H1: the three highest- and three lowest-R² loss curves with fits and knees",
        "plot_loss_mosaic",
    ),
    FigureSpec(
        "alpha_vs_best_val",
        "h2",
        "α_early vs best val CE",
        "H2: α_early vs best validation CE, coloured by LR, with the cell means",
        "plot_alpha_vs_val",
    ),
    FigureSpec(
        "alpha_lr_wd",
        "h2",
        "α_early over LR × WD",
        "H2: α_early over the LR × WD grid (the grid's share of the relation)",
        "plot_alpha_lr_wd",
    ),
    FigureSpec(
        "window_robustness",
        "h2",
        "window robustness of ρ",
        "H2: Spearman ρ for shifted α windows",
        "plot_window_heatmap",
    ),
    FigureSpec(
        "ablation",
        "variants",
        "H1 share and ρ per variant",
        "H1 share and H2 ρ per variant",
        "plot_ablation",
    ),
    FigureSpec(
        "delta_aic",
        "models",
        "ΔAIC of the three models",
        "Model comparison: ΔAIC of exponential, power and two-power fits",
        "plot_delta_aic",
    ),
    FigureSpec(
        "knee_epochs",
        "models",
        "knee epochs",
        "Knee epochs per variant and detector",
        "plot_knee_epochs",
    ),
    FigureSpec(
        "lr_wd_best_val",
        "models",
        "best val CE over LR × WD",
        "Best validation CE over the LR × WD grid",
        "plot_lr_wd_best_val",
    ),
)


def figures_in(section: str) -> list[FigureSpec]:
    """The figures of one ``summary.md`` section, in registry order."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; known: {sorted(SECTIONS)}")
    return [f for f in FIGURES.values() if f.section == section]
