import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.pipeline.fit_run import fit_run

result = fit_run(
    steps_parquet=snakemake.input.steps,
    val_parquet=snakemake.input.val,
    run_info=snakemake.input.run_info,
    validation=snakemake.input.validation,
    output=snakemake.output[0],
    identity=dict(snakemake.params.identity),
    settings=dict(snakemake.params.settings),
)
row = result["row"]
print(f"fit_run {row['variant']}/{row['run']}: {row['status']} {row['reason'] or ''}", file=sys.stderr)
