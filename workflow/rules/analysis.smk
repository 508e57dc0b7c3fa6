# Per-run fits: one small JSON per run, so a new or changed run refits only itself.
# Params carry only the analysis settings fit_run uses: editing one refits every
# run (and reruns the summary), never training.
from loss_slope.pipeline.settings import analysis_problems, fit_settings

if analysis_problems(config):
    raise WorkflowError(
        "config error — invalid configuration:\n  - "
        + "\n  - ".join(analysis_problems(config))
    )


localrules:
    fit_run,


rule fit_run:
    input:
        steps=parquet("steps"),
        val=parquet("val"),
        run_info=RUN_INFO,
        validation=VALIDATION_JSON,
    output:
        FIT,
    log:
        rule_log("fit_run", BY_RUN),
    benchmark:
        rule_benchmark("fit_run", BY_RUN)
    params:
        identity=fit_identity,
        settings=fit_settings(config),
    script:
        "../scripts/fit_run.py"
