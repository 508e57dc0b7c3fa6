import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.report.build import build_report, by_stem

build_report(
    table_parquet=snakemake.input.table,
    stats_json=snakemake.input.stats,
    fit_files=list(snakemake.input.fits),
    figures=by_stem([*snakemake.output.figures, *snakemake.output.figures_svg]),
    variant_figures=by_stem([*snakemake.output.curves, *snakemake.output.curves_svg]),
    summary_md=snakemake.output.summary,
    tables={"per-run table (CSV)": snakemake.input.csv, "per-variant table (CSV)": snakemake.input.variants},
    partial=snakemake.wildcards.reportdir == "report_partial",
)
