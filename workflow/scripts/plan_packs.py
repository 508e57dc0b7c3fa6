import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.probe.plan import plan_variant

plan = plan_variant(snakemake.config, snakemake.wildcards.variant, snakemake.output.plan, n=snakemake.params.n,
                    source=snakemake.params.source, probe=snakemake.input.get("probe"), slurm=snakemake.params.slurm)
print(f"{len(plan['packs'])} pack(s) of up to {plan['runs_per_gpu']} run(s) ({plan['source']})", file=sys.stderr)
