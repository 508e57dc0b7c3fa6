"""``python -m loss_slope.train [hydra overrides]`` — train one run.

Example::

    python -m loss_slope.train experiment=s_core optimizer.lr=0.1 seed=0 run_dir=work/S-core/demo

Exit codes: 0 complete, 3 unfinished (time budget or SIGTERM; a rerun resumes), 1 error.
"""

import sys

import hydra

from loss_slope.train.run import run_training


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg) -> None:
    code = run_training(cfg)
    if code:
        sys.exit(code)  # hydra.main drops return values


if __name__ == "__main__":
    main()
