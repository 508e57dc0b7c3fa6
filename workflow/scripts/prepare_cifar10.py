import sys

sys.stderr = open(snakemake.log[0], "w")

from loss_slope.data.cifar10 import check_cifar10, download_cifar10
from loss_slope.jsonio import write_json

data = snakemake.config["data"]
folder = download_cifar10(data["root"]) if data["download"] else check_cifar10(data["root"])
write_json({"dataset": "cifar10", "folder": str(folder), "downloaded": bool(data["download"])}, snakemake.output[0])
print(f"CIFAR-10 at {folder}", file=sys.stderr)
