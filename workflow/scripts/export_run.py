import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.tables.export import export_run

export_run(
    snakemake.params.run_dir,
    steps_csv=snakemake.output.steps,
    val_csv=snakemake.output.val,
    run_info=snakemake.output.run_info,
    attempts=snakemake.output.attempts,
    monitors={t: snakemake.output[t] for t in ("curvature", "noise", "checkpoints")},
)
