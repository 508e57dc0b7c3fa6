"""Fit and report stages: validated Parquet tables -> per-run fits -> H1/H2 answers,
figures and ``summary.md``.

Modules (imported explicitly; this package imports nothing at import time, so the
Snakefile can read :mod:`.settings` without loading numpy or matplotlib):

``fit_run``     one run's tables -> one fit JSON (status ok / too_short / invalid / diverged)
``summarize``   every fit JSON -> per-run table (one row per run of the config), H1/H2 JSON
``figures``     one function per figure; each takes the table and returns a Figure
``summary_md``  the plain-language ``summary.md``
``build``       figures + summary (rule ``build_report``)
``settings``    the ``analysis`` config slices each rule receives as params

See ``docs/report.md``.
"""
