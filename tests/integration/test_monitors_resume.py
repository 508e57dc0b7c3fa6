"""The monitor tables (curvature, noise, checkpoints) of a real training are exactly-once across a
crash, a lost checkpoint-size row and a SIGKILL, and equal an uninterrupted run's (CPU, fixed seed),
except the wall-clock columns."""

import json
import signal
import subprocess

import pandas as pd
import pytest
import torch

from _util import PYTHON, run_cmd, signal_when
from loss_slope.tables.export import export_run
from loss_slope.tables.parquet import convert_run
from loss_slope.tables.schema import MONITOR_TABLES, TABLES as SCHEMA_TABLES
from loss_slope.tables.validate import validate_run

# 3 epochs x 44 steps, tiny net, monitors at a fast cadence: curvature every 15 steps (never at a
# checkpoint step, so resuming must drop rows), noise every epoch (44 steps), 6 + 5 products per event
ARGS = [
    "experiment=s_core",
    "trainer.epochs=3",
    "model.base_width=4",
    "schedule=cosine",
    "schedule.warmup_epochs=0.5",
    "trainer.flush_every_steps=5",
    "seed=3",
    "run=m",
    "trainer.monitors.curvature_every_steps=15",
    "trainer.monitors.curvature_batch_size=8",
    "trainer.monitors.hutch_matvecs=6",
    "trainer.monitors.lambda_iters=5",
    "trainer.monitors.noise_every_epochs=1",
    "trainer.monitors.psd_window=32",
    "trainer.monitors.psd_min_points=16",
]
# the resumed run first crashes once at step 50 (after the curvature row of step 45, checkpoint at 44)
FAULT = ["trainer.fault.fail_run=m", "trainer.fault.fail_at_step=50"]
TABLES = tuple(SCHEMA_TABLES)
WALL_CLOCK = ("time", "seconds")


def cmd(run_dir, extra=()):
    return [PYTHON, "-m", "loss_slope.train", *ARGS, *extra, f"run_dir={run_dir}"]


def table(run_dir, name):
    return pd.read_csv(run_dir / "tables" / f"{name}.csv")


def n_rows(path):
    if not path.exists():
        return 0
    with open(path) as fh:
        return sum(1 for _ in fh) - 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"  # same path length as the resumed run: checkpoints
    run_cmd(cmd(d), timeout=300)  # store their paths, so their sizes depend on it
    return d


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    d = tmp_path_factory.mktemp("res") / "run"
    # attempt 1: an exception at step 50; the latest checkpoint is at step 44
    proc = run_cmd(cmd(d, FAULT), timeout=300, check=False)
    assert proc.returncode != 0 and "injected fault" in proc.stdout + proc.stderr
    assert 45 in table(d, "curvature").step.tolist()  # a row beyond the checkpoint, to be dropped
    # a kill between the checkpoint's rename and its size row: that row is lost
    ck = d / "tables" / "checkpoints.csv"
    lines = ck.read_text().splitlines(keepends=True)
    assert lines[-1].startswith("44,") and ",latest," in lines[-1]
    ck.write_text("".join(lines[:-1]))
    # attempt 2: SIGKILL right after the curvature event at step 105 (latest checkpoint at 88: once per epoch);
    # its steps sleep 0.05 s (run control, not in the fingerprint), so the kill lands before step 132 on any machine
    p = subprocess.Popen(
        cmd(d, [*FAULT, "trainer.fault.step_sleep_s=0.05"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    signal_when(p, lambda: n_rows(d / "tables" / "curvature.csv") >= 7, signal.SIGKILL, poll_s=0.01, wait_s=30)
    assert p.returncode == -signal.SIGKILL
    # attempt 3: resumes and completes
    proc = run_cmd(cmd(d, FAULT), timeout=300)
    assert "resuming from" in proc.stdout + proc.stderr
    return d


def _validate(run_dir, tmp_path, info):
    """Export, convert and validate a finished run of ARGS (seed 3)."""
    out = {t: tmp_path / f"{t}.csv" for t in TABLES}
    export_run(
        run_dir,
        steps_csv=out["steps"],
        val_csv=out["val"],
        run_info=tmp_path / "run_info.json",
        attempts=tmp_path / "attempts.json",
        monitors={t: out[t] for t in MONITOR_TABLES},
    )
    pq = {t: tmp_path / f"{t}.parquet" for t in TABLES}
    conv = convert_run(
        steps_csv=out["steps"],
        val_csv=out["val"],
        steps_parquet=pq["steps"],
        val_parquet=pq["val"],
        report_path=tmp_path / "conv.json",
        monitors={t: (out[t], pq[t]) for t in MONITOR_TABLES},
    )
    assert conv["ok"], conv
    rep = validate_run(
        steps_parquet=pq["steps"],
        val_parquet=pq["val"],
        convert_report=tmp_path / "conv.json",
        run_info=tmp_path / "run_info.json",
        expected={"variant": "S-core", "run": "m", "lr": info["lr"], "weight_decay": info["weight_decay"], "seed": 3},
        monitors={t: pq[t] for t in MONITOR_TABLES},
    )
    return rep


def test_monitor_tables_are_exactly_once_and_equal_an_uninterrupted_run(reference, resumed):
    for name in TABLES:
        a, b = table(reference, name), table(resumed, name)
        cols = [c for c in a.columns if c not in WALL_CLOCK]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True, obj=name)
    assert table(resumed, "curvature").step.tolist() == list(range(15, 133, 15))
    assert table(resumed, "noise").step.tolist() == [44, 88, 132]
    noise = table(resumed, "noise")
    assert noise.grad_var_steps.tolist() == [44, 44, 44] and noise.psd_points.tolist() == [32, 32, 32]
    ck = table(resumed, "checkpoints")
    assert ck[ck.kind == "latest"].step.tolist() == [44, 88, 132]  # once per epoch (trainer.checkpoint)
    assert not ck.duplicated(["step", "kind"]).any() and (ck.checkpoint_size_mb > 0).all()
    attempts = [json.loads(line) for line in (resumed / "attempts.jsonl").read_text().splitlines()]
    assert [a["start_step"] for a in attempts if a["event"] == "start"][:2] == [0, 44]


def test_monitor_state_is_in_the_checkpoint_and_loads_weights_only(resumed):
    ckpt = torch.load(resumed / "checkpoints" / "latest" / "latest.ckpt", weights_only=True, map_location="cpu")
    state = ckpt["callbacks"]["MonitorCallback"]
    assert state["version"] == 1
    assert state["monitors"]["config"]["curvature_every_steps"] == 15
    assert set(state["monitors"]) >= {"predictor", "residuals", "grad_moments"}
    # the best checkpoints are never resumed from: written without the monitors' state
    best = sorted((resumed / "checkpoints" / "best").glob("*.ckpt"))
    assert best
    for path in best:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        # weights only: no optimizer state, no callback state
        assert ckpt["state_dict"] and not {"callbacks", "optimizer_states", "lr_schedulers"} & set(ckpt)


def test_run_info_records_the_cadence_and_validation_passes(resumed, tmp_path):
    info = json.loads((resumed / "run_info.json").read_text())
    m = info["monitors"]
    assert (m["curvature_every_steps"], m["noise_every_epochs"], m["noise_every_steps"]) == (15, 1, 44)
    assert m["curvature_batch_size"] == 8 and m["checkpoint_size"] is True
    rep = _validate(resumed, tmp_path, info)
    assert rep.passed, rep.summary()
    assert {"curvature_cadence", "noise_cadence", "checkpoints_recorded"} <= {c.name for c in rep.checks}


def test_a_checkpoint_cadence_changed_between_attempts_validates(tmp_path):
    """Run control may change between attempts: attempt 1 saves ``latest`` every 2nd epoch (step 88,
    not 44) and fails at step 100; attempt 2 resumes at 88 saving every epoch (132). Validation
    requires each epoch end at the cadence of the attempt that ran it, not the last one's."""
    d = tmp_path / "run"
    every = "trainer.checkpoint.latest_every_epochs"
    proc = run_cmd(
        cmd(d, ["trainer.fault.fail_run=m", "trainer.fault.fail_at_step=100", f"{every}=2"]), timeout=300, check=False
    )
    assert proc.returncode != 0 and "injected fault" in proc.stdout + proc.stderr
    proc = run_cmd(cmd(d, [f"{every}=1"]), timeout=300)
    assert "resuming from" in proc.stdout + proc.stderr
    info = json.loads((d / "run_info.json").read_text())
    assert info["outcome"]["latest_every_epochs"] == [[0, 2], [88, 1]]
    latest = table(d, "checkpoints").query("kind == 'latest'").step.tolist()
    assert 44 not in latest and {88, 132} <= set(latest)
    rep = _validate(d, tmp_path / "v", info)
    assert rep.passed, rep.summary()
