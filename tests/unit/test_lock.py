"""The per-run lock: exclusive creation, holder record, staleness, takeover, release."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from loss_slope.train import lock as L
from loss_slope.train.device import NoGPUError, normalize_accelerator, resolve_accelerator


def _within(seconds, cond):
    """Poll ``cond`` until it holds or ``seconds`` pass (the heartbeat thread runs when it is scheduled)."""
    deadline = time.time() + seconds
    while not cond():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_acquire_records_the_holder_and_release_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lk = L.acquire(tmp_path / "V" / "r", heartbeat_s=0)
    rec = json.loads((tmp_path / "V" / "r.lock").read_text())
    assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid() and rec["slurm_job_id"] == "4242"
    assert rec["pid_ns"] == os.readlink("/proc/self/ns/pid") and rec["boot_id"]
    lk.release()
    assert not (tmp_path / "V" / "r.lock").exists()


def test_a_live_holder_is_refused_by_name(tmp_path):
    lk = L.acquire(tmp_path / "r", heartbeat_s=0)
    with pytest.raises(L.RunLocked, match=f"pid {os.getpid()}"):
        L.acquire(tmp_path / "r", heartbeat_s=0)
    lk.release()


def _write_lock(path, **rec):
    path.write_text(json.dumps({"token": "t0", "started": 0, **rec}))


def test_dead_pid_on_this_host_is_taken_over(tmp_path, caplog):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _write_lock(tmp_path / "r.lock", host=socket.gethostname(), pid=p.pid)
    with L.acquire(tmp_path / "r", heartbeat_s=0) as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    assert "taking over a stale run lock" in caplog.text and f"process {p.pid}" in caplog.text


def test_a_reused_pid_on_this_host_is_taken_over_and_its_own_holder_is_not(tmp_path, caplog):
    # pid 1 is alive, but started long before this lock: a holder writes its lock after it starts
    me = L._process_start_time(os.getpid())
    assert me is not None and abs(me - L._process_start_time(os.getpid())) < 1e-6
    _write_lock(tmp_path / "r.lock", host=socket.gethostname(), pid=os.getpid(), started=me + 1.0)
    with pytest.raises(L.RunLocked):
        L.acquire(tmp_path / "r", heartbeat_s=0)  # this process wrote it: alive
    _write_lock(tmp_path / "r.lock", host=socket.gethostname(), pid=os.getpid(), started=me - 3600)
    with L.acquire(tmp_path / "r", heartbeat_s=0) as lk:  # the pid is a process started after the lock
        assert json.loads(lk.path.read_text())["token"] != "t0"
    assert "the pid is now a process started later" in caplog.text


def test_a_holder_in_another_pid_namespace_is_judged_by_job_and_heartbeat_not_by_pid(tmp_path, caplog):
    # a job in a container on this node: its pid names another process (or none) in this namespace
    f = tmp_path / "r.lock"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(f, host=socket.gethostname(), pid=gone.pid, pid_ns="pid:[1]", boot_id=L._boot_id())
    with pytest.raises(L.RunLocked):  # its pid is free here, but its heartbeat is fresh: alive
        L.acquire(tmp_path / "r", heartbeat_s=0, stale_after_s=600, job_state=lambda j: None)
    os.utime(f, (os.path.getmtime(f) - 3600,) * 2)
    L.acquire(tmp_path / "r", heartbeat_s=0, stale_after_s=600, job_state=lambda j: None).release()
    assert "heartbeat" in caplog.text
    # this process's own pid, but recorded before the host rebooted
    _write_lock(f, host=socket.gethostname(), pid=os.getpid(), pid_ns=L._pid_namespace(), boot_id="another-boot")
    L.acquire(tmp_path / "r", heartbeat_s=0).release()
    assert "rebooted" in caplog.text


def test_a_contender_that_cannot_read_the_boot_id_does_not_call_a_live_holder_rebooted(tmp_path, monkeypatch):
    me = L._process_start_time(os.getpid()) + 1.0  # written after this process started: its own lock
    holder = dict(host=socket.gethostname(), pid=os.getpid(), pid_ns=L._pid_namespace(), boot_id="b", started=me)
    _write_lock(tmp_path / "r.lock", **holder)
    monkeypatch.setattr(L, "_boot_id", lambda: None)
    with pytest.raises(L.RunLocked):  # this live process holds it
        L.acquire(tmp_path / "r", heartbeat_s=0)


def test_other_host_uses_the_slurm_job_state(tmp_path):
    _write_lock(tmp_path / "r.lock", host="node7", pid=1, slurm_job_id="99")
    with pytest.raises(L.RunLocked, match="host node7 pid 1 SLURM job 99"):
        L.acquire(tmp_path / "r", heartbeat_s=0, job_state=lambda j: "RUNNING")
    for state in ("", "COMPLETED", "FAILED", "CANCELLED"):
        _write_lock(tmp_path / "r.lock", host="node7", pid=1, slurm_job_id="99")
        L.acquire(tmp_path / "r", heartbeat_s=0, job_state=lambda j, s=state: s).release()


def test_other_host_without_slurm_goes_by_heartbeat_age(tmp_path):
    f = tmp_path / "r.lock"
    _write_lock(f, host="node7", pid=1)
    with pytest.raises(L.RunLocked):
        L.acquire(tmp_path / "r", heartbeat_s=0, stale_after_s=600, job_state=lambda j: None)
    os.utime(f, (os.path.getmtime(f) - 3600,) * 2)
    L.acquire(tmp_path / "r", heartbeat_s=0, stale_after_s=600, job_state=lambda j: None).release()


def test_heartbeat_touches_and_notices_a_lost_lock(tmp_path):
    lk = L.acquire(tmp_path / "r", heartbeat_s=0.05)
    os.utime(lk.path, (0, 0))
    assert _within(10, lambda: lk.path.stat().st_mtime > 1)
    _write_lock(lk.path, host="x", pid=1)  # someone else's now
    assert _within(10, lambda: lk.lost)
    lk.release()
    assert lk.path.exists()  # never removes a lock it does not hold


def test_a_lock_moved_aside_for_a_moment_is_not_lost(tmp_path):
    # a contender that judged an older lock stale renames ours aside, sees its token and links it back
    lk = L.acquire(tmp_path / "r", heartbeat_s=0.05)
    aside = lk.path.with_name("r.lock.stale-x")
    os.rename(lk.path, aside)
    time.sleep(0.1)  # two heartbeats; the one that finds it missing looks again 1 s later
    os.link(aside, lk.path)
    aside.unlink()
    time.sleep(1.5)
    assert not lk.lost
    lk.release()
    assert not lk.path.exists()


def test_three_contenders_on_a_stale_lock_leave_one_holder(tmp_path, monkeypatch):
    # A judges the lock stale; before A acts, B takes the stale lock over and holds the run; a third
    # contender C tries to create the lock whenever A would put a moved lock back. Every acquire that
    # returned must still hold the lock, and exactly one holds it
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path / "r.lock", host=socket.gethostname(), pid=dead.pid)
    holders, judged, real_link = [], [], os.link

    def contend():
        try:
            holders.append(L.acquire(tmp_path / "r", heartbeat_s=0))
        except L.RunLocked:
            pass

    def stale_reason(*args, **kw):
        why = real_stale_reason(*args, **kw)
        if why and not judged:
            judged.append(why)
            contend()  # B: takes the stale lock over, right after A judged it
        return why

    def link(src, dst, *args, **kw):
        contend()  # C: creates the lock if it is not there at this moment
        return real_link(src, dst, *args, **kw)

    real_stale_reason = L.stale_reason
    monkeypatch.setattr(L, "stale_reason", stale_reason)
    monkeypatch.setattr(L.os, "link", link)
    contend()  # A
    assert judged
    assert len(holders) == 1, [h.record["token"] for h in holders]
    assert holders[0]._ours()
    assert [p.name for p in tmp_path.iterdir()] == ["r.lock"]  # nothing left aside, no takeover mutex
    holders[0].release()


def test_a_takeover_mutex_left_by_a_killed_contender_expires(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(L, "ACQUIRE_WAIT_S", 0.5)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path / "r.lock", host=socket.gethostname(), pid=dead.pid)
    mutex = tmp_path / "r.lock.takeover"
    _write_lock(mutex, host=socket.gethostname(), pid=dead.pid)
    with pytest.raises(L.RunLocked, match="r.lock.takeover"):  # a takeover under way: left alone while fresh
        L.acquire(tmp_path / "r", heartbeat_s=0)
    old = time.time() - L.TAKEOVER_STALE_S - 1
    os.utime(mutex, (old, old))
    with L.acquire(tmp_path / "r", heartbeat_s=0) as lk:
        assert lk._ours()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lost_lock_calls_its_handler_once(tmp_path):
    calls = []
    lk = L.acquire(tmp_path / "r", heartbeat_s=0.05, on_lost=calls.append)
    time.sleep(0.2)
    assert calls == []
    _write_lock(lk.path, host="x", pid=1)
    assert _within(10, lambda: calls)
    time.sleep(0.3)  # more heartbeats: none calls it again
    lk.release()
    assert calls == [lk.path]


def test_a_trainer_whose_lock_is_taken_over_exits_at_once_as_locked(tmp_path):
    # what run_training passes as on_lost: ends the process from the heartbeat thread, exit EXIT_LOCKED,
    # whatever the main thread is doing (here: sleeping, as a training step would be busy)
    import subprocess
    import sys

    from loss_slope.train.exit_codes import EXIT_LOCKED

    code = (
        "import threading, time\n"
        "from loss_slope.train.run import stop_on_lost_lock\n"
        "threading.Thread(target=stop_on_lost_lock, args=('r.lock',)).start()\n"
        "time.sleep(60)\n"
        "print('still running')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_LOCKED and "still running" not in proc.stdout
    assert "taken over by another trainer" in proc.stderr


def test_accelerator_spellings_and_the_gpu_allocation_check():
    assert normalize_accelerator("gpu") == "cuda"
    assert resolve_accelerator("cpu", cuda_available=False, environ={"SLURM_JOB_GPUS": "0"}) == "cpu"
    assert resolve_accelerator("auto", cuda_available=False, environ={}) == "cpu"
    assert resolve_accelerator("gpu", cuda_available=True, environ={}) == "cuda"
    for accel, env in (
        ("auto", {"SLURM_JOB_GPUS": "0"}),
        ("auto", {"CUDA_VISIBLE_DEVICES": "1"}),
        ("gpu", {}),
        ("cuda", {}),
    ):
        with pytest.raises(NoGPUError, match="CUDA is not available"):
            resolve_accelerator(accel, cuda_available=False, environ=env)
    with pytest.raises(ValueError, match="trainer.accelerator"):
        normalize_accelerator("tpu")


def test_the_documented_heartbeat_and_takeover_defaults():
    """README: a heartbeat touches the lock every 30 s; a lock without one for 10 min is taken over.
    The trainer calls ``acquire`` with its defaults (train/run.py), so these are what a study runs with."""
    import inspect

    assert L.HEARTBEAT_S == 30.0 and L.STALE_AFTER_S == 10 * 60.0
    params = inspect.signature(L.acquire).parameters
    assert params["heartbeat_s"].default == 30.0 and params["stale_after_s"].default == 600.0
    assert inspect.signature(L.stale_reason).parameters["stale_after_s"].default == 600.0
    # many heartbeats fit in the stale window: a slow file system or a busy node missing a few of them
    # does not make a live trainer look dead
    assert L.STALE_AFTER_S >= 10 * L.HEARTBEAT_S
    # judged by its heartbeat alone (another host, no SLURM job): alive at 9 min, stale past 10 min
    holder = {"host": "another-node", "pid": 1, "token": "t0"}
    now = 1_000_000.0
    assert L.stale_reason(holder, now - 9 * 60, host="this-node", now=now) is None
    why = L.stale_reason(holder, now - 10 * 60 - 1, host="this-node", now=now)
    assert why is not None and "heartbeat is 601 s old (> 600 s)" in why
