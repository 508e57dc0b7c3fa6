"""Every figure renders from a small synthetic table: complete, partial, and with no usable run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from loss_slope.report import figures as F
from loss_slope.report.build import build_report, by_stem
from loss_slope.report.summarize import run_table, study_statistics

from .conftest import STUDY, fit_row, identity, partial_sweep


@pytest.fixture(scope="module")
def partial():
    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f["window_scan"] for f in fits}
    stats = study_statistics(table, study=STUDY, window_scans=scans, early_window=[5, 15], study_name="syn")
    curves = {f"{f['row']['variant']}/{f['row']['run']}": f for f in fits}
    return table, stats, curves


@pytest.fixture(scope="module")
def nothing_usable():
    runs = [identity("A", "r0"), identity("A", "r1"), identity("B", "r0")]
    rows = [
        fit_row("A", "r0", status="diverged", reason="nan at step 3", diverged_step=3.0),
        fit_row("B", "r0", status="invalid", reason="validation failed"),
    ]
    table = run_table(rows, runs)
    return table, study_statistics(table, study=STUDY), {}


def _title(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


@pytest.mark.parametrize("name", list(F.FIGURES))
def test_every_figure_renders_on_a_partial_sweep(partial, nothing_usable, name):
    for table, stats, curves in (partial, nothing_usable):
        fig = F.figure_builders(table, stats, curves)[name]()
        assert fig.axes and _title(fig)
        plt.close(fig)


def test_titles_state_the_findings(partial):
    table, stats, curves = partial
    b = F.figure_builders(table, stats, curves)
    checks = {
        "run_health": ["8 of 12 runs usable", "1 invalid", "1 diverged", "1 missing", "1 too short"],
        "loss_curves_mosaic": ["of 8 usable runs reach R² ≥ 0.98"],
        "window_robustness": ["ρ = ", "epochs 5–15"],
        "delta_aic": ["power law in 8"],
    }
    for name, parts in checks.items():
        fig = b[name]()
        text = " ".join(_title(fig).split())
        for part in parts:
            assert part in text, (name, part, text)
        plt.close(fig)
    fig = b["r2_histogram"]()
    verdict = stats.h1.main.verdicts["0.8"]
    assert f"H1 {verdict} vs 80 %" in fig.axes[0].get_title("left")
    plt.close(fig)
    fig = b["alpha_vs_best_val"]()
    assert "Spearman ρ = " in fig.axes[0].get_title("left")
    assert f"H2 {stats.h2.main.verdict}" in fig.axes[0].get_title("left")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("cell mean" in s for s in labels) and any("LR 0.05" in s for s in labels)
    assert any(s.startswith("within cells: ρ = ") for s in labels)
    plt.close(fig)
    fig = b["h1_criteria"]()
    assert "one power law after the knee" in _title(fig)
    plt.close(fig)
    fig = b["alpha_lr_wd"]()
    assert "Early slope α_early by LR × weight decay" in _title(fig)
    plt.close(fig)


def test_mosaic_shows_the_three_best_and_three_worst(partial):
    table, stats, curves = partial
    fig = F.plot_loss_mosaic(table, stats, curves)
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert sum("highest R²" in t for t in titles) == 3 and sum("lowest R²" in t for t in titles) == 3
    ok = table[table.status == "ok"].sort_values("h1_literal_r2")
    best = ok.iloc[-1]
    assert f"{best.variant} {best.run}" in titles[0]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes[:6])
    plt.close(fig)


def test_run_health_counts_every_status(partial):
    table, _, _ = partial
    fig = F.plot_run_health(table)
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert sum(widths) == len(table)
    # each status's bars add up to its runs
    drawn = {c.get_label(): sum(b.get_width() for b in c) for c in ax.containers}
    counts = {s.replace("_", " "): n for s, n in table["status"].value_counts().items()}
    assert {k: v for k, v in drawn.items() if v} == counts
    plt.close(fig)


def test_build_report_writes_png_svg_and_summary(partial, tmp_path):
    table, stats, curves = partial
    import json

    from loss_slope.report._io import write_json

    table.to_parquet(tmp_path / "runs.parquet")
    write_json(stats.to_dict(), tmp_path / "stats.json")
    fit_files = []
    for key, fit in curves.items():
        p = tmp_path / "fits" / f"{key}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(fit))
        fit_files.append(p)
    out = tmp_path / "report"
    # two figures in both formats are enough to test the writer (all nine are rendered above)
    figs = by_stem([out / "figures" / f"{n}.{e}" for n in ("run_health", "ablation") for e in ("png", "svg")])
    curves_out = by_stem([out / "figures" / "curves" / "S-core.png"])
    build_report(
        table_parquet=tmp_path / "runs.parquet",
        stats_json=tmp_path / "stats.json",
        fit_files=fit_files,
        figures=figs,
        variant_figures=curves_out,
        summary_md=out / "summary.md",
        tables={"per-run table": out / "runs.csv"},
        partial=True,
    )
    for paths in (*figs.values(), *curves_out.values()):
        for p in paths:
            assert Path(p).stat().st_size > 1000, p
    assert (out / "figures" / "run_health.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (out / "figures" / "ablation.svg").read_bytes()[:2000]
    md = (out / "summary.md").read_text()
    assert "partial report" in md and "](figures/run_health.png)" in md and "](runs.csv)" in md


def test_by_stem_groups_formats():
    assert by_stem(["a/x.png", "a/x.svg", "b/S-core.v2.png"]) == {
        "x": ["a/x.png", "a/x.svg"],
        "S-core.v2": ["b/S-core.v2.png"],
    }


@pytest.mark.parametrize("stride", [0.5, 2.0])
def test_window_heatmap_cells_sit_on_their_epochs_at_any_stride(partial, stride):
    import dataclasses

    import numpy as np

    from loss_slope.report.study_stats import WindowHeatmap

    _, stats, _ = partial
    offs = np.arange(-4, 4 + 0.5 * stride, stride)
    starts, ends = tuple(np.maximum(5 + offs, 0.0)), tuple(15 + offs)
    grid = [[-0.5] * len(ends) for _ in starts]
    hm = WindowHeatmap(
        starts=starts,
        ends=ends,
        rho=tuple(map(tuple, grid)),
        p_value=tuple(tuple([0.5] * len(ends)) for _ in starts),
        n_valid=tuple(tuple([8] * len(ends)) for _ in starts),
        nominal=(5.0, 15.0) if stride == 0.5 else (5.0, 15.5),  # 15.5 is off the stride-2 grid
    )
    fig = F.plot_window_heatmap(None, dataclasses.replace(stats, window_heatmap=hm))
    ax = fig.axes[0]
    mesh = ax.collections[0]
    xs = mesh.get_coordinates()[0, :, 0]  # cell edges along the window stop
    centres = (xs[:-1] + xs[1:]) / 2
    np.testing.assert_allclose(centres, ends)
    boxes = [p for p in ax.patches if not p.get_fill()]
    if stride == 0.5:
        assert len(boxes) == 1 and boxes[0].get_x() == pytest.approx(14.75) and boxes[0].get_width() == 0.5
        assert "ρ = -0.50 at epochs 5–15" in _title(fig)
    else:
        assert not boxes and "the nominal window 5–15.5 is not on the scan's grid" in _title(fig)
    plt.close(fig)


@pytest.mark.parametrize("sign, strong", [("negative", 0), ("positive", 1), ("either", 1)])
def test_window_robustness_counts_only_windows_in_the_configured_direction(partial, sign, strong):
    import dataclasses

    from loss_slope.report.study_stats import WindowHeatmap

    _, stats, _ = partial
    hm = WindowHeatmap(
        starts=(5.0,),
        ends=(15.0, 16.0),
        rho=((0.75, 0.1),),  # strong, but positive: the wrong direction for a negative H2
        p_value=((0.001, 0.5),),
        n_valid=((30, 30),),
        nominal=(5.0, 15.0),
    )
    study = dataclasses.replace(stats.settings.study, values={**stats.settings.study.values, "h2_sign": sign})
    s = dataclasses.replace(stats, window_heatmap=hm, settings=dataclasses.replace(stats.settings, study=study))
    fig = F.plot_window_heatmap(None, s)
    title = " ".join(_title(fig).split())  # the title wraps
    assert f"with p < 0.01 in {strong} of 2 windows" in title, title
    assert ("ρ ≤ −0.7" if sign == "negative" else "ρ ≥ 0.7" if sign == "positive" else "|ρ| ≥ 0.7") in title
    bold = [t.get_text() for t in fig.axes[0].texts if t.get_fontweight() == "bold"]
    assert bold == (["0.75"] if strong else [])
    plt.close(fig)
    empty = dataclasses.replace(hm, rho=((None, None),), p_value=((None, None),))
    fig = F.plot_window_heatmap(None, dataclasses.replace(s, window_heatmap=empty))
    title = " ".join(_title(fig).split())
    assert "nan" not in title and "no window has a correlation" in title, title
    plt.close(fig)


def test_delta_aic_marks_failed_fits_and_words_the_comparison_by_its_sign(partial):
    table, _, _ = partial
    t = table.copy()
    ok = t["status"] == "ok"
    t.loc[ok, "exponential_fit_ok"] = False  # every exponential fit failed its residual check
    fig = F.plot_delta_aic(t)
    title = " ".join(_title(fig).split())
    assert f"hatched: failed fits, counted as fitted: exponential {int(ok.sum())}" in title, title
    assert "the exponential is worse than the power law by median ΔAIC" in title
    hatched = [p for p in fig.axes[0].patches if p.get_hatch()]
    assert hatched and all(p.get_facecolor()[3] == 0 for p in hatched)  # hollow
    plt.close(fig)
    # where the exponential wins, the words say so (not "worse by a negative ΔAIC")
    t.loc[ok, "exponential_delta_aic"], t.loc[ok, "power_delta_aic"] = 0.0, 12.0
    fig = F.plot_delta_aic(t)
    title = " ".join(_title(fig).split())
    assert "the exponential is better than the power law by median ΔAIC = 12" in title, title
    plt.close(fig)
