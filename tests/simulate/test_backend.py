"""The simulated backend: a SIGKILL'ed pack, rerun, leaves the tables of an uninterrupted one, byte for byte."""

import json
import signal
import subprocess
import time

import pandas as pd
import pytest

from _util import PYTHON, run_cmd, signal_when
from loss_slope.probe.plan import write_pack_spec
from loss_slope.study.runs import build_runs
from loss_slope.tables.schema import TABLES

# the study's length and cadences, two seeds of one cell
CONFIG = {
    "data": {"name": "simulated"},
    "training": {
        "epochs": 50,
        "batch_size": 128,
        "schedule": "cosine",
        "warmup_epochs": 5,
        "min_lr_ratio": 0.0,
        "val_per_epoch": 4,
        "momentum": 0.9,
        "threads": 1,
        "flush_every_steps": 391,
        "precision": "32-true",
        "hydra_overrides": [],
    },
    "variants": {"S-core": {"experiment": "s_core"}},
    "grid": {"lr": [0.1], "weight_decay": [0.001], "seed": [0, 1]},
}
TOTAL = 50 * 391


def plan(tmp_path):
    runs = [{"run": r.run, "overrides": list(r.overrides)} for r in build_runs(CONFIG)]
    path = tmp_path / "pack000.json"
    write_pack_spec(path, tmp_path / "packs.json", variant="S-core", pack="pack000", runs=runs)
    return path


def pack_cmd(tmp_path, root, *extra):
    return [
        PYTHON,
        "-m",
        "loss_slope.train.pack",
        "--plan",
        str(plan(tmp_path)),
        "--pack",
        "pack000",
        "--variant",
        "S-core",
        "--output",
        str(root / "pack000.json"),
        "--log-dir",
        str(root / "logs"),
        "--work-root",
        str(root / "work"),
        *extra,
    ]


def rows(path):
    if not path.exists():
        return 0
    with open(path) as fh:
        return sum(1 for _ in fh) - 1


def table_bytes(work):
    return {
        (run.name, t): (run / "tables" / f"{t}.csv").read_bytes()
        for run in sorted(d for d in (work / "S-core").iterdir() if d.is_dir())
        for t in TABLES
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    run_cmd(pack_cmd(root, root), timeout=300)
    return root


def test_reference_tables_exactly_once(reference):
    for run in ("lr0.1-wd0.001-s0", "lr0.1-wd0.001-s1"):
        d = reference / "work" / "S-core" / run
        steps = pd.read_csv(d / "tables" / "steps.csv")
        info = json.loads((d / "run_info.json").read_text())
        # both seeds of this cell train to the end (neither diverges): their tables are complete
        assert info["outcome"]["status"] == "complete", info["outcome"]
        assert steps.step.tolist() == list(range(TOTAL))
        assert len(pd.read_csv(d / "tables" / "val.csv")) == 200
        # the outcome counts the checkpoint files of the table (one row per file, its size on disk)
        ck = pd.read_csv(d / "tables" / "checkpoints.csv")
        written = info["outcome"]["checkpoints"]
        assert written["files"] == len(ck) > 0 and written["attempts_not_counted"] == 0
        assert written["written_mb"] == pytest.approx(ck.checkpoint_size_mb.sum(), rel=1e-9)
        assert info["steps_per_epoch"] == 391 and info["epochs"] == 50
        assert (d / "truth.json").exists() and (d / "done.json").exists()


@pytest.mark.parametrize("flush_every", [391, 20])
def test_sigkill_of_a_pack_then_rerun_gives_identical_tables(reference, tmp_path, flush_every):
    root = tmp_path / "killed"
    # slowed down so that the kill lands mid-run; the pace is run control, not part of the run's identity.
    # Flushing every 20 steps leaves rows beyond the last checkpoint, which the rerun must cut.
    proc = subprocess.Popen(
        pack_cmd(tmp_path, root, "data.simulation.pace_s_per_chunk=0.01", f"trainer.flush_every_steps={flush_every}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    steps = [root / "work" / "S-core" / f"lr0.1-wd0.001-s{s}" / "tables" / "steps.csv" for s in (0, 1)]
    # both runs mid-way (whichever started first), then SIGKILL the pack and its runs, as a cluster kills a job
    signal_when(proc, lambda: min(rows(p) for p in steps) >= 6000, signal.SIGKILL, group=True, poll_s=0.05, wait_s=30)
    time.sleep(0.5)
    killed = [d for d in (root / "work" / "S-core").iterdir() if d.is_dir()]  # beside them: the killed runs' locks
    assert not any((d / "done.json").exists() for d in killed), "the kill came too late"

    ahead = sum(
        rows(d / "tables" / "steps.csv")
        - json.loads((d / "checkpoints" / "latest" / "latest.ckpt").read_text())["global_step"]
        for d in killed
    )
    run_cmd(pack_cmd(tmp_path, root), timeout=300)
    assert table_bytes(root / "work") == table_bytes(reference / "work")
    if flush_every == 20:
        assert ahead > 0, "no rows beyond the checkpoint: the truncation was not exercised"
        assert "truncated steps.csv" in "".join(p.read_text() for p in (root / "logs").iterdir())
    for d in killed:
        starts = [json.loads(x) for x in (d / "attempts.jsonl").read_text().splitlines()]
        starts = [a for a in starts if a["event"] == "start"]
        assert len(starts) == 2
        assert starts[-1]["reason"] == "resume" and starts[-1]["start_step"] > 0


def test_complete_run_is_not_simulated_again(reference):
    d = reference / "work" / "S-core" / "lr0.1-wd0.001-s0"
    before = (d / "tables" / "steps.csv").stat().st_mtime_ns
    proc = run_cmd(
        [
            PYTHON,
            "-m",
            "loss_slope.train",
            *next(iter(build_runs(CONFIG))).overrides,
            "variant=S-core",
            "run=lr0.1-wd0.001-s0",
            f"run_dir={d}",
        ],
        timeout=120,
    )
    assert "already complete" in proc.stdout + proc.stderr
    assert (d / "tables" / "steps.csv").stat().st_mtime_ns == before


def test_sigterm_checkpoints_and_exits_unfinished(tmp_path):
    spec = build_runs(CONFIG)[1]
    d = tmp_path / "run"
    args = [PYTHON, "-m", "loss_slope.train", *spec.overrides, "variant=S-core", f"run={spec.run}", f"run_dir={d}"]
    proc = subprocess.Popen(
        [*args, "data.simulation.pace_s_per_chunk=0.01"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while rows(d / "tables" / "steps.csv") < 3000:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3
    state = json.loads((d / "checkpoints" / "latest" / "latest.ckpt").read_text())
    assert rows(d / "tables" / "steps.csv") == state["global_step"]
    run_cmd(args, timeout=120)
    steps = pd.read_csv(d / "tables" / "steps.csv")
    assert steps.step.is_unique and steps.step.is_monotonic_increasing
    assert (d / "done.json").exists()


DIE_AT_THE_DIVERGENCE = """
import os, sys
import loss_slope.simulate.backend as backend

end_attempt = backend.end_attempt


def killed_before_the_end(path, **record):
    if record.get("status") == "diverged":
        os._exit(137)  # dies after the checkpoint of the divergence, before the run's end is written
    end_attempt(path, **record)


backend.end_attempt = killed_before_the_end
from loss_slope.train.__main__ import main

sys.argv[0] = "loss_slope.train"
main()
"""


def test_a_run_killed_after_its_divergence_s_checkpoint_resumes_diverged(tmp_path):
    """The verdict is part of the checkpoint: the rows before the last checkpoint are not shown to
    the divergence guard again, so a resumed run must know it diverged (as a real run's recorder)."""
    spec = build_runs(CONFIG)[0]
    args = [*spec.overrides, "variant=S-core", f"run={spec.run}", "data.simulation.diverge_share=1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_cmd([PYTHON, "-m", "loss_slope.train", *args, f"run_dir={ref}"], timeout=120)
    died = subprocess.run([PYTHON, "-c", DIE_AT_THE_DIVERGENCE, *args, f"run_dir={run}"], timeout=120, check=False)
    assert died.returncode == 137 and not (run / "done.json").exists()
    state = json.loads((run / "checkpoints" / "latest" / "latest.ckpt").read_text())
    assert state.get("diverged") is not None
    run_cmd([PYTHON, "-m", "loss_slope.train", *args, f"run_dir={run}"], timeout=120)
    want, got = (json.loads((d / "done.json").read_text()) for d in (ref, run))
    assert want["status"] == got["status"] == "diverged"
    assert (got["diverged_at_step"], got["steps_done"]) == (want["diverged_at_step"], want["steps_done"])
    assert got["steps_done"] < TOTAL
    for t in TABLES:
        assert (run / "tables" / f"{t}.csv").read_bytes() == (ref / "tables" / f"{t}.csv").read_bytes(), t
