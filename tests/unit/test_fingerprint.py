import json

from loss_slope.train.fingerprint import config_fingerprint
from loss_slope.train.run import RunPaths, _set_aside_if_stale

CFG = {"seed": 0, "run_dir": "work/a", "output": None, "optimizer": {"lr": 0.1},
       "trainer": {"epochs": 3, "threads": 1, "max_time_s": None}}


def test_fingerprint_ignores_paths_and_run_control_but_not_science():
    base = config_fingerprint(CFG)
    assert config_fingerprint({**CFG, "run_dir": "elsewhere"}) == base
    assert config_fingerprint({**CFG, "trainer": {**CFG["trainer"], "threads": 4, "max_time_s": 60}}) == base
    assert config_fingerprint({**CFG, "optimizer": {"lr": 0.2}}) != base
    assert config_fingerprint({**CFG, "trainer": {**CFG["trainer"], "epochs": 4}}) != base


def test_stale_work_tree_is_set_aside_not_deleted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"fingerprint": "old"}))
    (run / "done.json").write_text("{}")
    assert not _set_aside_if_stale(RunPaths(run), "old")
    assert _set_aside_if_stale(RunPaths(run), "new")
    assert not run.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.stale-")]
    assert len(aside) == 1 and (aside[0] / "done.json").exists()
