"""A run's identity: what it trains, independent of where it is written or where its data lives."""

from __future__ import annotations

import hashlib
import json

from loss_slope.study.run_control import NOT_SCIENCE, NOT_SCIENCE_DATA, NOT_SCIENCE_TRAINER

_DATA_FOLDERS = {"cifar10": "cifar-10-batches-py"}
_CHECKSUMS: dict[tuple, str] = {}


def dataset_checksum(name: str | None, root: str | None) -> str | None:
    """MD5 over the dataset's files (name + content), so moving the data changes nothing;
    None for a dataset that ships with the package (digits).

    A file-backed dataset that is not at ``root`` (e.g. a file system not mounted on this node)
    raises ``DatasetError`` naming the missing files: a fingerprint without its checksum would
    differ from the run's, and its work tree would be set aside as trained with another config.
    """
    folder = _DATA_FOLDERS.get(str(name))
    if not folder or not root:
        return None
    from loss_slope.data.cifar10 import check_cifar10

    path = check_cifar10(root)
    files = sorted(p for p in path.iterdir() if p.is_file())
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files) + (str(path.resolve()),)
    if key not in _CHECKSUMS:
        h = hashlib.md5()
        for p in files:
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        _CHECKSUMS[key] = h.hexdigest()
    return _CHECKSUMS[key]


def config_fingerprint(cfg: dict) -> str:
    """SHA-256 (16 hex) of the resolved config minus output paths, data location and run-control knobs.

    The dataset enters by its checksum (when it has files), not by its folder.
    """
    d = {k: v for k, v in cfg.items() if k not in NOT_SCIENCE}
    if isinstance(d.get("trainer"), dict):
        d["trainer"] = {k: v for k, v in d["trainer"].items() if k not in NOT_SCIENCE_TRAINER}
    if isinstance(d.get("data"), dict):
        data = cfg["data"]
        d["data"] = {k: v for k, v in data.items() if k not in NOT_SCIENCE_DATA}
        checksum = dataset_checksum(data.get("name"), data.get("root"))
        if checksum:
            d["data"]["checksum"] = checksum
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
