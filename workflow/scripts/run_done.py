import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.pipeline.paths import TRAIN_LOG, work_run
from loss_slope.train.pack import write_run_marker

# the work tree is run control: read from the config, not a param (moving it reruns nothing)
write_run_marker(
    work_run(snakemake.config["paths"]["work_root"], snakemake.wildcards.variant, snakemake.wildcards.run),
    snakemake.output[0],
    variant=snakemake.wildcards.variant,
    run=snakemake.wildcards.run,
    log_path=TRAIN_LOG.format(variant=snakemake.wildcards.variant, run=snakemake.wildcards.run),
)
