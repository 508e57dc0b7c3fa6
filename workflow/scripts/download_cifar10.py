import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from loss_slope.data.cifar10 import download_cifar10

# output: {root}/cifar-10-batches-py/batches.meta
download_cifar10(Path(snakemake.output[0]).parent.parent)
