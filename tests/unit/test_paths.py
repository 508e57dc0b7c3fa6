"""The path templates that the rules and the Python code share (loss_slope.pipeline.paths)."""

from __future__ import annotations

import re
from pathlib import Path

from loss_slope.pipeline import paths
from loss_slope.tables.schema import MONITOR_TABLES, TABLES

RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"


def test_table_files_are_named_by_table_for_every_table_of_the_schema():
    csvs, pq = paths.export_csvs(TABLES), paths.parquets(TABLES)
    assert list(csvs) == [f"{t}_csv" for t in TABLES]
    assert list(pq) == list(TABLES)
    assert set(MONITOR_TABLES) < set(pq)
    assert csvs["noise_csv"] == "results/export/{variant}/{run}/noise.csv"
    assert pq["steps"] == "results/parquet/steps/variant={variant}/run={run}/part-0.parquet"
    assert paths.parquet("val").format(variant="S-core", run="r0") == (
        "results/parquet/val/variant=S-core/run=r0/part-0.parquet"
    )


def test_rule_logs_and_benchmarks_follow_one_pattern():
    assert paths.rule_log("fit_run", paths.BY_RUN) == "logs/fit_run/{variant}/{run}.log"
    assert paths.rule_log("train_pack", paths.BY_PACK).format(variant="V", pack="p1") == "logs/train_pack/V/p1.log"
    assert paths.rule_benchmark("summarize", paths.BY_REPORT) == "benchmarks/summarize/{reportdir}.tsv"
    assert paths.rule_log("probe_capacity", paths.BY_VARIANT) == "logs/probe_capacity/{variant}.log"


def test_rules_write_no_path_literal_and_list_no_table_by_hand():
    """Every log, benchmark and table path of a rule comes from pipeline/paths.py."""
    for smk in RULES.glob("*.smk"):
        text = smk.read_text()
        assert not re.search(r'"(logs|benchmarks|results)/', text), f"{smk.name} writes a path literal"
        for table in MONITOR_TABLES:
            assert f'parquet("{table}")' not in text, f"{smk.name} lists the {table} table by hand"
