"""`loss-slope status` on a synthetic half-finished study (work/ and results/ only)."""

import json
import os
import socket
import subprocess
import sys
import time

from loss_slope.cli import collect, format_status


def _run(work, name, *, steps=0, total=1000, done=False, lock=None, failed=None, t0=1000.0):
    d = work / "V" / name
    (d / "tables").mkdir(parents=True)
    (d / "run_info.json").write_text(json.dumps({"total_steps": total}))
    rows = ["step,epoch,time,lr,wd,loss_train_nats,loss_train_bits,acc_train"]
    rows += [f"{s},0,{t0 + s * 0.5},0.1,0,{2.0 - s / 1000:.4f},0,0" for s in range(steps)]
    (d / "tables" / "steps.csv").write_text("\n".join(rows) + "\n")
    (d / "attempts.jsonl").write_text(json.dumps({"event": "start", "attempt": 1, "start_step": 0, "time": t0}) + "\n")
    if done:
        (d / "done.json").write_text(json.dumps({"status": "complete", "total_steps": total}))
    if lock:
        (work / "V" / f"{name}.lock").write_text(json.dumps(lock))
    if failed:
        (d / "launcher.jsonl").write_text(
            "".join(json.dumps({"event": "error", "exit_code": 1, "error": failed}) + "\n" for _ in range(2))
        )


def test_counts_steps_loss_eta_pack_and_job(tmp_path):
    work = tmp_path / "work"
    _run(work, "a", steps=1000, done=True)
    _run(
        work,
        "b",
        steps=400,
        lock={"host": socket.gethostname(), "pid": 1, "slurm_job_id": "77", "slurm_pack": "pack-abc"},
    )
    _run(work, "c", steps=10, failed="ValueError: boom")
    reg = tmp_path / "results" / "plan" / "V" / "packs.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(
        json.dumps(
            {
                "packs": {
                    "pack-abc": [{"run": "a"}, {"run": "b"}],
                    # e was removed from the config before it started: its pack was planned again without it
                    "pack-d": [{"run": "c"}, {"run": "d"}, {"run": "e", "dropped": True}],
                }
            }
        )
    )
    table = collect(tmp_path, work, now=time.time())
    states = {s["run"]: s for s in table["V"]}
    assert {r: s["state"] for r, s in states.items()} == {"a": "done", "b": "running", "c": "failed", "d": "waiting"}
    b = states["b"]
    assert (b["steps"], b["pack"], b["job"]) == (400, "pack-abc", "77")
    assert abs(b["rate"] - 400 / 199.5) < 1e-6 and abs(b["loss"] - (2.0 - 399 / 1000)) < 1e-4
    text = format_status(table)
    assert "V                  1        1       1        1" in text
    assert "pack pack-abc  job 77" in text and "ValueError: boom" in text
    # done 1000 + b 400 + c 10 + d 0 steps of 4 x 1000 (d's size is the variant's typical run): 35%
    row = next(line for line in text.splitlines() if line.startswith("V "))
    assert row.split()[-5:] == ["1,410", "/", "4,000", "(35%)", "13m18s"], row
    # ETA of the variant: the open runs' steps left (b 600, d 1000) at the running runs' rate (400 steps
    # in 199.5 s): 1600 / (400 / 199.5) = 798 s; b's own: 600 steps at that rate, 299.25 s
    running = next(line for line in text.splitlines() if line.startswith("  V/b "))
    assert "step     400 / 1000 " in running and "2.01/s  ETA   4m59s  " in running, running


def test_stale_lock_is_not_running_and_cli_entry_point(tmp_path):
    work = tmp_path / "work"
    _run(work, "b", steps=10, lock={"host": "x", "pid": 1})
    old = time.time() - 3600
    os.utime(work / "V" / "b.lock", (old, old))
    assert collect(tmp_path, work)["V"][0]["state"] == "waiting"
    p = subprocess.run(
        [sys.executable, "-m", "loss_slope.cli", "status", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "waiting" in p.stdout


def test_the_config_names_the_work_tree(tmp_path):
    work = tmp_path / "scratch" / "work"
    _run(work, "a", steps=1000, done=True)
    (tmp_path / "c.yaml").write_text("paths: {work_root: scratch/work}\npacking: {max_error_attempts: 5}\n")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "loss_slope.cli",
            "status",
            "--root",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "c.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "V                  1        0       0        0" in p.stdout, p.stdout


def test_errors_under_other_settings_do_not_fail_a_run(tmp_path):
    """A run whose settings changed gets a fresh error budget from the pack launcher: errors
    recorded under the old settings digest must not make status call it failed."""
    work = tmp_path / "work"
    _run(work, "r1", steps=0)
    error = {"event": "error", "exit_code": 1, "error": "ConfigCompositionException: bad key", "settings": "old"}
    old = "".join(json.dumps(error) + "\n" for _ in range(2))
    (work / "V" / "r1" / "launcher.jsonl").write_text(old)
    (work / "V" / "r1" / "attempts.jsonl").write_text(
        json.dumps({"event": "end", "status": "failed", "error": "bad key", "time": 1.0}) + "\n"
    )
    reg = tmp_path / "results" / "plan" / "V" / "packs.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(json.dumps({"packs": {"pack-x": [{"run": "r1", "settings": "new"}]}}))
    assert collect(tmp_path, work, now=time.time())["V"][0]["state"] == "waiting"
    # the same errors under the settings it is planned with: given up
    (work / "V" / "r1" / "launcher.jsonl").write_text(old.replace('"old"', '"new"'))
    state = collect(tmp_path, work, now=time.time())["V"][0]
    assert state["state"] == "failed" and "bad key" in state["error"]


def test_retry_gives_a_failed_run_a_fresh_budget_and_resubmits_its_pack(tmp_path, capsys):
    from loss_slope.cli import main

    work = tmp_path / "work"
    _run(work, "r1", failed="ValueError: node without scratch")
    _run(work, "r2", steps=1000, done=True)
    reg = tmp_path / "results" / "plan" / "V" / "packs.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(
        json.dumps({"packs": {"pack-x": [{"run": "r1", "settings": None}, {"run": "r2", "settings": None}]}})
    )
    pack_done = tmp_path / "results" / "packs" / "V" / "pack-x.json"
    pack_done.parent.mkdir(parents=True)
    pack_done.write_text("{}")
    assert collect(tmp_path, work, now=time.time())["V"][0]["state"] == "failed"
    assert "loss-slope retry VARIANT/RUN" in format_status(collect(tmp_path, work, now=time.time()))

    # refused, and nothing changed: a done run, a run in no pack, one removed from the config (its
    # pack lists it as dropped), one without errors (e.g. looked for in the wrong work tree), a bad name
    _run(work, "r3", failed="ValueError: gone")
    _run(work, "r4")
    reg.write_text(
        json.dumps(
            {
                "packs": {
                    "pack-x": [{"run": r, "settings": None} for r in ("r1", "r2", "r4")]
                    + [{"run": "r3", "settings": None, "dropped": True}]
                }
            }
        )
    )
    for bad, why in (
        ("V/r2", "done"),
        ("V/r9", "in no pack"),
        ("V/r3", "removed from the config"),
        ("V/r4", "no error recorded"),
        ("r1", "not VARIANT/RUN"),
    ):
        assert main(["retry", "--root", str(tmp_path), "V/r1", bad]) == 2
        assert why in capsys.readouterr().err
    assert pack_done.exists() and collect(tmp_path, work, now=time.time())["V"][0]["state"] == "failed"
    assert main(["retry", "--root", str(tmp_path), "--work-root", str(tmp_path / "elsewhere"), "V/r1"]) == 2
    # errors only under the settings the run had before a change: the launcher counts none (it starts it anyway)
    planned = json.loads(reg.read_text())
    planned["packs"]["pack-x"][0]["settings"] = "new"
    reg.write_text(json.dumps(planned))
    assert main(["retry", "--root", str(tmp_path), "V/r1"]) == 2
    assert "under its current settings" in capsys.readouterr().err and pack_done.exists()
    planned["packs"]["pack-x"][0]["settings"] = None
    reg.write_text(json.dumps(planned))
    assert not (tmp_path / "elsewhere").exists() and pack_done.exists()

    assert main(["retry", "--root", str(tmp_path), "V/r1"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not pack_done.exists()  # the next snakemake resubmits the pack
    assert collect(tmp_path, work, now=time.time())["V"][0]["state"] == "waiting"
    # an error after the retry counts from one again
    with open(work / "V" / "r1" / "launcher.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "error", "exit_code": 1, "error": "ValueError: again"}) + "\n")
    from loss_slope.train.pack import given_up, read_errors

    errors = read_errors(work / "V" / "r1")
    assert [e["error"] for e in errors] == ["ValueError: again"] and given_up(errors, 3) is None


def test_a_retried_run_whose_last_attempt_failed_is_waiting_without_a_digest(tmp_path):
    """Runs found only in the work tree (no registry digest) count a failed last attempt as failed,
    unless `loss-slope retry` came after it."""
    from loss_slope.train.pack import record_retry

    work = tmp_path / "work"
    _run(work, "r1", failed="ValueError: boom")
    with open(work / "V" / "r1" / "attempts.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "end", "status": "failed", "error": "boom", "time": time.time() - 60}) + "\n")
    assert collect(tmp_path, work, now=time.time())["V"][0]["state"] == "failed"
    record_retry(work / "V" / "r1")
    assert collect(tmp_path, work, now=time.time())["V"][0]["state"] == "waiting"
