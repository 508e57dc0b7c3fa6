"""``python -m loss_slope.train [hydra overrides]`` — train one run.

Example::

    python -m loss_slope.train experiment=s_core optimizer.lr=0.1 seed=0 run_dir=work/S-core/demo

With ``data=simulated`` the run is simulated (``loss_slope.simulate.backend``):
the same work tree and tables from known-truth curves, without torch, a GPU or
a dataset (docs/simulated.md).

Exit codes: 0 complete, 3 unfinished (time budget or SIGTERM; a rerun resumes), 1 error.
"""

import logging
import sys

import hydra

from loss_slope.train.run import EXIT_ERROR


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg) -> None:
    if cfg.data.name == "simulated":
        from loss_slope.simulate.backend import run_simulated

        code = run_simulated(cfg)
    else:
        # imported here: torch and Lightning take seconds to import, the simulated backend needs neither
        from loss_slope.train.module import MicroBatchTooSmall
        from loss_slope.train.run import run_training

        try:
            code = run_training(cfg)
        except MicroBatchTooSmall as exc:  # a known reason: one clear line, no traceback
            logging.getLogger("loss_slope.train").error("run failed: %s", exc)
            sys.exit(EXIT_ERROR)
    if code:
        sys.exit(code)  # hydra.main drops return values


if __name__ == "__main__":
    main()
