# Summary, figures and summary.md. Two report folders, same rules:
#   results/report/          every run of the config (the default target)
#   results/report_partial/  only runs whose training finished (target: report_partial);
#                            the others are listed as "missing". Schedules no probe and no
#                            unfinished run (a finished run whose settings changed is retrained).
from functools import partial

from loss_slope.report.registry import FIGURES
from loss_slope.pipeline.settings import run_identity, study_settings
from loss_slope.pipeline.targets import fit_inputs, missing_reasons, truth_inputs


report: "../report/workflow.rst"


localrules:
    summarize,
    build_report,
    report_partial,


rule summarize:
    input:
        fits=partial(fit_inputs, RUNS, fixed_pack=run_pack if FIXED_N else None),
        run_infos=partial(
            truth_inputs,
            RUNS,
            fixed_pack=run_pack if FIXED_N else None,
            simulated=config["data"]["name"] == "simulated",
        ),
    output:
        table=REPORT_RUNS_PARQUET,
        csv=report(
            REPORT_RUNS_CSV,
            caption="../report/runs_table.rst",
            category="5. Tables",
            labels={"table": "every run (one row per run of the config)"},
        ),
        variants=report(
            REPORT_VARIANTS_CSV,
            caption="../report/variants_table.rst",
            category="5. Tables",
            labels={"table": "one row per variant"},
        ),
        variant_tables=[
            report(
                report_variant_table(v),
                caption="../report/variant_table.rst",
                category="6. Per-variant run tables",
                labels={"variant": v},
            )
            for v in VARIANTS
        ],
        stats=report(
            REPORT_STATS,
            caption="../report/stats.rst",
            category="5. Tables",
            labels={"table": "H1/H2 statistics (JSON)"},
        ),
    log:
        rule_log("summarize", BY_REPORT),
    benchmark:
        rule_benchmark("summarize", BY_REPORT)
    wildcard_constraints:
        reportdir="report|report_partial",
    params:
        runs=[run_identity(spec) for spec in RUNS.values()],
        missing=partial(missing_reasons, RUNS, fixed_pack=run_pack if FIXED_N else None),
        settings=study_settings(config),
        study=config["study"],
    script:
        "../scripts/summarize.py"


rule build_report:
    input:
        table=REPORT_RUNS_PARQUET,
        stats=REPORT_STATS,
        csv=REPORT_RUNS_CSV,
        variants=REPORT_VARIANTS_CSV,
        fits=partial(fit_inputs, RUNS, fixed_pack=run_pack if FIXED_N else None),
    output:
        summary=report(
            REPORT_SUMMARY,
            caption="../report/summary.rst",
            category="0. Summary",
            labels={"file": "summary.md"},
        ),
        figures=[
            report(
                report_figure(f.name, "png"),
                caption=f"../report/{f.name}.rst",
                category=f.category,
                labels={"figure": f.label},
            )
            for f in FIGURES.values()
        ],
        figures_svg=[report_figure(name, "svg") for name in FIGURES],
        curves=[
            report(
                report_curves(v, "png"),
                caption="../report/variant_curves.rst",
                category="7. Loss curves per variant",
                labels={"variant": v},
            )
            for v in VARIANTS
        ],
        curves_svg=[report_curves(v, "svg") for v in VARIANTS],
    log:
        rule_log("build_report", BY_REPORT),
    benchmark:
        rule_benchmark("build_report", BY_REPORT)
    wildcard_constraints:
        reportdir="report|report_partial",
    script:
        "../scripts/build_report.py"


rule report_partial:
    input:
        report_targets("report_partial"),
