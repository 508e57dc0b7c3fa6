"""``python -m loss_slope.train [hydra overrides]`` — train one run.

Example::

    python -m loss_slope.train experiment=s_core optimizer.lr=0.1 seed=0 run_dir=work/S-core/demo

With ``data=simulated`` the run is simulated (``loss_slope.simulate.backend``):
the same work tree and tables from known-truth curves, without torch, a GPU or
a dataset (docs/simulated.md). Any other ``data`` trains with Lightning
(:func:`loss_slope.train.run.run_training`); its data module is the config's ``_target_``.

Exit codes: 0 complete, 3 unfinished (time budget or SIGTERM; a rerun resumes),
4 locked by another trainer, 5 no CUDA in a GPU job, 1 error.
"""

import sys

import hydra


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg) -> None:
    # Each backend is imported only once chosen (start-up: --help needs neither, a simulated run
    # needs no torch or Lightning); run_training defers Lightning further, behind the run's lock.
    if cfg.data.name == "simulated":  # not a data module: the simulated backend runs instead of Lightning
        from loss_slope.simulate.backend import run_simulated as backend
    else:
        from loss_slope.train.run import run_training as backend
    code = backend(cfg)
    if code:
        sys.exit(code)  # hydra.main drops return values


if __name__ == "__main__":
    main()
