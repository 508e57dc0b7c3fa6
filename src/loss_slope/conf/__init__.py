"""Hydra config tree of `python -m loss_slope.train` (a package so compose() can find it)."""
