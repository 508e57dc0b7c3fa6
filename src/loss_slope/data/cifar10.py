"""CIFAR-10 from the standard python-pickle archive (cifar-10-python.tar.gz).

Layout inside the archive: ``cifar-10-batches-py/data_batch_{1..5}`` and
``test_batch``, each a pickled dict with ``b"data"`` (10000×3072 uint8, rows
are R, G, B planes of 32×32) and ``b"labels"`` (list of 10000 ints).
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class DatasetError(RuntimeError):
    """The dataset files are missing, corrupt or not in the expected format."""


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"missing CIFAR-10 file {path}")
    try:
        with open(path, "rb") as fh:
            # The official files are Python-2 pickles of plain dicts/lists/bytes.
            d = pickle.load(fh, encoding="bytes")
    except Exception as exc:  # rewrap with the file name
        raise DatasetError(f"cannot unpickle {path}: {exc}") from exc
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DatasetError(f"{path} is not a CIFAR-10 batch (expected keys b'data' and b'labels')")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"{path}: data has shape {data.shape} and {len(labels)} labels; expected (N, 3072) and N")
    if not len(labels):
        raise DatasetError(f"{path}: an empty batch (0 images)")
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: str | Path) -> dict[str, np.ndarray]:
    """Read the extracted archive under ``root`` (which contains ``cifar-10-batches-py/``
    or is that folder). Returns uint8 images (N, 3, 32, 32) and int64 labels."""
    folder = _folder(root)
    parts = [_read_batch(folder / f) for f in TRAIN_FILES]
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    vx, vy = _read_batch(folder / TEST_FILE)
    return {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _folder(root: str | Path) -> Path:
    """The batch files' folder: ``root`` itself when it is named ``cifar-10-batches-py``, else that folder under it."""
    root = Path(root)
    return root if root.name == FOLDER else root / FOLDER


def _missing(folder: Path) -> list[str]:
    """The batch files not (yet) in ``folder``."""
    return [f for f in (*TRAIN_FILES, TEST_FILE) if not (folder / f).is_file()]


def check_cifar10(root: str | Path) -> Path:
    """The dataset's folder (``root`` or ``cifar-10-batches-py`` under it, as :func:`read_cifar10`
    reads it); :class:`DatasetError` naming every missing file."""
    folder = _folder(root)
    missing = _missing(folder)
    if missing:
        raise DatasetError(
            f"CIFAR-10 is not at {folder}: missing {missing} (set data.root to where it is, or data.download: true)"
        )
    return folder


def download_cifar10(root: str | Path, *, url: str = URL, md5: str = MD5) -> Path:
    """Download the archive once, verify its MD5, extract it under ``root``.

    Idempotent: returns at once if every batch file is already there. The
    archive is written to a temporary name and renamed only after the checksum
    matches, so an interrupted download never looks complete.
    """
    folder = _folder(root)
    root = folder.parent  # the archive extracts to cifar-10-batches-py/
    if not _missing(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file() or md5sum(archive) != md5:
        tmp = archive.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        got = md5sum(tmp)
        if got != md5:
            tmp.unlink()
            raise DatasetError(f"checksum mismatch for {url}: got md5 {got}, expected {md5}")
        tmp.replace(archive)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")
    missing = _missing(folder)
    if missing:
        raise DatasetError(f"{archive} did not contain {missing} under {FOLDER}/")
    return folder
