localrules:
    plan_packs,


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
    threads: config["packing"]["probe_k_max"] * config["training"]["threads"]
    resources:
        mem_mb=4000,
    params:
        overrides=probe_overrides,
        probe=config["packing"],
    script:
        "../scripts/probe_capacity.py"


if FIXED_N:

    # N is known: an ordinary rule, so a dry-run shows every pack and run
    rule plan_packs:
        output:
            plan="results/plan/{variant}/packs.json",
        log:
            "logs/plan_packs/{variant}.log",
        params:
            runs=plan_runs,
            n=FIXED_N,
            source=FIXED_N_SOURCE,
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
            runs=plan_runs,
            n=None,
            source="probe",
        script:
            "../scripts/plan_packs.py"


rule train_pack:
    input:
        DATA_INPUTS,
        plan="results/plan/{variant}/packs.json",
    output:
        "results/packs/{variant}/{pack}.json",
    log:
        "logs/train_pack/{variant}/{pack}.log",
    benchmark:
        "benchmarks/train_pack/{variant}/{pack}.tsv"
    threads: pack_threads
    resources:
        mem_mb=lambda wildcards, threads: 1000 + 1500 * threads,
        runtime=720,
        attempt_no=lambda wildcards, attempt: attempt,
    params:
        run_logs="logs/train/{variant}",
        runs=pack_runs_arg,
        max_time=pack_time_budget,
    shell:
        "python -m loss_slope.train.pack --plan {input.plan:q} --pack {wildcards.pack}"
        " --variant {wildcards.variant} --runs {params.runs} --output {output:q} --log-dir {params.run_logs:q}"
        " --attempt {resources.attempt_no} trainer.max_time_s={params.max_time} > {log:q} 2>&1"
