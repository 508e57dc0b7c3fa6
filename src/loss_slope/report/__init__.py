"""Fit and report stages: validated Parquet tables -> per-run fits -> H1/H2 answers,
figures and ``summary.md``.

Modules (imported explicitly; this package imports nothing at import time). The
pipeline glue -- the fit stage, the rules' input functions and settings slices, and
every path -- lives in :mod:`loss_slope.pipeline`.

``summarize``   every fit JSON -> per-run table (one row per run of the config), ``stats.json``
``study_stats`` ``StudyStats``: the whole of ``stats.json``, typed (``to_dict`` / ``from_dict``)
``results``     its typed H1/H2 sections
``truth_section`` its typed ``truth`` section (a simulated study)
``records``     checked ``from_dict`` / ``to_dict`` of every record; ``StatsFormatError``
``registry``    ``FIGURES``: the one list of report figures (rule outputs, builders, summary sections)
``figures``     one builder per figure: ``(table, stats, curves) -> Figure``
``verdicts``    the H1/H2 verdict sentences of the figure titles and ``summary.md``
``summary_md``  the plain-language ``summary.md``
``build``       figures + summary (rule ``build_report``)

See ``docs/report.md``.
"""
