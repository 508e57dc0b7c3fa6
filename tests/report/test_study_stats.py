"""StudyStats: stats.json read back strictly; a missing or mistyped key is an error that names it."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from loss_slope.jsonio import jsonable
from loss_slope.report.records import StatsFormatError
from loss_slope.report.study_stats import StudyStats
from loss_slope.report.summarize import run_table, study_statistics

from .conftest import STUDY, partial_sweep


@pytest.fixture(scope="module")
def written() -> dict:
    """A stats.json object as summarize writes it (a partial sweep with a window heat-map)."""
    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    scans = {f"{f['row']['variant']}/{f['row']['run']}": f["window_scan"] for f in fits}
    stats = study_statistics(table, study=STUDY, window_scans=scans, early_window=[5, 15], study_name="syn")
    return json.loads(json.dumps(jsonable(stats.to_dict())))


def _fails(data: dict, key: str, words: str) -> None:
    with pytest.raises(StatsFormatError) as err:
        StudyStats.from_dict(data)
    assert err.value.key == key
    assert repr(key) in str(err.value) and words in str(err.value)


@pytest.mark.parametrize(
    "key",
    ["study", "n_runs", "counts", "counts_by_cell", "other_time_axis", "h1", "h2", "h2_other_axis", "settings"],
)
def test_a_missing_section_names_its_key(written, key):
    data = copy.deepcopy(written)
    del data[key]
    _fails(data, key, "is missing")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("counts", [8, 1], "must be an object"),
        ("n_runs", "12", "must be an integer"),
        ("counts_by_cell", {"a": 1}, "must be a list"),
        ("excluded_runs", None, "got null"),
        ("h1", [], "must be an object"),
        ("window_heatmap", "none", "must be an object"),
        ("settings", {"study": {}}, ""),
        ("truth", [], "must be an object"),
    ],
)
def test_a_mistyped_section_names_its_key(written, key, value, words):
    data = {**copy.deepcopy(written), key: value}
    with pytest.raises(StatsFormatError) as err:
        StudyStats.from_dict(data)
    assert err.value.key.split(".")[0] == key and words in str(err.value)


@pytest.mark.parametrize(
    ("path", "value", "key", "words"),
    [
        (("counts", "ok"), "8", "counts.ok", "must be an integer"),
        (("counts_by_variant", "S-core", "missing"), None, "counts_by_variant.S-core.missing", "got null"),
        (("counts_by_cell", 0, "lr"), "0.05", "counts_by_cell.0.lr", "must be a number"),
        (("h2", "overall", "spearman_rho"), "strong", "h2.overall.spearman_rho", "must be a number"),
        (("h1", "single_power_law", "overall", "k"), 2.5, "h1.single_power_law.overall.k", "must be an integer"),
        (("window_heatmap", "nominal"), [5.0], "window_heatmap.nominal", "list of 2 values"),
        (("settings", "study", "confidence"), "95 %", "settings.study.confidence", "must be a number"),
        (("settings", "early_window"), None, "settings.early_window", "got null"),
    ],
)
def test_a_mistyped_value_names_its_path(written, path, value, key, words):
    data = copy.deepcopy(written)
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    _fails(data, key, words)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("h1", "single_power_law"), "h1.single_power_law"),
        (("h1", "literal_r2", "overall"), "h1.literal_r2.overall"),
        (("h2", "overall"), "h2.overall"),
        (("h2", "verdict"), "h2.verdict"),
        (("counts", "missing"), "counts.missing"),
        (("excluded_runs", 0, "reason"), "excluded_runs.0.reason"),
        (("window_heatmap", "nominal"), "window_heatmap.nominal"),
        (("settings", "study", "h2_sign"), "settings.study.h2_sign"),
    ],
)
def test_a_missing_nested_key_names_its_path(written, path, key):
    data = copy.deepcopy(written)
    node = data
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    _fails(data, key, "is missing")


def test_an_unknown_key_is_an_error_where_the_section_is_fixed(written):
    _fails({**written, "h3": {}}, "h3", "is not a key of stats.json")
    data = copy.deepcopy(written)
    data["counts"]["lost"] = 1
    _fails(data, "counts.lost", "is not a key of StatusCounts")


def test_truth_is_the_one_optional_section_and_the_reader_does_not_default_the_rest(written):
    assert "truth" not in written and StudyStats.from_dict(written).truth is None
    back = StudyStats.from_dict(written)
    assert back.settings.study.to_dict() == STUDY  # every key of analysis.study, in config order
    assert back.counts.of("ok") == back.counts.ok == 8


def test_the_report_refuses_a_malformed_stats_file(written, tmp_path):
    from loss_slope.report.build import build_report

    pd.DataFrame({"variant": ["S-core"], "status": ["ok"]}).to_parquet(tmp_path / "runs.parquet")
    data = copy.deepcopy(written)
    del data["h2_literal"]
    (tmp_path / "stats.json").write_text(json.dumps(data))
    with pytest.raises(StatsFormatError, match="'h2_literal' is missing"):
        build_report(
            table_parquet=tmp_path / "runs.parquet",
            stats_json=tmp_path / "stats.json",
            fit_files=[],
            figures={},
            variant_figures={},
            summary_md=tmp_path / "summary.md",
        )
    assert not (tmp_path / "summary.md").exists()
