import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.pipeline.paths import work_run
from loss_slope.tables.export import export_run
from loss_slope.tables.parquet import convert_run
from loss_slope.tables.schema import MONITOR_TABLES

out = snakemake.output

# the work tree is run control: read from the config, not a param (moving it reruns nothing)
export_run(
    work_run(snakemake.config["paths"]["work_root"], snakemake.wildcards.variant, snakemake.wildcards.run),
    steps_csv=out.steps_csv,
    val_csv=out.val_csv,
    run_info=out.run_info,
    attempts=out.attempts,
    monitors={t: out[f"{t}_csv"] for t in MONITOR_TABLES},
)
result = convert_run(
    steps_csv=out.steps_csv,
    val_csv=out.val_csv,
    steps_parquet=out.steps,
    val_parquet=out.val,
    report_path=out.report,
    monitors={t: (out[f"{t}_csv"], out[t]) for t in MONITOR_TABLES},
)
for table in result["tables"].values():
    for error in table["errors"]:
        print(f"to_parquet: {error}", file=sys.stderr)
