import json
import subprocess
import sys

import pytest

from loss_slope.data.cifar10 import TEST_FILE, TRAIN_FILES, DatasetError
from loss_slope.train.fingerprint import config_fingerprint
from loss_slope.train.work_tree import RunPaths, set_aside_if_stale

CFG = {
    "seed": 0,
    "run_dir": "work/a",
    "output": None,
    "optimizer": {"lr": 0.1},
    "trainer": {"epochs": 3, "threads": 1, "max_time_s": None},
}


def test_fingerprint_ignores_paths_and_run_control_but_not_science():
    base = config_fingerprint(CFG)
    assert config_fingerprint({**CFG, "run_dir": "elsewhere"}) == base
    assert config_fingerprint({**CFG, "trainer": {**CFG["trainer"], "threads": 4, "max_time_s": 60}}) == base
    assert config_fingerprint({**CFG, "optimizer": {"lr": 0.2}}) != base
    # when the latest checkpoint is written, and the OOM fallback's floor, train the same run
    control = {"checkpoint": {"latest_every_minutes": 5.0, "background_write": False}, "oom": {"min_micro_batch": 8}}
    assert config_fingerprint({**CFG, "trainer": {**CFG["trainer"], **control}}) == base
    assert config_fingerprint({**CFG, "trainer": {**CFG["trainer"], "epochs": 4}}) != base


def test_stale_work_tree_is_set_aside_not_deleted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"fingerprint": "old"}))
    (run / "done.json").write_text("{}")
    assert not set_aside_if_stale(RunPaths(run), "old")
    assert set_aside_if_stale(RunPaths(run), "new")
    assert not run.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.stale-")]
    assert len(aside) == 1 and (aside[0] / "done.json").exists()


def test_a_work_tree_with_an_unreadable_run_info_is_set_aside_saying_so(tmp_path, caplog, monkeypatch):
    import logging
    import os

    from loss_slope.train.work_tree import write_state_json

    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text("")  # as a crash can leave a file renamed before its data reached the disk
    with caplog.at_level(logging.WARNING, logger="loss_slope.train"):
        assert set_aside_if_stale(RunPaths(run), "new")
    assert "its run_info.json is unreadable" in caplog.text and "config of this run changed" not in caplog.text
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_state_json(tmp_path / "done.json", {"status": "complete"})
    assert synced  # state files are fsync'ed before their rename


def test_fingerprint_ignores_data_location_retention_eval_batch_and_work_root(tmp_path):
    cfg = {
        **CFG,
        "data": {"name": "cifar10", "root": str(tmp_path / "a"), "batch_size": 128, "eval_batch_size": 1000},
        "trainer": {**CFG["trainer"], "best_top_k": 3},
    }
    for root in ("a", "b"):
        d = tmp_path / root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for name in (*TRAIN_FILES, TEST_FILE):
            (d / name).write_bytes(b"same bytes")
    base = config_fingerprint(cfg)
    moved = {
        **cfg,
        "run_dir": "/scratch/work/a",
        "data": {**cfg["data"], "root": str(tmp_path / "b"), "eval_batch_size": 500},
        "trainer": {**cfg["trainer"], "best_top_k": 1},
    }
    assert config_fingerprint(moved) == base
    # the batches folder itself as the root (the reader accepts it): the same dataset, the same identity
    inside = {**cfg, "data": {**cfg["data"], "root": str(tmp_path / "a" / "cifar-10-batches-py")}}
    assert config_fingerprint(inside) == base
    (tmp_path / "b" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"other bytes")
    assert config_fingerprint(moved) != base  # another dataset: another identity
    assert config_fingerprint({**cfg, "data": {**cfg["data"], "batch_size": 64}}) != base


def test_fingerprint_ignores_the_data_builder_target():
    # data configs gained a `_target_` (the data module's builder): work trees trained before keep their identity
    cfg = {**CFG, "data": {"name": "digits", "batch_size": 32}}
    with_target = {**cfg, "data": {**cfg["data"], "_target_": "loss_slope.data.datasets.digits"}}
    assert config_fingerprint(with_target) == config_fingerprint(cfg)


def test_a_dataset_not_at_its_root_is_an_error_not_another_identity(tmp_path):
    # e.g. a node without the data file system: no fingerprint without the checksum, which would
    # differ from the run's and set its work tree aside as trained with another config
    cfg = {**CFG, "data": {"name": "cifar10", "root": str(tmp_path / "unmounted"), "batch_size": 128}}
    with pytest.raises(DatasetError, match="CIFAR-10 is not at .*unmounted.*data_batch_1"):
        config_fingerprint(cfg)


def test_a_trainer_without_its_dataset_leaves_the_work_tree_where_it_is(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"fingerprint": "trained-with-the-data"}))
    cmd = [sys.executable, "-m", "loss_slope.train", "data=cifar10", f"data.root={tmp_path / 'unmounted'}"]
    proc = subprocess.run([*cmd, f"run_dir={run}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "CIFAR-10 is not at" in proc.stdout + proc.stderr
    assert (run / "run_info.json").exists() and not list(tmp_path.glob("run.stale-*"))
