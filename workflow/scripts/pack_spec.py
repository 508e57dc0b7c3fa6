import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.probe.plan import write_pack_spec
from loss_slope.study.runs import build_runs, planned_overrides

variant = snakemake.wildcards.variant
members = [m.split(":")[0] for m in snakemake.params.settings.split(",")]
specs = {s.run: s for s in build_runs(snakemake.config) if s.variant == variant}
write_pack_spec(
    snakemake.output.spec,
    snakemake.params.registry,
    variant=variant,
    pack=snakemake.wildcards.pack,
    # a finished run removed from the config is in the params (not to re-plan the pack), not in the spec
    runs=[{"run": r, "overrides": planned_overrides(specs[r])} for r in members if r in specs],
)
