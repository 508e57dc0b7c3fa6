"""Compose the training config from Python (the same files `python -m loss_slope.train` uses)."""

from __future__ import annotations


def compose_train_config(overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # a Hydra app or an earlier compose may have left one
    with initialize_config_module(config_module="loss_slope.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))
