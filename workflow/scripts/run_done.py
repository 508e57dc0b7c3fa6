import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.pipeline.paths import TRAIN_LOG
from loss_slope.train.pack import write_run_marker

write_run_marker(
    snakemake.params.run_dir,
    snakemake.output[0],
    variant=snakemake.wildcards.variant,
    run=snakemake.wildcards.run,
    log_path=TRAIN_LOG.format(variant=snakemake.wildcards.variant, run=snakemake.wildcards.run),
)
