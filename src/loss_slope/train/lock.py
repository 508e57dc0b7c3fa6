"""A per-run lock that works on NFS and Lustre: one trainer per run, ever.

The lock is the file ``{run_dir}.lock`` next to the run's work tree (not inside
it: a work tree trained with another config is renamed aside, and the lock must
not move with it). It is created with ``O_CREAT | O_EXCL``, which is atomic on
local file systems, on NFSv3+ and on Lustre (unlike ``flock``, which NFS may
emulate per host or not at all). It holds JSON naming its holder: host, pid,
SLURM job id, start time and a random token. While the run trains, a thread
touches the file every ``heartbeat_s`` seconds, so its mtime says the holder is
alive even to another host.

A lock is *stale*, and is taken over with a logged warning, when

* its holder ran on this host and its pid is gone, or is now another process's
  (one that started after the lock was written: the pid was reused), or
* its holder's SLURM job is no longer pending or running (``squeue``), or
* neither can be checked and its heartbeat is older than ``stale_after_s``.

Otherwise :func:`acquire` raises :class:`RunLocked`, naming the holder, and
touches nothing. A takeover happens under a mutex, the file ``{run_dir}.lock.takeover``
(also created ``O_EXCL``): its holder checks that the lock still is the one judged
stale, renames it to a unique name, removes it, and creates a fresh lock like any
contender would (one ``O_EXCL`` create wins). Only the mutex holder moves a lock file, so
however many trainers contend, a lock that was created after the stale one is never
removed, and the run has one holder at a time. A mutex older than ``TAKEOVER_STALE_S``
was left by a contender killed during its takeover and is removed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("loss_slope.train.lock")

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
TAKEOVER_STALE_S = 10.0  # a takeover takes milliseconds: an older mutex was left by a killed contender
ACQUIRE_WAIT_S = 5.0  # how long acquire waits for an unreadable fresh lock or another's takeover


class RunLocked(RuntimeError):
    """Another live trainer holds the run. The message names it."""

    def __init__(self, path: Path, holder: dict) -> None:
        self.path, self.holder = Path(path), holder
        super().__init__(f"run is locked by another trainer: {describe(holder)} (lock file {path})")


def describe(holder: dict) -> str:
    job = holder.get("slurm_job_id")
    since = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (
        f"host {holder.get('host', '?')} pid {holder.get('pid', '?')}{f' SLURM job {job}' if job else ''} since {when}"
    )


def lock_path(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".lock")


def read_holder(path: str | Path) -> dict | None:
    """The holder recorded in a lock file (None: no lock; {} an unreadable one)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}  # a holder killed between create and write
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) no longer trains
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, to about a second), from ``/proc``;
    None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[-1].split()[19])  # field 22: start time, ticks after boot
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``): a pid means the same process only
    inside one namespace (jobs in containers on one node each have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _boot_id() -> str | None:
    """This boot of the host: a holder recorded under another boot is gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def slurm_job_state(job_id: str, timeout: float = 5.0) -> str | None:
    """The job's state from ``squeue`` ('' = not known to squeue any more, None = cannot ask)."""
    if not shutil.which("squeue"):
        return None
    try:
        p = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        # "Invalid job id specified": the job ended long enough ago to be purged
        return "" if "invalid job id" in (p.stderr or "").lower() else None
    return p.stdout.strip().splitlines()[0].strip() if p.stdout.strip() else ""


_LIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "STAGE_OUT",
    "SIGNALING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "STOPPED",
}


def stale_reason(
    holder: dict,
    mtime: float | None,
    *,
    host: str | None = None,
    now: float | None = None,
    stale_after_s: float = STALE_AFTER_S,
    job_state=slurm_job_state,
) -> str | None:
    """Why the lock held by ``holder`` is stale, or None when its holder may be alive."""
    host = host or socket.gethostname()
    now = time.time() if now is None else now
    own_job = os.environ.get("SLURM_JOB_ID")
    on_this_host = holder.get("host") == host and isinstance(holder.get("pid"), int)
    boot = _boot_id()
    if on_this_host and holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return "its host has rebooted since it took the lock"
    if on_this_host and holder.get("pid_ns") and holder["pid_ns"] != _pid_namespace():
        on_this_host = False  # its pid names another process here: judged by its job and heartbeat below
    if on_this_host:
        if not _pid_alive(holder["pid"]):
            return f"its process {holder['pid']} on this host is gone"
        started, since = _process_start_time(holder["pid"]), holder.get("started")
        if started is not None and isinstance(since, (int, float)) and started > since + 2.0:
            # a holder writes the lock after it starts: a later process has the pid (reused, e.g. after a reboot)
            return f"its process {holder['pid']} on this host is gone (the pid is now a process started later)"
        return None
    job = holder.get("slurm_job_id")
    if job and str(job) != str(own_job or ""):
        state = job_state(str(job))
        if state is not None:
            if state.upper() not in _LIVE_STATES:
                return f"its SLURM job {job} is no longer running ({state or 'unknown to squeue'})"
            return None
    if mtime is not None and now - mtime > stale_after_s:
        return f"its heartbeat is {now - mtime:.0f} s old (> {stale_after_s:.0f} s)"
    return None


class RunLock:
    """A held lock: :meth:`release` (or leaving a ``with`` block) removes it."""

    def __init__(self, path: Path, record: dict, heartbeat_s: float, on_lost=None) -> None:
        self.path, self.record = path, record
        self._stop = threading.Event()
        self.lost = False
        self.on_lost = on_lost  # called once, from the heartbeat thread, when the lock is found taken over
        self._thread = None
        if heartbeat_s > 0:
            self._thread = threading.Thread(
                target=self._beat, args=(heartbeat_s,), daemon=True, name="run-lock-heartbeat"
            )
            self._thread.start()

    def _ours(self) -> bool:
        holder = read_holder(self.path)
        return bool(holder) and holder.get("token") == self.record["token"]

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if read_holder(self.path) is None and self._stop.wait(1.0):
                break  # missing: look again in a second (a contender may be putting it back)
            if not self._ours():
                if not self.lost:
                    self.lost = True
                    log.error("lost the run lock %s (someone took it over); this trainer should stop", self.path)
                    if self.on_lost is not None:
                        self.on_lost(self.path)
                continue
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._ours():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _mutex_path(path: Path) -> Path:
    """The takeover mutex of the lock file ``path``."""
    return path.with_name(path.name + ".takeover")


def _take_mutex(mutex: Path, record: dict) -> bool:
    """Create the takeover mutex, removing one left by a contender killed while holding it."""
    if _create(mutex, record):
        return True
    try:
        age = time.time() - mutex.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > TAKEOVER_STALE_S:
        log.warning(
            "removing a takeover mutex %s left %.0f s ago by %s", mutex, age, describe(read_holder(mutex) or {})
        )
        mutex.unlink(missing_ok=True)
    return False


def _move_stale_aside(path: Path, holder: dict, record: dict, why: str) -> bool | None:
    """Holding the takeover mutex, remove the lock judged stale (``holder``, {} if unreadable).

    True: removed; False: the lock changed since it was judged (judge again); None: another
    contender holds the mutex (wait). Only the mutex holder moves a lock file, so a lock
    created after the judgement is never moved for good: a lock found at ``path`` with another
    token is left in place, and one re-created between that check and the rename (its holder
    released it and a new trainer took it) is linked back at once."""
    mutex = _mutex_path(path)
    if not _take_mutex(mutex, record):
        return None
    try:
        current = read_holder(path)
        if current is None or current.get("token") != holder.get("token"):
            return False
        aside = path.with_name(f"{path.name}.stale-{record['host']}-{record['pid']}-{record['token'][:6]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        moved = read_holder(aside)
        if moved is not None and moved.get("token") != holder.get("token"):
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        log.warning(
            "taking over a stale run lock %s: %s; it was held by %s",
            path,
            why,
            describe(holder) if holder else "an unknown holder",
        )
        aside.unlink(missing_ok=True)
        return True
    finally:
        if (read_holder(mutex) or {}).get("token") == record["token"]:
            mutex.unlink(missing_ok=True)


def acquire(
    run_dir: str | Path,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
    job_state=slurm_job_state,
    on_lost=None,
) -> RunLock:
    """Take the lock of ``run_dir`` or raise :class:`RunLocked` (a few seconds at most).

    ``on_lost(path)`` is called from the heartbeat thread if another trainer takes the lock over
    later (it judged this one dead): the holder must then stop writing the run at once."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_ns": _pid_namespace(),
        "boot_id": _boot_id(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_pack": os.environ.get("LOSS_SLOPE_PACK"),
        "started": time.time(),
        "run_dir": str(run_dir),
        "token": secrets.token_hex(8),
    }
    give_up = time.monotonic() + ACQUIRE_WAIT_S
    while True:
        if _create(path, record):
            return RunLock(path, record, heartbeat_s, on_lost)
        holder = read_holder(path)
        if holder is None:
            continue  # released meanwhile
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if not holder:
            # unreadable: a writer may be between create and write; judge by age only
            why = None if time.time() - mtime < 10 else f"its content is unreadable and {time.time() - mtime:.0f} s old"
        else:
            why = stale_reason(holder, mtime, stale_after_s=stale_after_s, job_state=job_state)
            if why is None:
                raise RunLocked(path, holder)
        moved = None if why is None else _move_stale_aside(path, holder, record, why)
        if moved is not None:
            continue  # removed, or changed since judged: try again at once
        if time.monotonic() > give_up:
            taker = read_holder(_mutex_path(path))
            raise RunLocked(_mutex_path(path), taker) if taker else RunLocked(path, read_holder(path) or {})
        time.sleep(0.1)  # an unreadable fresh lock, or another contender's takeover under way
