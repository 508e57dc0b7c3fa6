localrules:
    export_run,
    to_parquet,
    validate_run,


rule export_run:
    input:
        run_pack,
    output:
        steps="results/export/{variant}/{run}/steps.csv",
        val="results/export/{variant}/{run}/val.csv",
        curvature="results/export/{variant}/{run}/curvature.csv",
        noise="results/export/{variant}/{run}/noise.csv",
        checkpoints="results/export/{variant}/{run}/checkpoints.csv",
        run_info="results/export/{variant}/{run}/run_info.json",
        attempts="results/export/{variant}/{run}/attempts.json",
    log:
        "logs/export_run/{variant}/{run}.log",
    params:
        run_dir="work/{variant}/{run}",
    script:
        "../scripts/export_run.py"


rule to_parquet:
    input:
        steps="results/export/{variant}/{run}/steps.csv",
        val="results/export/{variant}/{run}/val.csv",
        curvature="results/export/{variant}/{run}/curvature.csv",
        noise="results/export/{variant}/{run}/noise.csv",
        checkpoints="results/export/{variant}/{run}/checkpoints.csv",
    output:
        steps="results/parquet/steps/variant={variant}/run={run}/part-0.parquet",
        val="results/parquet/val/variant={variant}/run={run}/part-0.parquet",
        curvature="results/parquet/curvature/variant={variant}/run={run}/part-0.parquet",
        noise="results/parquet/noise/variant={variant}/run={run}/part-0.parquet",
        checkpoints="results/parquet/checkpoints/variant={variant}/run={run}/part-0.parquet",
        report="results/convert/{variant}/{run}.json",
    log:
        "logs/to_parquet/{variant}/{run}.log",
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
