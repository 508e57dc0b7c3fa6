import sys

sys.stderr = open(snakemake.log[0], "w")

import json

from loss_slope.probe.plan import write_plan

n, source, probe = snakemake.params.n, snakemake.params.source, None
if n is None:  # measured
    probe = snakemake.input.probe
    n = json.load(open(probe))["runs_per_gpu"]
plan = write_plan(snakemake.output.plan, variant=snakemake.wildcards.variant, runs=list(snakemake.params.runs),
                  n=n, source=source, probe=probe)
print(f"{len(plan['packs'])} pack(s) of up to {n} run(s) ({source})", file=sys.stderr)
