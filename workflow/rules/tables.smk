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
        # every table of tables/schema.py: "<table>_csv" (export) and "<table>" (Parquet)
        **export_csvs(TABLES),
        **parquets(TABLES),
        run_info=RUN_INFO,
        attempts=ATTEMPTS,
        report=CONVERT,
    log:
        rule_log("to_parquet", BY_RUN),
    script:
        "../scripts/to_parquet.py"


rule validate_run:
    input:
        **parquets(TABLES),
        report=CONVERT,
        run_info=RUN_INFO,
    output:
        json=VALIDATION_JSON,
        text=VALIDATION_TXT,
    log:
        rule_log("validate_run", BY_RUN),
    params:
        expected=run_expected,
    script:
        "../scripts/validate_run.py"
