import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.probe.capacity import ProbeFailed, probe_capacity, write_probe
from loss_slope.study.runs import data_location_overrides
from loss_slope.train.device import NoGPUError, resolve_accelerator
from loss_slope.train.exit_codes import EXIT_NO_GPU

accel = [o.split("=", 1)[1] for o in snakemake.params.overrides if o.startswith("trainer.accelerator=")]
try:  # a GPU job without CUDA fails in seconds instead of probing the CPU
    resolve_accelerator(accel[-1] if accel else "auto")
except NoGPUError as exc:
    print(f"probe_capacity: {exc}", file=sys.stderr)
    sys.exit(EXIT_NO_GPU)  # as a trainer without its GPU

# where the data is now (kept out of the params: moving the data does not rerun the probe)
where = data_location_overrides(snakemake.config)

p = snakemake.params.probe
try:
    result = probe_capacity(
        list(snakemake.params.overrides) + where,
        variant=snakemake.wildcards.variant,
        k_max=p["probe_k_max"],
        steps=p["probe_steps"],
        warmup=p["probe_warmup_steps"],
        tolerance=p["tolerance"],
        headroom=p["headroom"],
        mps=p.get("mps", "off"),
    )
except ProbeFailed as exc:  # no N is written: the variant's packs wait for a probe that ran
    print(f"probe_capacity: {exc}", file=sys.stderr)
    sys.exit(1)
write_probe(result, snakemake.output.json, snakemake.output.png, snakemake.output.md)
