"""Fit and report stages: validated Parquet tables -> per-run fits -> H1/H2 answers,
figures and ``summary.md``.

Modules (imported explicitly; this package imports nothing at import time). The
pipeline glue -- the fit stage, the rules' input functions and settings slices, and
every path -- lives in :mod:`loss_slope.pipeline`.

``summarize``   every fit JSON -> per-run table (one row per run of the config), H1/H2 JSON
``results``     the typed H1/H2 sections of ``stats.json`` (``to_dict`` / ``from_dict``)
``registry``    ``FIGURES``: the one list of report figures (rule outputs, builders, summary sections)
``figures``     one builder per figure: ``(table, stats, curves) -> Figure``
``verdicts``    the H1/H2 verdict sentences of the figure titles and ``summary.md``
``summary_md``  the plain-language ``summary.md``
``build``       figures + summary (rule ``build_report``)

See ``docs/report.md``.
"""
