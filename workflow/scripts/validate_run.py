import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.tables.schema import MONITOR_TABLES
from loss_slope.tables.validate import validate_run, write_report

report = validate_run(
    steps_parquet=snakemake.input.steps,
    val_parquet=snakemake.input.val,
    convert_report=snakemake.input.report,
    run_info=snakemake.input.run_info,
    expected=dict(snakemake.params.expected),
    monitors={t: snakemake.input[t] for t in MONITOR_TABLES},
)
write_report(report, snakemake.output.json, snakemake.output.text)
print(report.summary(), file=sys.stderr)
