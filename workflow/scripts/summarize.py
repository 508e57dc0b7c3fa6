import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.report.summarize import summarize

stats = summarize(
    fit_files=list(snakemake.input.fits),
    runs=list(snakemake.params.runs),
    study=snakemake.params.settings["study"],
    early_window=snakemake.params.settings["early_window"],
    time_axis=snakemake.params.settings["time_axis"],
    study_name=snakemake.params.study,
    table_parquet=snakemake.output.table,
    table_csv=snakemake.output.csv,
    variants_csv=snakemake.output.variants,
    variant_csvs=list(snakemake.output.variant_tables),
    stats_json=snakemake.output.stats,
    missing_reasons=dict(snakemake.params.missing),
    truth_run_infos=list(snakemake.input.run_infos),
)
h1 = stats.h1.main
print(
    f"summarize: {stats.counts.to_dict()}; H1 {dict(h1.verdicts) if h1.computable else h1.verdict}, "
    f"H2 {stats.h2.main.verdict}",
    file=sys.stderr,
)
