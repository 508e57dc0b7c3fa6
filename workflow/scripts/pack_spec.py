import sys

sys.stderr = open(snakemake.log[0], "w")

import json

from loss_slope.probe.plan import write_pack_spec
from loss_slope.study.runs import build_runs

MEASURED = ("runs_per_gpu", "source", "gpu_name", "step_s", "host_mem_mb_per_run", "mps")
variant = snakemake.wildcards.variant
members = [m.split(":")[0] for m in snakemake.params.settings.split(",")]
specs = {s.run: s for s in build_runs(snakemake.config) if s.variant == variant}
measured = json.load(open(snakemake.input.n)) if snakemake.input.get("n") else {}
write_pack_spec(
    snakemake.output.spec,
    snakemake.params.registry,
    variant=variant,
    pack=snakemake.wildcards.pack,
    runs=[{"run": r, "overrides": specs[r].overrides} for r in members],
    # mps: whether the probe chose an MPS daemon (packing.mps auto)
    measured={k: measured.get(k) for k in MEASURED},
)
