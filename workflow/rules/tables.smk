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
        "results/runs/{variant}/{run}.json",
    output:
        steps_csv="results/export/{variant}/{run}/steps.csv",
        val_csv="results/export/{variant}/{run}/val.csv",
        curvature_csv="results/export/{variant}/{run}/curvature.csv",
        noise_csv="results/export/{variant}/{run}/noise.csv",
        checkpoints_csv="results/export/{variant}/{run}/checkpoints.csv",
        run_info="results/export/{variant}/{run}/run_info.json",
        attempts="results/export/{variant}/{run}/attempts.json",
        steps="results/parquet/steps/variant={variant}/run={run}/part-0.parquet",
        val="results/parquet/val/variant={variant}/run={run}/part-0.parquet",
        curvature="results/parquet/curvature/variant={variant}/run={run}/part-0.parquet",
        noise="results/parquet/noise/variant={variant}/run={run}/part-0.parquet",
        checkpoints="results/parquet/checkpoints/variant={variant}/run={run}/part-0.parquet",
        report="results/convert/{variant}/{run}.json",
    log:
        "logs/to_parquet/{variant}/{run}.log",
    params:
        run_dir=run_dir,
    script:
        "../scripts/to_parquet.py"


rule validate_run:
    input:
        steps="results/parquet/steps/variant={variant}/run={run}/part-0.parquet",
        val="results/parquet/val/variant={variant}/run={run}/part-0.parquet",
        curvature="results/parquet/curvature/variant={variant}/run={run}/part-0.parquet",
        noise="results/parquet/noise/variant={variant}/run={run}/part-0.parquet",
        checkpoints="results/parquet/checkpoints/variant={variant}/run={run}/part-0.parquet",
        report="results/convert/{variant}/{run}.json",
        run_info="results/export/{variant}/{run}/run_info.json",
    output:
        json="results/validation/{variant}/{run}/validation.json",
        text="results/validation/{variant}/{run}/summary.txt",
    log:
        "logs/validate_run/{variant}/{run}.log",
    params:
        expected=run_expected,
    script:
        "../scripts/validate_run.py"
