import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.probe.capacity import probe_capacity, write_probe

p = snakemake.params.probe
result = probe_capacity(
    list(snakemake.params.overrides),
    variant=snakemake.wildcards.variant,
    k_max=p["probe_k_max"],
    steps=p["probe_steps"],
    warmup=p["probe_warmup_steps"],
    tolerance=p["tolerance"],
    headroom=p["headroom"],
)
write_probe(result, snakemake.output.json, snakemake.output.png, snakemake.output.md)
