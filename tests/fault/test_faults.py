"""Faults caused for real: signals, divergence, failing disks, a second Snakemake.

(SIGKILL during training: tests/integration/test_train_resume.py; corrupt
tables: tests/unit/test_parquet_validate.py; bad configs:
tests/unit/test_config.py; SLURM job failures: tests/slurm/.)
"""

import errno
import json
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml

from _util import PYTHON, REPO, run_cmd, snakemake_bin
from loss_slope.train.checkpoint_io import AtomicCheckpointIO
from loss_slope.train.steps import preempted_message

TINY = [
    "experiment=s_core",
    "trainer.epochs=3",
    "model.base_width=4",
    "schedule.warmup_epochs=1",
    "trainer.flush_every_steps=5",
]


def rows(run_dir):
    p = run_dir / "tables" / "steps.csv"
    return sum(1 for _ in open(p)) - 1 if p.exists() else 0


def start(run_dir, *extra):
    return subprocess.Popen(
        [PYTHON, "-m", "loss_slope.train", *TINY, *extra, f"run_dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_rows(proc, run_dir, n, timeout=240):
    """Wait until the trainer logged ``n`` steps; a trainer that ended first or is too slow is killed
    (not left training beside the next tests) and the test fails with its output."""
    t0 = time.time()
    while rows(run_dir) < n:
        if proc.poll() is not None or time.time() - t0 > timeout:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"{rows(run_dir)} of {n} steps logged (exit {proc.returncode}):\n{out[-3000:]}")
        time.sleep(0.02)


def test_sigterm_checkpoints_exits_unfinished_and_resumes(tmp_path):
    run = tmp_path / "run"
    p = start(run)
    wait_rows(p, run, 30)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 3, out  # "unfinished": a retry resumes
    ends = [json.loads(x) for x in (run / "attempts.jsonl").read_text().splitlines() if '"end"' in x]
    assert ends[-1]["status"] == "preempted"
    saved = ends[-1]["checkpoint_step"]
    assert saved >= 30 and (run / "checkpoints/latest/latest.ckpt").exists()
    assert preempted_message(ends[-1]["end_step"], 132, saved) in out
    out = run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, f"run_dir={run}"], timeout=300)
    assert f"at step {saved}" in out.stdout + out.stderr
    steps = pd.read_csv(run / "tables" / "steps.csv")
    assert steps.step.tolist() == list(range(132))
    assert pd.read_csv(run / "tables" / "val.csv").shape[0] == 12


def test_a_stop_says_where_its_rerun_starts():
    assert preempted_message(40, 132, 40).endswith("checkpoint saved; a rerun resumes it")
    assert preempted_message(40, 132, 33).endswith("from the latest checkpoint, at step 33")
    # SIGTERM before the first step: nothing was saved, and the log must not say it was
    assert "no checkpoint yet" in preempted_message(0, 132, None)


def test_sigterm_inside_a_validation_resumes_from_the_latest_and_keeps_every_validation_row(tmp_path):
    """A real SIGTERM between two validation batches: no checkpoint there (a run resumed from it would
    never repeat that validation); the rerun resumes from the previous latest and the tables equal an
    uninterrupted run's."""
    run = tmp_path / "run"
    # 44 steps per epoch, validations at 11, 22, 33, 44 (latest at 44); 6 batches of 64 held-out images
    fault = ["data.eval_batch_size=64", "trainer.fault.sigterm_in_validation_at_step=66"]
    first = run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *fault, f"run_dir={run}"], timeout=300, check=False)
    log = first.stdout + first.stderr
    assert first.returncode == 3, log[-3000:]
    assert "inside a validation" in log and "resumes from the latest one (step 44)" in log
    ckpt = torch.load(run / "checkpoints/latest/latest.ckpt", weights_only=True)
    assert ckpt["global_step"] == 44
    run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *fault, f"run_dir={run}"], timeout=300)
    assert pd.read_csv(run / "tables" / "steps.csv").step.tolist() == list(range(132))
    assert pd.read_csv(run / "tables" / "val.csv").step.tolist() == list(range(11, 133, 11))


def test_sigterm_after_a_stop_checkpoint_keeps_that_checkpoint_and_the_rerun_finishes(tmp_path):
    """The time budget stops the run mid-epoch (a stop validation and a stop checkpoint at step 30),
    and a real SIGTERM lands while Lightning finishes the epoch, which it has by then counted as done:
    a checkpoint taken there would resume one epoch too far on, and every rerun would stop short of
    the end. The stop checkpoint is kept, and one rerun completes every step once."""
    run = tmp_path / "run"
    fault = ["trainer.fault.stop_then_sigterm_at_step=30"]
    first = run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *fault, f"run_dir={run}"], timeout=300, check=False)
    log = first.stdout + first.stderr
    assert first.returncode == 3, log[-3000:]
    assert (run / "sigterm.once").exists()
    ckpt = torch.load(run / "checkpoints/latest/latest.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    again = run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *fault, f"run_dir={run}"], timeout=300, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert pd.read_csv(run / "tables" / "steps.csv").step.tolist() == list(range(132))
    assert json.loads((run / "done.json").read_text())["status"] == "complete"
    # the stop's extra validation (step 30 is off the schedule) is no candidate for a best checkpoint:
    # every best row sits on a validation of the table, as the run's validation requires
    val = set(pd.read_csv(run / "tables" / "val.csv").step)
    ck = pd.read_csv(run / "tables" / "checkpoints.csv")
    assert 30 not in val and set(ck.step[ck.kind == "best"]) <= val, sorted(ck.step[ck.kind == "best"])


def test_a_diverged_run_resumed_after_sigterm_stops_where_an_uninterrupted_one_does(tmp_path):
    """The guard judges the loss at flushes, and a resumed attempt used to count its flushes from its
    own start: the same run stopped at another step (21 uninterrupted, 23 resumed). The flushes now
    follow the run's schedule (every flush_every steps after a validation), and the tables are the same."""
    # seed 3: the loss is above 0.63 x its first 20 steps' mean at step 20, so the run diverges there
    diverging = [
        "seed=3",
        "trainer.divergence.max_loss_factor=0.63",
        "trainer.divergence.reference_steps=20",
    ]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *diverging, f"run_dir={ref}"], timeout=300)
    cmd = [PYTHON, "-m", "loss_slope.train", *TINY, *diverging, "trainer.fault.sigterm_at_step=13", f"run_dir={run}"]
    assert run_cmd(cmd, timeout=300, check=False).returncode == 3
    run_cmd(cmd, timeout=300)
    want, got = (json.loads((d / "done.json").read_text()) for d in (ref, run))
    assert want["status"] == got["status"] == "diverged"
    assert (got["diverged_at_step"], got["steps_done"]) == (want["diverged_at_step"], want["steps_done"])
    # after the stop at step 13, so the resumed attempt is the one that finds it (step 20 on the machines
    # measured; the exact step rides on the CPU's arithmetic, the sameness does not)
    assert 13 < want["diverged_at_step"] < want["steps_done"]
    a, b = (pd.read_csv(d / "tables" / "steps.csv").drop(columns="time") for d in (ref, run))
    pd.testing.assert_frame_equal(a, b)


def test_a_divergence_found_at_a_validations_flush_stops_the_run_at_that_step(tmp_path):
    """A validation step's rows are flushed at the validation, not at the batch's end: the guard
    finding a divergence there used to let the run take one more step (and save one more checkpoint)."""
    # seed 3: step 10's loss is above 0.01 x the initial one; its row is flushed at step 11's validation
    run = tmp_path / "run"
    run_cmd(
        [
            PYTHON,
            "-m",
            "loss_slope.train",
            *TINY,
            "seed=3",
            "trainer.divergence.max_loss_factor=0.01",
            f"run_dir={run}",
        ],
        timeout=300,
    )
    done = json.loads((run / "done.json").read_text())
    assert (done["status"], done["diverged_at_step"], done["steps_done"]) == ("diverged", 10, 11)
    assert pd.read_csv(run / "tables" / "val.csv").step.tolist() == [11]
    ckpts = pd.read_csv(run / "tables" / "checkpoints.csv")
    assert ckpts.step.max() == 11 and "latest" in set(ckpts.kind[ckpts.step == 11])  # the stop checkpoint


def test_a_trainer_that_cannot_be_built_ends_its_attempt_failed_with_the_error(tmp_path):
    # the monitor settings are checked when the callbacks are built, after the attempt has started
    from loss_slope.train.attempts import read_attempts, summarize_attempts

    run = tmp_path / "run"
    out = run_cmd(
        [PYTHON, "-m", "loss_slope.train", *TINY, "trainer.monitors.hutch_matvecs=3", f"run_dir={run}"],
        timeout=300,
        check=False,
    )
    assert out.returncode != 0
    (attempt,) = summarize_attempts(read_attempts(run / "attempts.jsonl"))
    assert attempt["status"] == "failed"  # not "killed": the process ended on an error it could record
    assert "hutch_matvecs" in attempt["error"]


def test_time_budget_stops_cleanly_with_exit_3(tmp_path):
    run = tmp_path / "run"
    proc = run_cmd(
        [PYTHON, "-m", "loss_slope.train", *TINY, "trainer.epochs=200", "trainer.max_time_s=3", f"run_dir={run}"],
        timeout=300,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints/latest/latest.ckpt", weights_only=True)
    assert ckpt["global_step"] == rows(run)  # the tables end exactly at the checkpoint


def test_divergence_stops_the_run_and_marks_it(tmp_path):
    run = tmp_path / "run"
    out = run_cmd(
        [
            PYTHON,
            "-m",
            "loss_slope.train",
            *TINY,
            "optimizer.lr=1000",
            "optimizer.momentum=0.99",
            f"run_dir={run}",
            f"output={tmp_path}/out.json",
        ],
        timeout=300,
    )
    assert "diverged" in out.stdout + out.stderr
    done = json.loads((run / "done.json").read_text())
    assert done["status"] == "diverged" and done["diverged_at_step"] < 132
    info = json.loads((run / "run_info.json").read_text())
    assert info["outcome"]["status"] == "diverged"
    # a second start does not retrain a diverged run
    again = run_cmd(
        [PYTHON, "-m", "loss_slope.train", *TINY, "optimizer.lr=1000", "optimizer.momentum=0.99", f"run_dir={run}"],
        timeout=300,
    )
    assert "already complete" in again.stdout + again.stderr


def test_sigterm_after_an_unseen_divergence_finishes_the_run_as_diverged_at_its_step(tmp_path):
    """SIGTERM lands before the recorder has checked the diverging rows (it checks them every
    flush_every_steps): the flush on the way out finds the divergence, and the run ends diverged at
    the same step as an uninterrupted run, not preempted and resumed past it."""
    diverging = ["optimizer.lr=1e5", "trainer.flush_every_steps=20"]
    ref = tmp_path / "ref"
    run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *diverging, f"run_dir={ref}"], timeout=300)
    want = json.loads((ref / "done.json").read_text())
    assert want["status"] == "diverged" and want["diverged_at_step"] < 8
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "loss_slope.train", *TINY, *diverging, "trainer.fault.sigterm_at_step=8", f"run_dir={run}"]
    out = run_cmd(cmd, timeout=300, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    done = json.loads((run / "done.json").read_text())
    assert (done["status"], done["diverged_at_step"]) == ("diverged", want["diverged_at_step"])


def test_disk_error_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "latest.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def full_disk(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert not (tmp_path / "latest.ckpt.tmp").exists()


def test_second_snakemake_on_the_same_directory_is_refused(tmp_path):
    cfg = {
        "data": {"name": "digits"},
        "variants": {"S-core": {"experiment": "s_core"}},
        "training": {"epochs": 12, "batch_size": 32, "warmup_epochs": 1, "hydra_overrides": ["model.base_width=4"]},
        "grid": {"lr": [0.05], "weight_decay": [0.0005], "seed": [0]},
        "packing": {"runs_per_gpu": 1},
        "analysis": {"fit": {"early_window": [5, 10]}},
    }  # pre-flight: within the 12 epochs
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        snakemake_bin(),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "c.yaml"),
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Start the second Snakemake while the first one is training (it has
        # the lock and a job in flight) and long before it can finish.
        t0 = time.time()
        while (
            not any(rows(d) > 0 for d in (tmp_path / "work" / "S-core").glob("*"))
            if (tmp_path / "work" / "S-core").exists()
            else True
        ):
            assert first.poll() is None and time.time() - t0 < 180
            time.sleep(0.1)
        second = run_cmd(cmd, timeout=120, check=False)
        assert first.poll() is None, "the first run ended before the second one was refused"
        said = second.stdout + second.stderr
        assert second.returncode != 0, said[-3000:]
        # Snakemake refuses in one of two places, depending on timing: the lock
        # (LockException) or, when the first run already has jobs in flight,
        # the incomplete-output check that runs while the DAG is built.
        assert any(
            k in said
            for k in ("cannot be locked", "LockException", "IncompleteFilesException", "seem to be incomplete")
        ), said[-3000:]
    finally:
        out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    rep = json.loads((tmp_path / "results/validation/S-core/lr0.05-wd0.0005-s0/validation.json").read_text())
    assert rep["passed"]
