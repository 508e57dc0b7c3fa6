import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.probe.plan import plan_runs_per_gpu

out = plan_runs_per_gpu(
    snakemake.output.plan,
    variant=snakemake.wildcards.variant,
    n=snakemake.params.n,
    source=snakemake.params.source,
    probe=snakemake.input.get("probe"),
)
print(f"{out['runs_per_gpu']} run(s) per GPU ({out['source']})", file=sys.stderr)
