localrules:
    plan_packs,
    run_done,


rule probe_capacity:
    input:
        DATA_INPUTS,
    output:
        json="results/probe/{variant}.json",
        png=report(
            "results/probe/{variant}.png",
            caption="../report/probe.rst",
            category="Resources",
            labels={"variant": "{variant}", "figure": "runs per GPU"},
        ),
        md="results/probe/{variant}.md",
    log:
        "logs/probe_capacity/{variant}.log",
    benchmark:
        "benchmarks/probe_capacity/{variant}.tsv"
    threads: PACKING["probe_k_max"] * config["training"]["threads"]
    resources:
        # k = 1..probe_k_max trainings at once, training.threads CPUs each
        cpus_per_task=PACKING["probe_k_max"] * config["training"]["threads"],
    params:
        overrides=probe_overrides,
        probe=PACKING,
    script:
        "../scripts/probe_capacity.py"


# The plan: N runs per GPU and the packs. Params are digests (a dry-run's
# "reason" stays short); the script rebuilds the packs from the config and the
# membership history (loss_slope.probe.plan), so existing packs keep their runs.
if FIXED_N:

    # N is known: an ordinary rule, so a dry-run shows every pack and run
    rule plan_packs:
        output:
            plan="results/plan/{variant}/packs.json",
        log:
            "logs/plan_packs/{variant}.log",
        params:
            digest=plan_digest,
            n=FIXED_N,
            source=FIXED_N_SOURCE,
            slurm=SLURM_STUDY,
        script:
            "../scripts/plan_packs.py"

else:

    # N comes from the probe: the packs exist only after it ran
    checkpoint plan_packs:
        input:
            probe="results/probe/{variant}.json",
        output:
            plan="results/plan/{variant}/packs.json",
        log:
            "logs/plan_packs/{variant}.log",
        params:
            digest=plan_digest,
            n=None,
            source="probe",
            slurm=SLURM_STUDY,
        script:
            "../scripts/plan_packs.py"


# One GPU job trains the N runs of a pack. Resources: loss_slope.study.resources
# (N x training.threads CPUs, N x per-run host memory + margin growing with the
# attempt, runtime from the measured step time); never scaled by --cores.
rule train_pack:
    input:
        DATA_INPUTS,
        # ancient: a plan extended by new packs does not make the old packs out of date
        plan=ancient("results/plan/{variant}/packs.json"),
    output:
        "results/packs/{variant}/{pack}.json",
    log:
        "logs/train_pack/{variant}/{pack}.log",
    benchmark:
        "benchmarks/train_pack/{variant}/{pack}.tsv"
    threads: pack_cpus
    resources:
        cpus_per_task=pack_cpus,
        mem_mb=pack_mem_mb,
        runtime=pack_runtime,
        attempt_no=lambda wildcards, attempt: attempt,
    params:
        run_logs="logs/train/{variant}",
        runs=pack_runs_arg,
        settings=pack_digests,
        max_time=pack_time_budget,
        work_root=WORK_ROOT,
        max_errors=PACKING["max_error_attempts"],
        gpu=pack_gpu_args,
    shell:
        "python -m loss_slope.train.pack --plan {input.plan:q} --pack {wildcards.pack}"
        " --variant {wildcards.variant} --runs {params.runs} --output {output:q} --log-dir {params.run_logs:q}"
        " --work-root {params.work_root:q} --max-error-attempts {params.max_errors} {params.gpu}"
        " --attempt {resources.attempt_no} trainer.max_time_s={params.max_time} > {log:q} 2>&1"


# Per-run completion marker: downstream jobs depend on runs, not packs. Its
# params are the run's own settings digest, so only a change to this run's
# settings makes it (and its tables, validation and fit) out of date.
rule run_done:
    input:
        run_pack_output,
    output:
        "results/runs/{variant}/{run}.json",
    log:
        "logs/run_done/{variant}/{run}.log",
    params:
        settings=run_digest,
        run_dir=run_dir,
    script:
        "../scripts/run_done.py"
