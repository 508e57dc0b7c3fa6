import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.train.pack import write_run_marker

write_run_marker(
    snakemake.params.run_dir,
    snakemake.output[0],
    variant=snakemake.wildcards.variant,
    run=snakemake.wildcards.run,
    log_path=f"logs/train/{snakemake.wildcards.variant}/{snakemake.wildcards.run}.log",
)
