"""Out of GPU memory during a step (trainer.fault.oom_*: the real
torch.cuda.OutOfMemoryError is raised, so the CPU takes the GPU's recovery path).

The run retries the step as micro-batches of half the size with gradient
accumulation: the effective batch, the LR schedule and the step count do not
change; the change is in the attempt log, the outcome and the report; and an
OOM at the smallest allowed micro-batch fails the run with the reason.
"""

import json
import signal
import subprocess

import pandas as pd
import pytest
import torch

from _util import PYTHON, run_cmd, signal_when
from loss_slope.train.module import MicroBatcher, MicroBatchTooSmall

# BN off: accumulation over micro-batches then gives the whole batch's gradient
# up to float rounding, so the OOM run can be compared with a run without one.
TINY = [
    "experiment=s_bn_off",
    "trainer.epochs=2",
    "model.base_width=4",
    "schedule.warmup_epochs=1",
    "trainer.flush_every_steps=5",
    "run=r",
]
OOM = ["trainer.fault.oom_run=r", "trainer.fault.oom_at_step=7"]


def train(run_dir, *extra, check=True):
    return run_cmd([PYTHON, "-m", "loss_slope.train", *TINY, *extra, f"run_dir={run_dir}"], timeout=300, check=check)


def events(run_dir, kind):
    return [
        json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines() if json.loads(x)["event"] == kind
    ]


def test_micro_batcher_halves_down_to_the_minimum():
    seen = []
    mb = MicroBatcher(min_size=16, on_change=seen.append)
    assert mb.current(128) == 128
    err = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert [mb.shrink(step=5, batch=128, error=err) for _ in range(3)] == [64, 32, 16]
    assert [c["accumulation"] for c in seen] == [2, 4, 8] and seen[0]["error"].startswith("CUDA out of memory")
    with pytest.raises(MicroBatchTooSmall, match=r"micro-batch of 16 .*min_micro_batch=16.*runs_per_gpu"):
        mb.shrink(step=6, batch=128, error=err)
    assert mb.current(128) == 16 and len(seen) == 3
    with pytest.raises(ValueError, match="min_micro_batch"):
        MicroBatcher(min_size=0)


def test_oom_halves_the_micro_batch_and_keeps_batch_schedule_and_steps(tmp_path):
    train(tmp_path / "plain")
    train(tmp_path / "oom", *OOM, "trainer.fault.oom_fits=8", "trainer.oom.min_micro_batch=8")
    plain = pd.read_csv(tmp_path / "plain/tables/steps.csv")
    oom = pd.read_csv(tmp_path / "oom/tables/steps.csv")
    assert oom.step.tolist() == plain.step.tolist() == list(range(88))  # every step, exactly once
    assert oom.lr.tolist() == plain.lr.tolist()  # the schedule did not move
    assert pd.read_csv(tmp_path / "oom/tables/val.csv").shape[0] == 8
    # steps before the OOM are the same run; after it, the same gradient up to rounding
    assert oom.loss_train_nats[:7].tolist() == plain.loss_train_nats[:7].tolist()
    assert (oom.loss_train_nats[7:20] - plain.loss_train_nats[7:20]).abs().max() < 1e-4
    changes = events(tmp_path / "oom", "micro_batch")
    assert [(c["step"], c["from"], c["to"], c["accumulation"]) for c in changes] == [(7, 32, 16, 2), (7, 16, 8, 4)]
    done = json.loads((tmp_path / "oom/done.json").read_text())
    assert done["micro_batch"]["final"] == 8 and len(done["micro_batch"]["changes"]) == 2
    outcome = json.loads((tmp_path / "oom/run_info.json").read_text())["outcome"]
    assert outcome["micro_batch"] == done["micro_batch"]
    assert json.loads((tmp_path / "plain/done.json").read_text())["micro_batch"] == {
        "batch": 32,
        "final": 32,
        "changes": [],
    }


def test_repeated_oom_down_to_the_minimum_fails_with_the_reason(tmp_path):
    out = train(tmp_path / "run", *OOM, "trainer.fault.oom_fits=0", check=False)
    assert out.returncode == 1
    said = out.stdout + out.stderr
    assert "run failed: CUDA out of memory at step 7 with a micro-batch of 16" in said
    assert "trainer.oom.min_micro_batch=16" in said and "Traceback" not in said
    end = events(tmp_path / "run", "end")[-1]
    assert end["status"] == "failed" and "MicroBatchTooSmall" in end["error"]
    assert [c["to"] for c in events(tmp_path / "run", "micro_batch")] == [16]
    assert not (tmp_path / "run/done.json").exists()


def test_the_smaller_micro_batch_survives_a_resume(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "loss_slope.train",
            *TINY,
            *OOM,
            "trainer.fault.oom_fits=16",
            "trainer.epochs=4",
            f"run_dir={run}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # wait until training is past the OOM (step 7) and a validation, then preempt: SIGTERM saves a checkpoint
    steps = run / "tables/steps.csv"
    out = signal_when(
        p, lambda: steps.exists() and len(steps.read_text().splitlines()) >= 31, signal.SIGTERM, poll_s=0.05, wait_s=120
    )
    assert p.returncode == 3, out
    train(run, *OOM, "trainer.fault.oom_fits=16", "trainer.epochs=4")
    # resumed at micro-batch 16: no second OOM, one recorded change
    assert [(c["attempt"], c["to"]) for c in events(run, "micro_batch")] == [(1, 16)]
    assert pd.read_csv(run / "tables/steps.csv").step.tolist() == list(range(176))
    assert json.loads((run / "done.json").read_text())["micro_batch"]["final"] == 16


def test_a_reduction_a_later_attempt_resumed_before_is_not_the_runs():
    from loss_slope.train.steps import micro_batch_summary

    def start(a, s):
        return {"event": "start", "attempt": a, "start_step": s}

    def change(a, s, old, new):
        return {"event": "micro_batch", "attempt": a, "step": s, "from": old, "to": new, "accumulation": 32 // new}

    # attempt 1 halves at steps 5 and 50; attempt 2 resumes from step 44: the step-50 halving is undone
    records = [start(1, 0), change(1, 5, 32, 16), change(1, 50, 16, 8), start(2, 44), change(2, 60, 16, 4)]
    summary = micro_batch_summary(records, 32)
    assert [(c["attempt"], c["step"]) for c in summary["changes"]] == [(1, 5), (2, 60)]
    assert summary["final"] == 4
    assert micro_batch_summary(records[:3] + [start(2, 44)], 32)["final"] == 16
    assert micro_batch_summary([start(1, 0), change(1, 50, 32, 16), start(2, 50)], 32)["final"] == 32


def test_an_oom_lost_with_its_attempt_is_not_in_the_outcome(tmp_path):
    """Attempt 1 halves the micro-batch at step 50 and fails at 55; attempt 2 resumes from the latest
    checkpoint (step 44, before the halving) and trains whole batches to the end."""
    run = tmp_path / "run"
    fault = ["trainer.fault.oom_at_step=50", "trainer.fault.oom_fits=16", "trainer.fault.fail_run=r"]
    out = train(run, "trainer.fault.oom_run=r", *fault, "trainer.fault.fail_at_step=55", check=False)
    assert out.returncode != 0 and [c["step"] for c in events(run, "micro_batch")] == [50]
    train(run)
    assert [e["start_step"] for e in events(run, "start")] == [0, 44]
    done = json.loads((run / "done.json").read_text())
    assert done["micro_batch"] == {"batch": 32, "final": 32, "changes": []}


def test_out_of_memory_in_a_curvature_event_gives_a_nan_row_and_a_finished_run(tmp_path):
    # curvature every 15 steps; a real torch.cuda.OutOfMemoryError inside the event at step 30
    run = tmp_path / "run"
    train(
        run,
        "trainer.monitors.curvature_every_steps=15",
        "trainer.monitors.curvature_batch_size=8",
        "trainer.monitors.hutch_matvecs=6",
        "trainer.monitors.lambda_iters=5",
        "trainer.fault.curvature_oom_run=r",
        "trainer.fault.curvature_oom_at_step=30",
    )
    done = json.loads((run / "done.json").read_text())
    assert done["status"] == "complete" and done["total_steps"] == 88
    curv = pd.read_csv(run / "tables/curvature.csv")
    assert curv.step.tolist() == [15, 30, 45, 60, 75]
    bad = curv[curv.step == 30].iloc[0]
    assert pd.isna(bad.lambda_max) and pd.isna(bad.hutch_trace)
    assert bad.status.startswith("out of memory: CUDA out of memory")
    ok = curv[curv.step != 30]
    assert (ok.status == "ok").all() and ok.lambda_max.notna().all() and (ok.lambda_residual >= 0).all()
    assert pd.read_csv(run / "tables/steps.csv").step.tolist() == list(range(88))


def test_out_of_memory_in_validation_falls_back_to_smaller_eval_chunks(tmp_path):
    # from step 11 (the first validation) every forward of more than 64 images runs out of memory:
    # training batches (32) fit, the validation batch (389 images) is evaluated in chunks of <= 64
    train(tmp_path / "plain")
    said = train(
        tmp_path / "oom", "trainer.fault.oom_run=r", "trainer.fault.oom_at_step=11", "trainer.fault.oom_fits=64"
    )
    log = said.stdout + said.stderr
    assert "out of memory in validation at step 11: evaluating in chunks of 48 images" in log
    plain = pd.read_csv(tmp_path / "plain/tables/val.csv")
    oom = pd.read_csv(tmp_path / "oom/tables/val.csv")
    assert oom.step.tolist() == plain.step.tolist()
    assert (oom.loss_val_nats - plain.loss_val_nats).abs().max() < 1e-5  # same loss up to rounding
    # same accuracy up to one image of 389 whose two top logits tie within rounding (the chunks' kernels differ)
    assert (oom.acc_val - plain.acc_val).abs().max() <= 1 / 389 + 1e-12
    assert events(tmp_path / "oom", "micro_batch") == []  # training never needed a smaller micro-batch
