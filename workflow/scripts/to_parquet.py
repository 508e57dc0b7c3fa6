import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.tables.parquet import convert_run

result = convert_run(
    steps_csv=snakemake.input.steps,
    val_csv=snakemake.input.val,
    steps_parquet=snakemake.output.steps,
    val_parquet=snakemake.output.val,
    report_path=snakemake.output.report,
    monitors={t: (snakemake.input[t], snakemake.output[t]) for t in ("curvature", "noise", "checkpoints")},
)
for table in result["tables"].values():
    for error in table["errors"]:
        print(f"to_parquet: {error}", file=sys.stderr)
