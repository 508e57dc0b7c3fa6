# Per-run fits: one small JSON per run, so a new or changed run refits only itself.
# Params carry only the analysis settings fit_run uses: editing one refits every
# run (and reruns the summary), never training.
from loss_slope.report.settings import analysis_problems, fit_settings

if analysis_problems(config):
    raise WorkflowError(
        "config error — invalid configuration:\n  - "
        + "\n  - ".join(analysis_problems(config))
    )


localrules:
    fit_run,


rule fit_run:
    input:
        steps="results/parquet/steps/variant={variant}/run={run}/part-0.parquet",
        val="results/parquet/val/variant={variant}/run={run}/part-0.parquet",
        run_info="results/export/{variant}/{run}/run_info.json",
        validation="results/validation/{variant}/{run}/validation.json",
    output:
        "results/fits/{variant}/{run}.json",
    log:
        "logs/fit_run/{variant}/{run}.log",
    benchmark:
        "benchmarks/fit_run/{variant}/{run}.tsv"
    params:
        identity=fit_identity,
        settings=fit_settings(config),
    script:
        "../scripts/fit_run.py"
