"""Every file and folder the workflow reads or writes, as one set of templates.

The rules (``workflow/rules/*.smk``, through ``common.smk``) and the Python code
that needs a path (the pack launcher, the partial-report input functions) both
take them from here: renaming a folder is one edit.

Templates use the Snakemake wildcard names (``{variant}``, ``{run}``, ``{pack}``,
``{reportdir}``); :func:`str.format` them in Python, or give them to a rule as
they are.  Kept free of imports beyond the standard library: the Snakefile reads it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "DATA_READY",
    "PROBE_JSON",
    "PROBE_PNG",
    "PROBE_MD",
    "RUNS_PER_GPU",
    "PACK_REGISTRY",
    "PACK_SPEC",
    "PACK_DONE",
    "RUN_DONE",
    "EXPORT_ROOT",
    "EXPORT_DIR",
    "RUN_INFO",
    "ATTEMPTS",
    "export_csv",
    "export_csvs",
    "PARQUET_ROOT",
    "parquet",
    "parquets",
    "CONVERT",
    "VALIDATION_JSON",
    "VALIDATION_TXT",
    "FIT",
    "REPORT_DIRS",
    "REPORT_DIR",
    "REPORT_RUNS_PARQUET",
    "REPORT_RUNS_CSV",
    "REPORT_VARIANTS_CSV",
    "REPORT_STATS",
    "REPORT_SUMMARY",
    "report_variant_table",
    "report_figure",
    "report_curves",
    "DEFAULT_WORK_ROOT",
    "WORK_RUN",
    "work_run",
    "TRAIN_LOG_DIR",
    "TRAIN_LOG",
    "BY_VARIANT",
    "BY_PACK",
    "BY_RUN",
    "BY_REPORT",
    "rule_log",
    "rule_benchmark",
]

# ---- data
#: the dataset is where the config says (downloaded there if asked): rule prepare_cifar10. Its path
#: does not name the data's folder, so moving the data reruns nothing
DATA_READY = "results/data/{name}.json"

# ---- training: probe, plan, packs, per-run markers
#: the runs-per-device probe of a variant (json, figure, notes)
PROBE_JSON = "results/probe/{variant}.json"
PROBE_PNG = "results/probe/{variant}.png"
PROBE_MD = "results/probe/{variant}.md"
#: N runs per device, fixed or measured (rule plan_packs)
RUNS_PER_GPU = "results/plan/{variant}/runs_per_gpu.json"
#: every pack planned so far (stable, append-only)
PACK_REGISTRY = "results/plan/{variant}/packs.json"
#: one pack's runs and overrides (rule pack_spec)
PACK_SPEC = "results/plan/{variant}/packs/{pack}.json"
#: a pack finished: its runs trained (rule train_pack)
PACK_DONE = "results/packs/{variant}/{pack}.json"
#: a run's training finished (rule run_done): downstream jobs depend on runs, not packs
RUN_DONE = "results/runs/{variant}/{run}.json"

# ---- tables: export, Parquet, conversion report, validation
EXPORT_ROOT = "results/export"
EXPORT_DIR = EXPORT_ROOT + "/{variant}/{run}"
RUN_INFO = EXPORT_DIR + "/run_info.json"
ATTEMPTS = EXPORT_DIR + "/attempts.json"
#: hive-partitioned Parquet tables (``pyarrow.dataset`` over ``PARQUET_ROOT/<table>``)
PARQUET_ROOT = "results/parquet"
_PARQUET = PARQUET_ROOT + "/{table}/variant={variant}/run={run}/part-0.parquet"
CONVERT = "results/convert/{variant}/{run}.json"
VALIDATION_JSON = "results/validation/{variant}/{run}/validation.json"
VALIDATION_TXT = "results/validation/{variant}/{run}/summary.txt"


def export_csv(table: str) -> str:
    """The exported CSV of one table (``{variant}``/``{run}`` left as wildcards)."""
    return f"{EXPORT_DIR}/{table}.csv"


def parquet(table: str) -> str:
    """The Parquet file of one table (``{variant}``/``{run}`` left as wildcards)."""
    return _PARQUET.format(table=table, variant="{variant}", run="{run}")


def export_csvs(tables: Iterable[str]) -> dict[str, str]:
    """``{"<table>_csv": exported CSV}`` for each table: named inputs/outputs of a rule (``**``)."""
    return {f"{t}_csv": export_csv(t) for t in tables}


def parquets(tables: Iterable[str]) -> dict[str, str]:
    """``{"<table>": Parquet file}`` for each table: named inputs/outputs of a rule (``**``)."""
    return {t: parquet(t) for t in tables}


# ---- fits and report
FIT = "results/fits/{variant}/{run}.json"
#: ``report``: every run of the config; ``report_partial``: the runs whose training finished
REPORT_DIRS = ("report", "report_partial")
REPORT_DIR = "results/{reportdir}"
REPORT_RUNS_PARQUET = REPORT_DIR + "/runs.parquet"
REPORT_RUNS_CSV = REPORT_DIR + "/runs.csv"
REPORT_VARIANTS_CSV = REPORT_DIR + "/variants.csv"
REPORT_STATS = REPORT_DIR + "/stats.json"
REPORT_SUMMARY = REPORT_DIR + "/summary.md"


def report_variant_table(variant: str) -> str:
    """One variant's run table (``{reportdir}`` left as a wildcard)."""
    return f"{REPORT_DIR}/variants/{variant}.csv"


def report_figure(name: str, ext: str) -> str:
    """A report figure (``{reportdir}`` left as a wildcard)."""
    return f"{REPORT_DIR}/figures/{name}.{ext}"


def report_curves(variant: str, ext: str) -> str:
    """A variant's loss-curve figure (``{reportdir}`` left as a wildcard)."""
    return f"{REPORT_DIR}/figures/curves/{variant}.{ext}"


# ---- undeclared training state and logs
#: the default of the config's ``paths.work_root``
DEFAULT_WORK_ROOT = "work"
#: a run's work tree (checkpoints, partial CSVs, attempt log); ``work_root`` is ``paths.work_root``
WORK_RUN = "{work_root}/{variant}/{run}"


def work_run(work_root, variant: str, run: str) -> str:
    """One run's work tree (:data:`WORK_RUN`); its ``done.json`` marks the run finished."""
    return WORK_RUN.format(work_root=work_root, variant=variant, run=run)


#: the training logs of a variant's runs, one per run
TRAIN_LOG_DIR = "logs/train/{variant}"
TRAIN_LOG = TRAIN_LOG_DIR + "/{run}.log"

#: the wildcards that name one job of a rule, as a relative path (its log and benchmark files)
BY_VARIANT = "{variant}"
BY_PACK = "{variant}/{pack}"
BY_RUN = "{variant}/{run}"
BY_REPORT = "{reportdir}"


def rule_log(rule: str, job: str) -> str:
    """A rule's log of one job: ``logs/<rule>/<job>.log`` (``job``: e.g. :data:`BY_RUN`)."""
    return f"logs/{rule}/{job}.log"


def rule_benchmark(rule: str, job: str) -> str:
    """A rule's benchmark of one job: ``benchmarks/<rule>/<job>.tsv``; the rehearsal reads them."""
    return f"benchmarks/{rule}/{job}.tsv"
