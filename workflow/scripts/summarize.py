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
print(
    f"summarize: {stats['counts']}; H1 {stats['h1']['single_power_law'].get('verdicts', 'not computable')}, "
    f"H2 {stats['h2']['verdict']}",
    file=sys.stderr,
)
