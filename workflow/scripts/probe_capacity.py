import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.probe.capacity import ProbeFailed, probe_capacity, write_probe
from loss_slope.study.runs import data_location_overrides, run_control_overrides
from loss_slope.train.device import NoGPUError, resolve_accelerator
from loss_slope.train.exit_codes import EXIT_NO_GPU

# the run control now configured, and where the data is now: kept out of the params, so changing
# either does not rerun the probe; after the variant's own overrides, as the pack passes them
variant = snakemake.wildcards.variant
overrides = list(snakemake.params.overrides) + run_control_overrides(snakemake.config, variant)
overrides += data_location_overrides(snakemake.config)

accel = [o.split("=", 1)[1] for o in overrides if o.startswith("trainer.accelerator=")]
try:  # a GPU job without CUDA fails in seconds instead of probing the CPU
    resolve_accelerator(accel[-1] if accel else "auto")
except NoGPUError as exc:
    print(f"probe_capacity: {exc}", file=sys.stderr)
    sys.exit(EXIT_NO_GPU)  # as a trainer without its GPU

p = snakemake.params.probe
try:
    result = probe_capacity(
        overrides,
        variant=variant,
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
