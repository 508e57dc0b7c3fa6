"""Pipeline glue: what the Snakemake rules call, and where their files live.

Modules (imported explicitly; this package imports nothing at import time, so the
Snakefile can read :mod:`.paths`, :mod:`.settings` and :mod:`.targets` without
loading the analysis):

``paths``     every file and folder template of the workflow (``results/...``, ``work/...``,
              ``logs/train/...``): the rules and the Python code both read them here,
              so renaming a folder is one edit
``settings``  the ``analysis`` config slices each rule receives as params, and a run's identity
``targets``   the Snakemake input functions of the fit and report rules (partial reports)
``fit_run``   the fit stage: one run's tables -> one fit JSON (rule ``fit_run``)
"""
