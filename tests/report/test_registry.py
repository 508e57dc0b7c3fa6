"""One figure registry: the rule's outputs, the builders, the captions and summary.md all follow
:data:`loss_slope.report.registry.FIGURES`."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pytest
import yaml

from _util import REPO, run_cmd, snakemake_bin
from loss_slope.report import figures as F
from loss_slope.report.registry import FIGURES, SECTIONS, FigureSpec, figures_in
from loss_slope.report.summarize import run_table, study_statistics
from loss_slope.report.summary_md import render_summary

from .conftest import STUDY, partial_sweep

#: a small study with a fixed number of runs per device (no probe checkpoint): its dry-run lists build_report
DRY_CONFIG = {
    "study": "registry-dry-run",
    "data": {"name": "simulated"},
    # the truth's alpha_early window is the analysis window
    "training": {"epochs": 10, "warmup_epochs": 1, "hydra_overrides": ["data.simulation.early_window=[2,6]"]},
    "variants": {"S-core": {"experiment": "s_core"}},
    "grid": {"lr": [0.1], "weight_decay": [0.001], "seed": [0]},
    "packing": {"runs_per_gpu": 1},
    "analysis": {"fit": {"early_window": [2, 6], "window_shift": 1}},
}


def _dry_run_outputs(tmp_path, rule: str) -> list[str]:
    (tmp_path / "dry.yaml").write_text(yaml.safe_dump(DRY_CONFIG))
    out = run_cmd(
        [
            snakemake_bin(),
            "-s",
            REPO / "Snakefile",
            "--directory",
            tmp_path,
            "--configfile",
            tmp_path / "dry.yaml",
            "-n",
            "results/report/summary.md",
        ],
        timeout=300,
    ).stdout
    block = re.search(rf"^rule {rule}:\n(.*?)^\s*jobid:", out, re.S | re.M)
    assert block, f"no {rule} job in the dry-run:\n{out[-3000:]}"
    outputs = re.search(r"^\s*output: (.*)$", block.group(1), re.M)
    return outputs.group(1).split(", ")


def test_build_report_declares_exactly_the_registered_figures(tmp_path):
    outputs = _dry_run_outputs(tmp_path, "build_report")
    figures = sorted(p for p in outputs if re.fullmatch(r"results/report/figures/[^/]+\.(png|svg)", p))
    expected = sorted(p for f in FIGURES.values() for p in f.files("results/report"))
    assert figures == expected
    assert "results/report/summary.md" in outputs


def test_every_registered_figure_has_a_builder_and_a_caption():
    for f in FIGURES.values():
        assert callable(getattr(F, f.builder)), f
        assert (REPO / "workflow" / "report" / f"{f.name}.rst").is_file(), f"no HTML caption for {f.name}"
        assert f.caption and f.label and f.category == SECTIONS[f.section]
    assert list(F.FIGURES) == list(FIGURES)


def test_a_bad_entry_fails_early():
    with pytest.raises(ValueError, match="section"):
        FigureSpec("x", "appendix", "x", "x", "plot_x")


def test_summary_embeds_every_registered_figure_once_in_its_section():
    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    stats = study_statistics(table, study=STUDY, early_window=[5, 15], study_name="syn")
    md = render_summary(table, stats, {name: f"figures/{name}.png" for name in FIGURES})
    links = re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\.png\)", md)
    assert sorted(links) == sorted(FIGURES)
    # within the summary, the figures come section by section in registry order
    order = [f.name for section in dict.fromkeys(f.section for f in FIGURES.values()) for f in figures_in(section)]
    assert links == order
    h1, h2 = md.index("## H1"), md.index("## H2")
    for f in figures_in("h1"):
        assert h1 < md.index(f"figures/{f.name}.png") < h2
