# loss-slope: does a CNN's training loss follow a power law after its knee (H1),
# and does the early slope predict the best validation cross-entropy (H2)?
#
# Wiring only: every rule calls code in the `loss_slope` package.
#   snakemake --profile profiles/local                       the offline demo (config/config.yaml)
#   snakemake --profile profiles/local --configfile config/study.yaml -n    plan the 216-run study
#
# results/ layout (declared outputs; small). Every path is a template in
# src/loss_slope/pipeline/paths.py, which the rules and the Python code both read:
#   results/probe/{variant}.json|.png|.md            runs-per-GPU probe (skipped when N is fixed)
#   results/plan/{variant}/packs.json                packs of N runs (checkpoint when N is measured)
#   results/packs/{variant}/{pack}.json              a pack finished: its runs trained (exit codes, logs)
#   results/export/{variant}/{run}/                  steps.csv, val.csv, run_info.json, attempts.json
#   results/parquet/{steps,val,curvature,noise,checkpoints}/variant={variant}/run={run}/part-0.parquet  (hive)
#   results/convert/{variant}/{run}.json             CSV -> Parquet report (file:line of any bad row)
#   results/validation/{variant}/{run}/validation.json, summary.txt
#   results/fits/{variant}/{run}.json                knees, fits, slopes, status of one run
#   results/report/                                  summary.md, figures/, runs table, stats.json (H1/H2)
#   results/report_partial/                          the same from the runs that finished (target report_partial)
# work/{variant}/{run}/   undeclared training state: checkpoints, partial CSVs, attempts.jsonl
# logs/{rule}/...         one log per job;  benchmarks/{rule}/...  one benchmark per job


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
