"""``python -m loss_slope.train [hydra overrides]`` — train one run.

Example::

    python -m loss_slope.train experiment=s_core optimizer.lr=0.1 seed=0 run_dir=work/S-core/demo
"""

import sys

import hydra

from loss_slope.train.run import run_training


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg) -> int:
    return run_training(cfg)


if __name__ == "__main__":
    code = main()
    sys.exit(code if isinstance(code, int) else 0)
