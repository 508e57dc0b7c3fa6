"""Fit and report stages: validated Parquet tables -> per-run fits -> H1/H2 answers,
figures and ``summary.md``.

Modules (imported explicitly; this package imports nothing at import time, so the
Snakefile can read :mod:`.settings` without loading numpy or matplotlib):

``fit_run``     one run's tables -> one fit JSON (status ok / too_short / invalid / diverged)
``summarize``   every fit JSON -> per-run table (one row per run of the config), H1/H2 JSON
``results``     the typed H1/H2 sections of ``stats.json`` (``to_dict`` / ``from_dict``)
``registry``    ``FIGURES``: the one list of report figures (rule outputs, builders, summary sections)
``figures``     one builder per figure: ``(table, stats, curves) -> Figure``
``verdicts``    the H1/H2 verdict sentences of the figure titles and ``summary.md``
``summary_md``  the plain-language ``summary.md``
``build``       figures + summary (rule ``build_report``)
``settings``    the ``analysis`` config slices each rule receives as params

See ``docs/report.md``.
"""
