"""The CIFAR-10 reader and downloader, on small files in the official format."""

import pickle
import tarfile

import numpy as np
import pytest

from loss_slope.data.cifar10 import FOLDER, TEST_FILE, TRAIN_FILES, DatasetError, download_cifar10, md5sum, read_cifar10


def write_fake_cifar(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / FOLDER
    folder.mkdir(parents=True)
    truth = {}
    for name in (*TRAIN_FILES, TEST_FILE):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as fh:
            # protocol 2 with bytes keys, like the official Python-2 pickles
            pickle.dump(
                {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n},
                fh,
                protocol=2,
            )
        truth[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}, protocol=2))
    return truth


def test_reader_known_answer(tmp_path):
    truth = write_fake_cifar(tmp_path)
    d = read_cifar10(tmp_path)
    assert d["train_x"].shape == (100, 3, 32, 32) and d["train_x"].dtype == np.uint8
    assert d["val_x"].shape == (20, 3, 32, 32)
    data, labels = truth["data_batch_2"]
    # row layout: 1024 red, 1024 green, 1024 blue values of a 32x32 image
    np.testing.assert_array_equal(d["train_x"][20, 1], data[0, 1024:2048].reshape(32, 32))
    assert d["train_y"][20:40].tolist() == labels
    assert d["val_y"].tolist() == truth[TEST_FILE][1]


def test_reader_errors_name_the_file(tmp_path):
    write_fake_cifar(tmp_path)
    (tmp_path / FOLDER / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_3"):
        read_cifar10(tmp_path)
    (tmp_path / FOLDER / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing CIFAR-10 file .*data_batch_3"):
        read_cifar10(tmp_path)


def test_download_verifies_checksum_and_extracts(tmp_path):
    src = tmp_path / "src"
    write_fake_cifar(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / FOLDER, arcname=FOLDER)
    url = archive.as_uri()
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="checksum mismatch"):
        download_cifar10(dest, url=url, md5="0" * 32)
    assert not (dest / "cifar-10-python.tar.gz").exists()
    folder = download_cifar10(dest, url=url, md5=md5sum(archive))
    assert (folder / "data_batch_1").is_file()
    assert read_cifar10(dest)["train_x"].shape[0] == 100
    # idempotent: a second call does not touch the network (bad URL is fine)
    assert download_cifar10(dest, url="file:///nonexistent", md5="x") == folder


def test_root_may_be_the_batches_folder_itself(tmp_path):
    """``data.root`` is the folder that holds ``cifar-10-batches-py/`` or that folder: the reader
    and the check that the run's fingerprint uses accept the same two forms."""
    from loss_slope.data.cifar10 import check_cifar10

    write_fake_cifar(tmp_path)
    for root in (tmp_path, tmp_path / FOLDER):
        assert check_cifar10(root) == tmp_path / FOLDER
        assert read_cifar10(root)["train_x"].shape == (100, 3, 32, 32)
    assert download_cifar10(tmp_path / FOLDER, url="file:///nonexistent") == tmp_path / FOLDER  # nothing to fetch


def test_an_empty_batch_is_a_dataset_error(tmp_path):
    write_fake_cifar(tmp_path)
    with open(tmp_path / FOLDER / TEST_FILE, "wb") as fh:
        pickle.dump({b"labels": [], b"data": np.zeros((0, 3072), np.uint8)}, fh, protocol=2)
    with pytest.raises(DatasetError, match=f"{TEST_FILE}: an empty batch"):
        read_cifar10(tmp_path)
