"""Kill a real training process with SIGKILL mid-epoch; the rerun resumes and
the merged tables equal an uninterrupted run's, bit for bit (CPU, fixed seed)."""

import json
import signal
import subprocess

import pandas as pd
import pytest

from _util import PYTHON, run_cmd, signal_when

# 3 epochs x 44 steps, tiny net: ~5 s per run on one core. The latest checkpoint's time criterion is
# set so small that it is due at every validation (11, 22, ...): resuming mid-epoch is exercised here,
# the default once-per-epoch cadence in test_monitors_resume.py. Checkpoints are written in the background.
ARGS = [
    "experiment=s_core",
    "trainer.epochs=3",
    "model.base_width=4",
    "schedule=cosine",
    "schedule.warmup_epochs=0.5",
    "trainer.flush_every_steps=5",
    "seed=3",
    "trainer.checkpoint.latest_every_minutes=1e-9",
]


def train(run_dir, *extra, **kw):
    return run_cmd([PYTHON, "-m", "loss_slope.train", *ARGS, f"run_dir={run_dir}", *extra], timeout=300, **kw)


def rows(path):
    p = path / "tables" / "steps.csv"
    if not p.exists():
        return 0
    with open(p) as fh:
        return sum(1 for _ in fh) - 1


def kill_at(run_dir, min_rows, sig=signal.SIGKILL):
    # each step of the attempt to be killed sleeps 0.05 s (run control: the run's fingerprint and tables
    # are those of a plain run), so the signal lands within a step or two of ``min_rows`` on any machine
    proc = subprocess.Popen(
        [PYTHON, "-m", "loss_slope.train", *ARGS, "trainer.fault.step_sleep_s=0.05", f"run_dir={run_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    signal_when(proc, lambda: rows(run_dir) >= min_rows, sig)
    return proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"
    train(d)
    return d


def test_sigkill_twice_then_resume_is_exact(reference, tmp_path):
    run = tmp_path / "run"
    assert kill_at(run, 30) == -signal.SIGKILL  # mid-epoch 0, after the step-22 checkpoint
    assert kill_at(run, 100) == -signal.SIGKILL  # mid-epoch 2
    proc = train(run)
    assert "resuming from" in proc.stdout + proc.stderr

    for table in ("steps", "val"):
        a = pd.read_csv(reference / "tables" / f"{table}.csv")
        b = pd.read_csv(run / "tables" / f"{table}.csv")
        assert b.step.is_unique and b.step.is_monotonic_increasing
        cols = [c for c in a.columns if c != "time"]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    steps = pd.read_csv(run / "tables" / "steps.csv")
    assert steps.step.tolist() == list(range(132))
    val = pd.read_csv(run / "tables" / "val.csv")
    assert val.step.tolist() == [11, 22, 33, 44, 55, 66, 77, 88, 99, 110, 121, 132]

    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    starts = [a for a in attempts if a["event"] == "start"]
    assert [a["reason"] for a in starts][-1] == "resume"
    assert starts[-1]["start_step"] > 0
    assert len(starts) == 3
    assert starts[1]["start_step"] % 44 != 0  # a mid-epoch resume
    assert (run / "done.json").exists()
    ck = pd.read_csv(run / "tables" / "checkpoints.csv")
    assert ck[ck.kind == "latest"].step.tolist() == list(range(11, 133, 11))
    # the two killed attempts wrote files that no end record counts; the outcome says so
    written = json.loads((run / "run_info.json").read_text())["outcome"]["checkpoints"]
    assert written["attempts_not_counted"] == 2
    last = [a for a in attempts if a["event"] == "end"]
    assert len(last) == 1 and written["files"] == last[0]["checkpoints"]["files"] > 0


def test_ctrl_c_stops_at_the_end_of_a_step_and_resumes_exactly(reference, tmp_path):
    # Ctrl-C (SIGINT) lands anywhere in a step; the run stops as on SIGTERM (end of the step, checkpoint,
    # exit 3 = unfinished, not a failure), twice, and the resumed tables equal the uninterrupted run's
    run = tmp_path / "run"
    assert kill_at(run, 30, signal.SIGINT) == 3
    assert kill_at(run, 70, signal.SIGINT) == 3
    train(run)
    for table in ("steps", "val"):
        a = pd.read_csv(reference / "tables" / f"{table}.csv")
        b = pd.read_csv(run / "tables" / f"{table}.csv")
        cols = [c for c in a.columns if c != "time"]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert not [a for a in attempts if a.get("status") == "failed"]
    # each stopped attempt recorded the files it wrote (its stop checkpoint at least); the outcome sums them
    ends = [a for a in attempts if a["event"] == "end"]
    assert [a["status"] for a in ends] == ["preempted", "preempted", "completed"]
    assert all(a["checkpoints"]["files"] >= 1 for a in ends)
    written = json.loads((run / "run_info.json").read_text())["outcome"]["checkpoints"]
    assert written["attempts_not_counted"] == 0
    assert written["files"] == sum(a["checkpoints"]["files"] for a in ends)
    assert written["written_mb"] == pytest.approx(sum(a["checkpoints"]["written_mb"] for a in ends))


def test_the_outcome_counts_every_checkpoint_file_written(reference):
    """One attempt: the files and bytes in the outcome are those of the checkpoints table (one row
    per file, its size measured on disk), and the time on them is recorded."""
    written = json.loads((reference / "run_info.json").read_text())["outcome"]["checkpoints"]
    ck = pd.read_csv(reference / "tables" / "checkpoints.csv")
    assert written["files"] == len(ck) > 12  # 12 latest (one per validation here) and the best ones
    assert written["written_mb"] == pytest.approx(ck.checkpoint_size_mb.sum(), rel=1e-9)
    assert written["attempts_not_counted"] == 0
    assert written["write_s"] > 0 and written["snapshot_s"] > 0 and written["wait_s"] >= 0
    done = json.loads((reference / "done.json").read_text())
    assert done["checkpoints"] == written and done["attempts"][0]["checkpoints"]["files"] == len(ck)


def test_completed_run_is_not_retrained(reference):
    before = (reference / "tables" / "steps.csv").stat().st_mtime_ns
    proc = train(reference, f"output={reference}/out.json")
    assert "already complete" in proc.stdout + proc.stderr
    assert (reference / "tables" / "steps.csv").stat().st_mtime_ns == before
    assert json.loads((reference / "out.json").read_text())["status"] == "complete"


def test_run_info_records_config_versions_hardware(reference):
    info = json.loads((reference / "run_info.json").read_text())
    assert info["steps_per_epoch"] == 44 and info["total_steps"] == 132
    assert info["config"]["model"]["base_width"] == 4
    assert info["environment"]["torch"].startswith("2.13.0")
    assert info["environment"]["device"] == "cpu"
