"""The pack launcher with real trainers: a time-budget stop is not an error, a
run failing twice with the same error is given up (and its error reported),
and its neighbours are not held back."""

import json

import pytest

from loss_slope.probe.plan import write_pack_spec
from loss_slope.train.attempts import read_attempts
from loss_slope.train.pack import launch_pack, read_errors, record_retry, write_run_marker

pytestmark = pytest.mark.slow

BASE = [
    "experiment=s_core",
    "trainer.epochs=3",
    "model.base_width=4",
    "schedule.warmup_epochs=0.5",
    "trainer.flush_every_steps=5",
    "trainer.accelerator=cpu",
    "trainer.monitors.enabled=false",
]


def _spec(tmp_path, runs):
    spec = tmp_path / "spec.json"
    write_pack_spec(
        spec,
        tmp_path / "registry.json",
        variant="V",
        pack="pack-x",
        runs=[{"run": r, "overrides": o} for r, o in runs.items()],
    )
    return spec


def _launch(tmp_path, spec, attempt, *extra, **options):
    return launch_pack(
        plan_path=spec,
        pack="pack-x",
        variant="V",
        output=tmp_path / "out.json",
        log_dir=tmp_path / "logs",
        work_root=tmp_path / "work",
        attempt=attempt,
        extra_overrides=list(extra),
        max_error_attempts=3,
        **options,
    )


def _launch_keeping_signal_handlers(tmp_path, spec, attempt, *extra, **options):
    """``_launch`` in this process, whose SIGTERM/SIGINT handlers the launcher replaces: put back after."""
    import signal

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        return _launch(tmp_path, spec, attempt, *extra, **options)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_time_budget_stop_is_not_an_error(tmp_path):
    spec = _spec(tmp_path, {"r0": BASE + ["trainer.epochs=30"]})
    steps = tmp_path / "work" / "V" / "r0" / "tables" / "steps.csv"
    assert _launch(tmp_path, spec, 1, "trainer.max_time_s=3") == 3  # unfinished: resubmit, no error
    first = len(steps.read_text().splitlines())
    # the next attempt resumes and gets its own budget (not the time of the earlier attempts)
    assert _launch(tmp_path, spec, 2, "trainer.max_time_s=3") == 3
    assert len(steps.read_text().splitlines()) > first + 5
    assert read_errors(tmp_path / "work" / "V" / "r0") == []
    assert not (tmp_path / "out.json").exists()
    # each attempt's start record keeps the settings digest the pack planned the run with
    planned = json.loads(spec.read_text())["packs"]["pack-x"][0]["settings"]
    starts = [r for r in read_attempts(tmp_path / "work" / "V" / "r0" / "attempts.jsonl") if r["event"] == "start"]
    assert len(starts) == 2 and {r["settings"] for r in starts} == {planned}


def test_same_error_twice_is_given_up_and_neighbours_finish(tmp_path):
    bad = BASE + ["schedule.warmup_epochs=100"]  # fails at start, every time
    spec = _spec(tmp_path, {"ok": BASE, "bad": bad})
    assert _launch(tmp_path, spec, 1) == 1  # first error: retry
    assert _launch(tmp_path, spec, 2) == 0  # same error again: given up; the pack is finished
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["runs"]["ok"]["status"] == "complete"
    assert out["runs"]["bad"]["given_up"] == "failed twice in a row with the same error"
    assert "warm-up" in out["runs"]["bad"]["error"]
    assert _launch(tmp_path, spec, 3) == 0  # a third attempt does not start it again
    assert len(read_errors(tmp_path / "work" / "V" / "bad")) == 2
    with pytest.raises(SystemExit, match="warm-up"):
        write_run_marker(tmp_path / "work" / "V" / "bad", tmp_path / "m.json", variant="V", run="bad")
    write_run_marker(tmp_path / "work" / "V" / "ok", tmp_path / "m.json", variant="V", run="ok")
    # `loss-slope retry`: a fresh error budget; the next attempt starts it again (and its error counts once)
    record_retry(tmp_path / "work" / "V" / "bad")
    assert read_errors(tmp_path / "work" / "V" / "bad") == []
    assert _launch(tmp_path, spec, 4) == 1
    assert len(read_errors(tmp_path / "work" / "V" / "bad")) == 1


def test_a_run_waiting_for_another_trainers_lock_is_not_lost_on_sigterm(tmp_path):
    # run a is held by another live trainer (this test process), run b trains; SIGTERM (scancel) arrives
    # as b completes, while the pack waits for a's lock: the pack is unfinished (not complete, not an error)
    import os
    import signal
    import threading
    import time

    from loss_slope.train.lock import acquire

    spec = _spec(tmp_path, {"a": BASE, "b": BASE})
    holder = acquire(tmp_path / "work" / "V" / "a", heartbeat_s=0)
    done_b = tmp_path / "work" / "V" / "b" / "done.json"

    def scancel_when_b_is_done():
        deadline = time.time() + 240
        while not done_b.exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # b may still be exiting: killed after done.json, it is complete

    threading.Thread(target=scancel_when_b_is_done, daemon=True).start()
    try:
        code = _launch_keeping_signal_handlers(tmp_path, spec, 1, lock_poll_s=600)
    finally:
        holder.release()
    assert done_b.exists()
    assert code == 3  # unfinished: Snakemake resubmits, a trains then
    assert not (tmp_path / "out.json").exists()
    assert not (tmp_path / "work" / "V" / "a" / "done.json").exists()


def test_sigterm_while_a_run_starts_up_is_a_stop_not_an_error(tmp_path):
    # scancel as the trainer imports torch (before Lightning installs its SIGTERM handler): the forwarded
    # signal kills it with -SIGTERM; that is a stop (unfinished, exit 3), not the run's error, so the
    # next attempt neither asks for more memory nor counts it towards giving the run up
    import os
    import signal
    import threading
    import time

    spec = _spec(tmp_path, {"r0": BASE})
    run_log = tmp_path / "logs" / "r0.log"

    def scancel_when_started():
        deadline = time.time() + 60
        while not run_log.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=scancel_when_started, daemon=True).start()
    code = _launch_keeping_signal_handlers(tmp_path, spec, 1)
    assert code == 3
    assert read_errors(tmp_path / "work" / "V" / "r0") == []
    records = [json.loads(x) for x in (tmp_path / "work" / "V" / "r0" / "launcher.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records if r["event"] == "outcome"] == ["unfinished"]
    assert [r["exit_code"] for r in records if r["event"] == "outcome"] == [-signal.SIGTERM]
    assert _launch(tmp_path, spec, 2) == 0  # the next attempt trains it
    assert json.loads((tmp_path / "out.json").read_text())["runs"]["r0"]["status"] == "complete"


def _kill_the_trainer_when_it_logs(run_log, text, attempt, *, timeout=120):
    """SIGKILL this process's trainer child once the log's section of pack attempt ``attempt`` shows
    ``text`` (as the host's out-of-memory killer would), from a thread; the thread, to join. Only that
    attempt's section counts: the thread starts before the launcher writes its header, when the last
    section is the previous attempt's."""
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    def children():
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    cmd = (d / "cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"loss_slope.train" in cmd:
                    yield int(d.name)

    def kill():
        deadline = time.time() + timeout
        while time.time() < deadline:
            section = run_log.read_text().split("=== pack")[-1] if run_log.exists() else ""
            if section.startswith(f" pack-x attempt {attempt} ") and text in section:
                pids = list(children())
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                if pids:
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_two_out_of_memory_kills_do_not_give_a_run_up(tmp_path):
    """A run SIGKILLed twice at the same point was given up as 'the same error twice', with its log's
    last line (a library warning) as the error; a kill is now recorded as such and the run is retried."""
    spec = _spec(tmp_path, {"r0": BASE})
    run_log, run_dir = tmp_path / "logs" / "r0.log", tmp_path / "work" / "V" / "r0"
    for attempt in (1, 2):
        thread = _kill_the_trainer_when_it_logs(run_log, "step 5/", attempt)
        assert _launch(tmp_path, spec, attempt, "trainer.log_every_steps=5") == 1
        thread.join()
        errors = read_errors(run_dir)
        assert len(errors) == attempt and errors[-1]["exit_code"] == -9
        assert errors[-1]["error"].startswith("killed by SIGKILL")
    assert _launch(tmp_path, spec, 3) == 0  # not given up: the third attempt resumes and finishes it
    assert json.loads((tmp_path / "out.json").read_text())["runs"]["r0"]["status"] == "complete"


def test_a_sigterm_as_the_pack_starts_its_runs_reaches_every_run(tmp_path, monkeypatch):
    """scancel while the launcher starts its second run: it used to forward signals only once all were
    started, so the default action killed the launcher and its runs trained on, orphaned, holding their locks."""
    import os
    import signal
    import subprocess

    from loss_slope.train import pack as P

    spec = _spec(tmp_path, {"r0": BASE, "r1": BASE})
    started = []

    class ScancelOnTheSecond(subprocess.Popen):
        def __init__(self, cmd, *args, **kwargs):
            started.append(cmd)
            if len(started) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            super().__init__(cmd, *args, **kwargs)
            self.cmd = cmd

    monkeypatch.setattr(P.subprocess, "Popen", ScancelOnTheSecond)
    assert _launch_keeping_signal_handlers(tmp_path, spec, 1) == 3  # stopped, not an error
    assert len(started) == 2
    records = {
        r: [json.loads(x) for x in (tmp_path / "work" / "V" / r / "launcher.jsonl").read_text().splitlines()]
        for r in ("r0", "r1")
    }
    assert all(rec["status"] == "unfinished" for recs in records.values() for rec in recs if rec["event"] == "outcome")
    assert not any(b"loss_slope.train" in cmd for cmd in _child_cmdlines())  # none left training


def test_a_sigterm_before_the_runs_start_stops_the_pack_cleanly(tmp_path):
    # during the retry back-off (or the MPS daemon's start): no run is started, exit 3
    import os
    import signal
    import threading

    spec = _spec(tmp_path, {"r0": BASE})
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    assert _launch_keeping_signal_handlers(tmp_path, spec, 2, backoff_base=30.0) == 3
    assert not (tmp_path / "logs" / "r0.log").exists()


def test_a_sigterm_during_the_gpu_check_is_not_swallowed(tmp_path, monkeypatch):
    # the GPU check imports torch inside `except Exception` (seconds on a GPU node): a stop there must stop
    import os
    import signal
    import time

    from loss_slope.train import pack as P

    def check_gpu_interrupted(*_args, **_kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
        except Exception:
            pass
        return None

    monkeypatch.setattr(P, "check_gpu", check_gpu_interrupted)
    spec = _spec(tmp_path, {"r0": BASE})
    assert _launch_keeping_signal_handlers(tmp_path, spec, 1) == 3
    assert not (tmp_path / "logs" / "r0.log").exists()


def _child_cmdlines():
    import os
    from pathlib import Path

    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    yield (d / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue


def test_a_work_root_with_hydra_syntax_in_its_name_trains(tmp_path):
    # the schema allows a comma, '=', brackets and '#' in paths; unquoted, Hydra read run_dir=a,b as a sweep
    spec = _spec(tmp_path, {"r0": [*BASE, "trainer.epochs=1", "schedule.warmup_epochs=0.25"]})
    work = tmp_path / "scratch, a=b [1] #2"
    code = launch_pack(
        plan_path=spec,
        pack="pack-x",
        variant="V",
        output=tmp_path / "out.json",
        log_dir=tmp_path / "logs",
        work_root=work,
    )
    assert code == 0, (tmp_path / "logs" / "r0.log").read_text()[-2000:]
    assert (work / "V" / "r0" / "done.json").exists()


def test_a_run_found_locked_after_a_sigterm_is_not_started_again(tmp_path, monkeypatch):
    # the run exits "locked" (another live trainer holds it) and scancel reaches the pack before the pack
    # has read that exit: the pack must not put the run back to wait for the lock and start it again
    # after the stop; it ends unfinished at once, and the next attempt tries the run again
    import os
    import signal
    import subprocess

    from loss_slope.train import pack as pack_module
    from loss_slope.train.exit_codes import EXIT_LOCKED
    from loss_slope.train.lock import acquire

    class ScancelOnLockedExit(subprocess.Popen):
        signalled = False

        def poll(self):
            code = super().poll()
            if code == EXIT_LOCKED and not ScancelOnLockedExit.signalled:
                ScancelOnLockedExit.signalled = True
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before this poll returns
            return code

    monkeypatch.setattr(pack_module.subprocess, "Popen", ScancelOnLockedExit)
    spec = _spec(tmp_path, {"a": BASE})
    holder = acquire(tmp_path / "work" / "V" / "a", heartbeat_s=0)
    try:
        # with a 90 s budget the pack would retry a held lock for about 30 s (poll every 1 s)
        code = _launch_keeping_signal_handlers(tmp_path, spec, 1, "trainer.max_time_s=90", lock_poll_s=1)
    finally:
        holder.release()
    assert ScancelOnLockedExit.signalled
    assert code == 3  # unfinished: Snakemake resubmits
    starts = (tmp_path / "logs" / "a.log").read_text().count("=== pack pack-x attempt 1")
    assert starts == 1
    records = [json.loads(x) for x in (tmp_path / "work" / "V" / "a" / "launcher.jsonl").read_text().splitlines()]
    assert [(r["status"], r["exit_code"]) for r in records if r["event"] == "outcome"] == [("locked", EXIT_LOCKED)]


def test_a_run_restarted_after_its_lock_wait_as_scancel_arrives_is_stopped_too(tmp_path, monkeypatch):
    # run a waits for another trainer's lock; the lock is freed and scancel reaches the pack just as the
    # pack starts run a again: that new trainer must be sent SIGTERM too (before, the signal reached only
    # the trainers already running, and this one trained to the end of its budget)
    import os
    import signal
    import subprocess

    from loss_slope.train import pack as pack_module
    from loss_slope.train.lock import acquire

    holder = acquire(tmp_path / "work" / "V" / "a", heartbeat_s=0)
    starts = []

    class ScancelOnRestart(subprocess.Popen):
        def __init__(self, cmd, *args, **kwargs):
            starts.append(cmd)
            if len(starts) == 2:  # the restart after the lock wait
                holder.release()  # the other trainer is gone: this start would train the run
                os.kill(os.getpid(), signal.SIGTERM)  # scancel, while the trainer is being started
            super().__init__(cmd, *args, **kwargs)

    monkeypatch.setattr(pack_module.subprocess, "Popen", ScancelOnRestart)
    spec = _spec(tmp_path, {"a": BASE + ["trainer.epochs=30"]})
    try:
        code = _launch_keeping_signal_handlers(tmp_path, spec, 1, lock_poll_s=0.5)
    finally:
        holder.release()
    assert len(starts) == 2
    assert code == 3  # unfinished: Snakemake resubmits
    assert not (tmp_path / "work" / "V" / "a" / "done.json").exists()
    records = [json.loads(x) for x in (tmp_path / "work" / "V" / "a" / "launcher.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records if r["event"] == "outcome"] == ["unfinished"]
