"""A simulated training backend: known-truth loss curves written as real runs write them.

``data=simulated`` (Hydra) makes ``python -m loss_slope.train`` run
:func:`loss_slope.simulate.backend.run_simulated` instead of Lightning: same
work tree, same tables, same exactly-once resume, no GPU, no dataset, no torch.
The curves come from :mod:`loss_slope.simulate.model`, whose parameters live
under ``data.simulation`` (``src/loss_slope/conf/data/simulated.yaml``,
``docs/simulated.md``); each run's truth is written to ``truth.json``.
"""
