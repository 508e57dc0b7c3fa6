localrules:
    plan_packs,
    pack_spec,
    run_done,


rule probe_capacity:
    input:
        DATA_INPUTS,
    output:
        json=PROBE_JSON,
        png=report(
            PROBE_PNG,
            caption="../report/probe.rst",
            category="Resources",
            labels={"variant": "{variant}", "figure": "runs per GPU"},
        ),
        md=PROBE_MD,
    log:
        rule_log("probe_capacity", BY_VARIANT),
    benchmark:
        rule_benchmark("probe_capacity", BY_VARIANT)
    threads: probe_cpus
    resources:
        # k = 1..probe_k_max trainings at once, each with the variant's training threads, and
        # the host memory of a pack of probe_k_max runs (loss_slope.study.resources)
        cpus_per_task=probe_cpus,
        mem_mb=probe_mem_mb,
    params:
        overrides=probe_overrides,
        probe=probe_settings,
    script:
        "../scripts/probe_capacity.py"


# N runs per GPU, fixed or measured, and what the probe measured:
# results/plan/{variant}/runs_per_gpu.json. It does not depend on the run
# list: adding runs to the config never reruns it (nor, through it, anything).
if FIXED_N:

    rule plan_packs:
        output:
            plan=RUNS_PER_GPU,
        log:
            rule_log("plan_packs", BY_VARIANT),
        params:
            n=FIXED_N,
            source=FIXED_N_SOURCE,
        script:
            "../scripts/plan_packs.py"

else:

    # N comes from the probe: the packs exist only after it ran
    checkpoint plan_packs:
        input:
            probe=PROBE_JSON,
        output:
            plan=RUNS_PER_GPU,
        log:
            rule_log("plan_packs", BY_VARIANT),
        params:
            n=None,
            source="probe",
        script:
            "../scripts/plan_packs.py"


# One pack's spec: its runs and their Hydra overrides (from the config), and
# the pack recorded in the registry results/plan/{variant}/packs.json. Params
# are short digests of what each run trains: only a change to one of its own
# runs re-plans (and so retrains) a pack; the dry-run reason stays short. No
# input: N decides which packs exist, not what one trains, so a new N (or a
# probe rerun) re-plans no existing pack.
rule pack_spec:
    output:
        spec=PACK_SPEC,
    log:
        rule_log("pack_spec", BY_PACK),
    params:
        settings=pack_settings,
        registry=lambda wildcards: registry_path(wildcards.variant),
    script:
        "../scripts/pack_spec.py"


# One GPU job trains the N runs of a pack. Resources: loss_slope.study.resources
# (N x the variant's training threads CPUs, N x per-run host memory + margin growing with the
# attempt, runtime from the measured step time); never scaled by --cores.
rule train_pack:
    input:
        DATA_INPUTS,
        spec=PACK_SPEC,
    output:
        PACK_DONE,
    log:
        rule_log("train_pack", BY_PACK),
    benchmark:
        rule_benchmark("train_pack", BY_PACK)
    threads: pack_cpus
    resources:
        cpus_per_task=pack_cpus,
        mem_mb=pack_mem_mb,
        runtime=pack_runtime,
        attempt_no=lambda wildcards, attempt: attempt,
    # params are what the pack trains and measured facts; run control (where the work tree
    # is, how many errors give a run up, GPU-model mismatch, MPS) reaches it through the
    # shell command, so changing it retrains nothing
    params:
        run_logs=TRAIN_LOG_DIR,
        max_time=pack_time_budget,
    shell:
        "python -m loss_slope.train.pack --plan {input.spec:q} --pack {wildcards.pack}"
        " --variant {wildcards.variant} --output {output:q} --log-dir {params.run_logs:q}"
        " --work-root {WORK_ROOT_Q} --max-error-attempts {MAX_ERRORS} {MEASURED_ARG}"
        " --gpu-mismatch {GPU_MISMATCH} --mps {MPS_SETTING}"
        " --attempt {resources.attempt_no} --run-control {RUN_CONTROL} trainer.max_time_s={params.max_time}"
        " {DATA_ROOT_OVERRIDE}"
        " > {log:q} 2>&1"


# Per-run completion marker: downstream jobs depend on runs, not packs. Its
# params are the run's own settings digest. A run given up after repeated
# errors fails here, with its error, and only here.
rule run_done:
    input:
        run_pack_output,
    output:
        RUN_DONE,
    log:
        rule_log("run_done", BY_RUN),
    params:
        settings=run_digest,
    script:
        "../scripts/run_done.py"
