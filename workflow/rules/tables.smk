localrules:
    to_parquet,
    validate_run,


# CSV -> Parquet, one job per run: copy the run's CSV tables, run_info and
# attempt log out of its (undeclared) work tree (paths.work_root), then convert the CSVs.
# (Two steps, one job: a job per step costs ~1.3 ms of Snakemake planning per
# run, which adds up on a 10,000-run grid.)
rule to_parquet:
    input:
        # the run's own completion marker (train.smk: run_done), not its pack
        RUN_DONE,
    output:
        steps_csv=export_csv("steps"),
        val_csv=export_csv("val"),
        curvature_csv=export_csv("curvature"),
        noise_csv=export_csv("noise"),
        checkpoints_csv=export_csv("checkpoints"),
        run_info=RUN_INFO,
        attempts=ATTEMPTS,
        steps=parquet("steps"),
        val=parquet("val"),
        curvature=parquet("curvature"),
        noise=parquet("noise"),
        checkpoints=parquet("checkpoints"),
        report=CONVERT,
    log:
        "logs/to_parquet/{variant}/{run}.log",
    params:
        run_dir=run_dir,
    script:
        "../scripts/to_parquet.py"


rule validate_run:
    input:
        steps=parquet("steps"),
        val=parquet("val"),
        curvature=parquet("curvature"),
        noise=parquet("noise"),
        checkpoints=parquet("checkpoints"),
        report=CONVERT,
        run_info=RUN_INFO,
    output:
        json=VALIDATION_JSON,
        text=VALIDATION_TXT,
    log:
        "logs/validate_run/{variant}/{run}.log",
    params:
        expected=run_expected,
    script:
        "../scripts/validate_run.py"
