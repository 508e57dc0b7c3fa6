rule train:
    input:
        data_inputs,
    output:
        "results/train/{variant}/{run}/run.json",
    log:
        "logs/train/{variant}/{run}.log",
    benchmark:
        "benchmarks/train/{variant}/{run}.tsv"
    threads: config["training"]["threads"]
    resources:
        mem_mb=2000,
    params:
        overrides=run_overrides,
        run_dir="work/{variant}/{run}",
    shell:
        "python -m loss_slope.train {params.overrides} variant={wildcards.variant} run={wildcards.run}"
        " run_dir={params.run_dir:q} output={output:q} > {log:q} 2>&1"
