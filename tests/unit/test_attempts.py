"""The attempt log: records survive a torn line, and the checkpoint record sums over attempts."""

import json

from loss_slope.train.attempts import checkpoint_summary, end_attempt, read_attempts, start_attempt


def test_a_record_after_a_torn_line_is_kept(tmp_path):
    log = tmp_path / "attempts.jsonl"
    assert start_attempt(log, start_step=0, reason="fresh") == 1
    with open(log, "a") as fh:  # a kill in the middle of writing the end record
        fh.write('{"event": "end", "attempt": 1, "end_st')
    assert start_attempt(log, start_step=0, reason="resume") == 2
    end_attempt(log, attempt=2, end_step=10, status="completed")
    records = read_attempts(log)
    assert [(r["event"], r["attempt"]) for r in records] == [("start", 1), ("start", 2), ("end", 2)]
    assert log.read_text().count("\n") == 4  # the torn line stays, on its own


def test_checkpoint_summary_sums_the_attempts_that_ended_and_counts_the_others(tmp_path):
    log = tmp_path / "attempts.jsonl"
    stats = {"files": 3, "written_mb": 30.5, "snapshot_s": 0.25, "wait_s": 0.5, "write_s": 1.0}
    start_attempt(log, start_step=0, reason="fresh")  # 1: killed, no end record
    start_attempt(log, start_step=22, reason="resume")  # 2: stopped by its time budget
    end_attempt(log, attempt=2, end_step=50, status="unfinished", checkpoints=stats)
    start_attempt(log, start_step=44, reason="resume")  # 3: an end record from before the record existed
    end_attempt(log, attempt=3, end_step=60, status="failed")
    start_attempt(log, start_step=44, reason="resume")  # 4: completed
    end_attempt(log, attempt=4, end_step=132, status="completed", checkpoints={**stats, "files": 5})
    out = checkpoint_summary(read_attempts(log))
    assert out == {
        "files": 8,
        "written_mb": 61.0,
        "snapshot_s": 0.5,
        "wait_s": 1.0,
        "write_s": 2.0,
        "attempts_not_counted": 2,
    }
    assert json.loads(json.dumps(out)) == out
