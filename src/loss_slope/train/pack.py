"""Launch the N runs of one pack on one GPU and wait for them.

    python -m loss_slope.train.pack --plan results/plan/V/packs/pack-0123456789.json --pack pack-0123456789 \
        --variant V --output results/packs/V/pack-0123456789.json --log-dir logs/train/V --work-root work --attempt 1

Each run is a separate ``python -m loss_slope.train`` process (its own CUDA
context, so one crash cannot take the others down). A complete run skips
itself, a partial one resumes from its latest checkpoint, and a run another
live trainer holds (exit 4, the per-run lock) is waited for and then started
again (it then finds itself complete, or resumes).

Retries. A run stopped by its time budget (exit 3) is not an error: the pack
exits 3 and the next attempt resumes it, however many times that takes. A run
that fails is recorded in ``{run_dir}/launcher.jsonl`` (exit code, the error
line of its log, the run's settings digest), and so is how every run ended in
each attempt (``outcome``: complete, unfinished, locked, failed, no_gpu, or
not_started when given up before; the next attempt's memory request reads it,
:func:`loss_slope.study.resources.memory_attempt`); once it has failed
``--max-error-attempts`` times, or twice in a row with the same error, it is
given up: it is not started again, and the pack counts it as finished (its
per-run marker job then fails with that error, so the report lists it and its
neighbours are not held back). The pack writes its output and exits 0 when
every run is complete or given up, else it exits non-zero (3 if only time
budgets stopped it) and Snakemake resubmits it.

Sharing the GPU (``packing.mps``, :mod:`loss_slope.probe.mps`). Before a pack
of N > 1 runs starts any, the GPU's compute mode is read (``nvidia-smi``): in
``Exclusive_Process`` mode without MPS only one process may open the GPU, so
the pack trains its runs one at a time (N = 1, with a message). With MPS
(``on``, or ``auto`` when the probe measured it faster) the pack starts its own
MPS daemon, its pipe and log folders inside the job's temporary folder, and
stops it when the runs are done, however they end. Without ``nvidia-smi`` (the
CPU, or runs asking for the CPU) nothing is checked or started.

On attempt a > 1 it first waits ``min(cap, base * 2**(a-2))`` seconds when
``--backoff-base`` is given (on SLURM the profile delays the resubmission
itself with ``sbatch --begin``, so no GPU is held while waiting).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loss_slope.jsonio import write_json
from loss_slope.pipeline.paths import work_run
from loss_slope.probe import mps as MPS
from loss_slope.probe.plan import read_plan
from loss_slope.study.run_control import last_value
from loss_slope.study.runs import hydra_path
from loss_slope.train.attempts import SETTINGS_ENV, append_record, read_launcher
from loss_slope.train.exit_codes import EXIT_ERROR, EXIT_LOCKED, EXIT_NO_GPU, EXIT_OK, EXIT_UNFINISHED, killed_by

LOCK_POLL_S = 30.0
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - ")
_ERROR_LINE = re.compile(r"\b[A-Za-z_.]*(Error|Exception|Interrupt)\b|run failed:|^error:", re.I)


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Delay before attempt ``attempt`` (1-based): 0 for the first, then base, 2 base, 4 base, ... capped."""
    return 0.0 if attempt <= 1 else min(cap, base * 2 ** (attempt - 2))


def error_line(text: str) -> str:
    """The line of a training log that says what went wrong: its last error line, or, where no
    error line follows it, the exception line of its last traceback (the first unindented line
    after the frames, whatever the exception's class is called)."""
    raw = text.splitlines()
    starts = [i for i, ln in enumerate(raw) if ln.startswith("Traceback (most recent call last):")]
    exc = None
    if starts:
        exc = next((i for i in range(starts[-1] + 1, len(raw)) if raw[i].strip() and not raw[i][0].isspace()), None)
    lines = [
        (i, _LOG_PREFIX.sub("", ln).strip()) for i, ln in enumerate(raw) if ln.strip() and (exc is None or i > exc)
    ]
    lines = [
        (i, ln) for i, ln in lines if not ln.startswith(("Set the environment variable HYDRA_FULL_ERROR", "Traceback"))
    ]
    errors = [ln for _, ln in lines if _ERROR_LINE.search(ln)]
    if exc is not None and not errors:
        return raw[exc].strip()[:500]
    return (errors or [ln for _, ln in lines] or ["(no output)"])[-1][:500]


def read_errors(run_dir, settings: str | None = None) -> list[dict]:
    """The run's recorded errors (under ``settings``, when given) since its last ``retry`` record
    (:func:`record_retry`), in order; each says whether an attempt that ended otherwise
    (unfinished, locked, ...) came between it and the error before it (``after_progress``)."""
    out, progress = [], False
    for rec in read_launcher(run_dir):
        if rec.get("event") == "retry":
            out, progress = [], False
        elif rec.get("event") == "outcome" and rec.get("status") not in ("failed", "not_started"):
            progress = True
        elif rec.get("event") == "error" and (settings is None or rec.get("settings") == settings):
            out.append({**rec, "after_progress": progress})
            progress = False
    return out


def given_up(errors: list[dict], max_errors: int) -> str | None:
    """Why a run is not retried any more (None: retry it): ``max_errors`` errors, or the same error
    in two attempts in a row. A kill by a signal is never "the same error": an out-of-memory kill
    is met by the next attempt's larger memory request."""
    if len(errors) >= max_errors:
        return f"failed {len(errors)} times (the limit is {max_errors})"
    if (
        len(errors) >= 2
        and not errors[-1].get("after_progress")
        and errors[-1]["exit_code"] is not None
        and errors[-1]["exit_code"] >= 0
        and (errors[-1]["error"], errors[-1]["exit_code"]) == (errors[-2]["error"], errors[-2]["exit_code"])
    ):
        return "failed twice in a row with the same error"
    return None


def _record(run_dir, event: str, **rec) -> None:
    append_record(Path(run_dir) / "launcher.jsonl", {"event": event, "time": time.time(), **rec})


def _record_error(run_dir, **rec) -> None:
    _record(run_dir, "error", **rec)


def record_retry(run_dir, **rec) -> None:
    """Give a run a fresh error budget: the errors recorded before this count no more, so a run
    given up is started again by the next attempt of its pack (``loss-slope retry``)."""
    _record(run_dir, "retry", **rec)


def read_measured(path_template, variant: str) -> dict:
    """What the probe measured for ``variant`` (its ``runs_per_gpu.json``), read when the pack starts.

    Read here, not copied into the pack's spec: a probe rerun then changes no pack
    spec, so it resubmits no pack (the spec holds only what the runs train). ``None``:
    N is fixed, nothing was measured. No file: a pack planned before the probe
    (N was fixed then) starting while it measures, or the plan being rewritten by a
    probe rerun; the pack trains unmeasured (no GPU check, ``auto`` means no MPS).
    """
    if not path_template:
        return {}
    path = Path(str(path_template).replace("{variant}", variant))
    try:
        return read_plan(path)
    except FileNotFoundError:
        print(
            f"warning: {path} does not exist (yet): no GPU-model check, and packing.mps auto means off",
            file=sys.stderr,
            flush=True,
        )
        return {}


def check_gpu(expect: str | None, mode: str) -> str | None:
    """Compare the GPU this job got with the one the probe measured; a message when they differ."""
    if not expect:
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None  # the trainers decide (explicit cpu, or fail fast)
        got = torch.cuda.get_device_name(0)
    except Exception:
        return None
    if got == expect:
        return None
    return (
        f"this pack got GPU {got!r} but the probe measured N on {expect!r}; "
        f"pin the model (LOSS_SLOPE_SLURM_GPU_MODEL / _CONSTRAINT) ({mode})"
    )


def gpu_sharing(
    requested: int,
    setting: str,
    *,
    chosen: bool | None = None,
    overrides=(),
    run=subprocess.run,
    which=shutil.which,
    environ=os.environ,
) -> MPS.PackDecision:
    """How many of the pack's runs may train at once, and whether under an MPS daemon.

    ``setting`` is ``packing.mps``; with ``auto`` the probe's choice (``chosen``, from the
    plan) decides, and without a measurement (N fixed) ``auto`` means off. The compute
    mode is read only when it matters: N > 1, runs not asking for the CPU, and
    ``nvidia-smi`` present. A compute mode that cannot be read is reported and taken as
    ``Default`` (the runs' own CUDA errors then say more).
    """
    effective = ("on" if chosen else "off") if setting == "auto" else setting
    if effective not in ("on", "off"):
        raise ValueError(f"packing.mps must be one of {MPS.MPS_SETTINGS}, got {setting!r}")
    if requested <= 1 or "trainer.accelerator=cpu" in overrides or which("nvidia-smi") is None:
        return MPS.PackDecision(max(1, requested), False, "")
    notes = []
    if effective == "on" and which(MPS.CONTROL) is None:  # time-slicing still trains the runs
        notes.append(f"packing.mps={setting} but no {MPS.CONTROL} here: the runs time-slice the GPU")
        effective = "off"
    gpu = (environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    try:
        mode = MPS.compute_mode(gpu, run=run)
    except (OSError, subprocess.CalledProcessError, ValueError) as err:
        mode = "Default"
        notes.append(f"could not read the GPU's compute mode ({err})")
    decision = MPS.decide(requested, mode, effective)
    return MPS.PackDecision(decision.runs, decision.mps, "; ".join(filter(None, [*notes, decision.message])))


def _with_budget(overrides, seconds: float):
    out = [o for o in overrides if not o.startswith("trainer.max_time_s=")]
    return [*out, f"trainer.max_time_s={max(60, int(seconds))}"]


def _budget(overrides) -> float | None:
    """The time budget the runs get: the last ``trainer.max_time_s`` (Hydra's last value wins;
    None: none, or ``null``)."""
    try:
        return float(last_value(overrides, "trainer.max_time_s"))
    except (TypeError, ValueError):
        return None


class _StopBeforeStart(BaseException):
    """SIGTERM/SIGINT while the pack sets up, before it forwards signals to its runs (a BaseException,
    as KeyboardInterrupt is: the set-up's own ``except Exception`` must not swallow a stop)."""

    @classmethod
    def raise_it(cls, signum, _frame):
        raise cls(signal.Signals(signum).name)


def _stops_cleanly_before_start(launch):
    """Until the runs start (and the launcher forwards signals to them), SIGTERM/SIGINT ends the pack
    with exit 3, unwinding what it set up (the MPS daemon); no run has started, so the next attempt
    starts them."""

    @functools.wraps(launch)
    def launch_stoppable(**options) -> int:
        previous = {s: signal.signal(s, _StopBeforeStart.raise_it) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return launch(**options)
        except _StopBeforeStart as stop:
            print(f"stopped by {stop} before any run started: the next attempt starts them", file=sys.stderr)
            return EXIT_UNFINISHED
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    return launch_stoppable


@_stops_cleanly_before_start
def launch_pack(
    *,
    plan_path,
    pack: str,
    variant: str,
    output,
    log_dir,
    work_root="work",
    attempt: int = 1,
    backoff_base: float = 0.0,
    backoff_cap: float = 600.0,
    extra_overrides=(),
    expect_runs=None,
    max_error_attempts: int = 3,
    measured_plan=None,
    gpu_mismatch: str = "fail",
    lock_poll_s: float = LOCK_POLL_S,
    mps: str = "off",
    mps_runner=subprocess.run,
    which=shutil.which,
) -> int:
    plan = read_plan(plan_path)
    members = plan["packs"][pack]
    if expect_runs is not None and [m["run"] for m in members] != list(expect_runs):
        raise SystemExit(
            f"pack {pack} of {plan_path} holds {[m['run'] for m in members]}, "
            f"but the workflow expected {list(expect_runs)}: rerun plan_packs"
        )
    measured = read_measured(measured_plan, variant)
    mismatch = check_gpu(measured.get("gpu_name"), gpu_mismatch)
    if mismatch:
        print(("error: " if gpu_mismatch == "fail" else "warning: ") + mismatch, file=sys.stderr, flush=True)
        if gpu_mismatch == "fail":
            return EXIT_ERROR
    delay = backoff_seconds(attempt, base=backoff_base, cap=backoff_cap)
    if delay:
        print(f"attempt {attempt}: backing off {delay:.0f} s before retrying", flush=True)
        time.sleep(delay)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    share = functools.partial(
        gpu_sharing,
        len(members),
        overrides=[o for m in members for o in m["overrides"]] + list(extra_overrides),
        run=mps_runner,
        which=which,
    )
    sharing = share(mps, chosen=measured.get("mps"))
    if sharing.message:
        print(f"warning: {sharing.message}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        env = {**os.environ, "LOSS_SLOPE_ATTEMPT": str(attempt), "LOSS_SLOPE_PACK": pack}
        if sharing.mps:
            job_tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"lossslope-{pack}-"))
            try:
                env = MPS.runs_environment(env, stack.enter_context(MPS.MpsDaemon(job_tmp, run=mps_runner)))
                print(f"MPS daemon for {len(members)} runs (pipe in {job_tmp})", flush=True)
            except (OSError, subprocess.CalledProcessError) as err:
                # time-slicing still trains the runs (one at a time on an exclusive-process GPU)
                sharing = share("off")
                print(
                    f"warning: the MPS daemon did not start ({err}): {sharing.runs} of the pack's runs at a time, "
                    "time-slicing the GPU" + (f"; {sharing.message}" if sharing.message else ""),
                    file=sys.stderr,
                    flush=True,
                )
        return _train_members(
            members=members,
            pack=pack,
            variant=variant,
            output=output,
            log_dir=log_dir,
            work_root=work_root,
            attempt=attempt,
            extra_overrides=extra_overrides,
            max_error_attempts=max_error_attempts,
            lock_poll_s=lock_poll_s,
            env=env,
            max_parallel=sharing.runs,
        )


def _train_members(
    *,
    members,
    pack,
    variant,
    output,
    log_dir,
    work_root,
    attempt,
    extra_overrides,
    max_error_attempts,
    lock_poll_s,
    env,
    max_parallel,
) -> int:
    """Train the pack's runs, at most ``max_parallel`` at once; write the output when all are settled."""
    started = time.time()
    budget = _budget(extra_overrides)
    deadline = started + budget if budget else None
    results: dict[str, dict] = {}
    procs: dict[str, tuple] = {}  # run -> (Popen, log file, log offset)
    waiting: dict[str, float] = {}  # run -> when to start it again (its lock was held)

    def run_log(run: str) -> Path:
        return Path(log_dir) / f"{run}.log"

    def start(m, overrides):
        run = m["run"]
        run_dir = Path(work_run(work_root, variant, run))
        cmd = [
            sys.executable,
            "-m",
            "loss_slope.train",
            *m["overrides"],
            *overrides,
            f"variant={variant}",
            f"run={run}",
            f"run_dir={hydra_path(run_dir)}",
        ]
        log = open(run_log(run), "a")
        log.write(
            f"\n=== pack {pack} attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(shlex.quote(c) for c in cmd)}\n"
        )
        log.flush()
        # the settings digest the run is planned with: its start record keeps it (study.resources.steps_done)
        run_env = {**env, SETTINGS_ENV: m.get("settings") or ""}
        procs[run] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env), log, log.tell())
        print(f"started {variant}/{run} (pid {procs[run][0].pid})", flush=True)
        if stopping:  # the signal came while it was being started: forward() could not reach it
            procs[run][0].send_signal(signal.SIGTERM)

    stopping = False  # set by a signal: no run is started (or put back to wait for a lock) after it

    def forward(signum, _frame):  # scancel/timeout/Ctrl-C: let every run checkpoint
        # only a flag and signals: the main loop may be iterating `waiting` or `procs` right now
        nonlocal stopping
        stopping = True
        for p, _, _ in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # a run checkpoints on SIGTERM at the end of its step

    # before the first run starts: from here a stop reaches every run started
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    by_run = {m["run"]: m for m in members}
    skipped: set[str] = set()  # given up before this attempt: not started
    pending = []  # runs to start when a slot frees (max_parallel < N: an exclusive-process GPU)
    for m in members:
        run_dir = Path(work_run(work_root, variant, m["run"]))
        why = (
            None
            if (run_dir / "done.json").exists()
            else given_up(read_errors(run_dir, m.get("settings")), max_error_attempts)
        )
        if why:
            skipped.add(m["run"])
            last = read_errors(run_dir, m.get("settings"))[-1]
            results[m["run"]] = {
                "exit_code": last["exit_code"],
                "status": "failed",
                "given_up": why,
                "error": last["error"],
                "log": str(run_log(m["run"])),
            }
            print(f"{variant}/{m['run']}: not started again: {why}: {last['error']}", flush=True)
            continue
        if len(procs) < max_parallel and not stopping:
            start(m, list(extra_overrides))
        else:
            pending.append(m)  # a stop before its start: cleared below, unfinished

    def remaining_overrides():
        over = list(extra_overrides)
        if deadline is not None:
            over = _with_budget(over, deadline - time.time())
        return over

    while procs or waiting or pending:
        if stopping:
            for run in list(waiting):  # held by another live trainer: the next attempt tries it again
                results[run] = {"exit_code": EXIT_LOCKED, "status": "locked", "log": str(run_log(run))}
            waiting.clear()
            pending.clear()  # never started: unfinished (below), the next attempt trains them
        for run in [r for r, (p, _, _) in procs.items() if p.poll() is not None]:
            p, log, offset = procs.pop(run)
            log.close()
            code = p.returncode
            log_path = run_log(run)
            run_dir = Path(work_run(work_root, variant, run))
            if code == EXIT_LOCKED and not stopping and (deadline is None or time.time() + lock_poll_s < deadline - 60):
                print(f"{variant}/{run}: another live trainer holds it; waiting for its lock", flush=True)
                waiting[run] = time.time() + lock_poll_s
                continue
            status = {
                EXIT_OK: "complete",
                EXIT_UNFINISHED: "unfinished",
                EXIT_LOCKED: "locked",
                EXIT_NO_GPU: "no_gpu",
            }.get(code, "failed")
            if status == "failed" and code < 0 and (run_dir / "done.json").exists():
                status = "complete"  # killed (a forwarded SIGTERM) after writing its last state: done
            elif status == "failed" and (code == -signal.SIGTERM or (stopping and code == -signal.SIGINT)):
                # stopped from outside while Lightning's handler was not installed (starting up, or past
                # its fit), or a second Ctrl-C of the terminal's process group while it was stopping: a
                # stop, not the run's error; the next attempt resumes from its latest checkpoint
                status = "unfinished"
            res = {"exit_code": code, "status": status, "log": str(log_path)}
            if status == "failed":
                if code < 0:
                    err = killed_by(code)
                else:
                    with open(log_path, errors="replace") as fh:
                        fh.seek(offset)
                        err = error_line(fh.read())
                settings = by_run[run].get("settings")
                _record_error(
                    run_dir,
                    attempt=attempt,
                    exit_code=code,
                    error=err,
                    settings=settings,
                    pack=pack,
                    slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                )
                res["error"] = err
                why = given_up(read_errors(run_dir, settings), max_error_attempts)
                if why:
                    res["given_up"] = why
            results[run] = res
            print(
                f"{variant}/{run}: {status} (exit {code}){': ' + res['error'] if 'error' in res else ''}"
                f"{'; given up: ' + res['given_up'] if 'given_up' in res else ''}",
                flush=True,
            )
        for run in [r for r, when in waiting.items() if when <= time.time()]:
            if stopping:
                break
            del waiting[run]
            start(by_run[run], remaining_overrides())
        while pending and not stopping and len(procs) + len(waiting) < max_parallel:
            if deadline is not None and time.time() > deadline - 60:
                pending.clear()  # no time left for them: unfinished (below), the next attempt starts them
                break
            start(pending.pop(0), remaining_overrides())
        time.sleep(0.2)

    for m in members:  # a member without a result (never started) is unfinished, never done
        results.setdefault(m["run"], {"exit_code": None, "status": "unfinished", "log": str(run_log(m["run"]))})
    # how each run ended in this attempt, for the next attempt's memory request (study.resources.memory_attempt);
    # a run given up before this attempt was not started
    for m in members:
        res = results[m["run"]]
        _record(
            Path(work_run(work_root, variant, m["run"])),
            "outcome",
            attempt=attempt,
            status="not_started" if m["run"] in skipped else res["status"],
            exit_code=res.get("exit_code"),
            pack=pack,
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        )
    terminal = {r for r, v in results.items() if v["status"] == "complete" or "given_up" in v}
    open_runs = {r: v for r, v in results.items() if r not in terminal}
    if open_runs:
        for r, v in open_runs.items():
            print(f"run {variant}/{r} did not complete ({v['status']}); see {v['log']}", file=sys.stderr)
        # a time-budget stop, or a run still held by another live trainer when the budget ran out: not errors
        only_budget = all(v["status"] in ("unfinished", "locked") for v in open_runs.values())
        return EXIT_UNFINISHED if only_budget else EXIT_ERROR
    write_json(
        {
            "variant": variant,
            "pack": pack,
            "attempt": attempt,
            "started": started,
            "finished": time.time(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "runs": results,
        },
        output,
        indent=2,
        strict=False,
    )
    return EXIT_OK


def write_run_marker(run_dir, output, *, variant: str, run: str, log_path: str | None = None) -> dict:
    """The per-run completion marker (:data:`~loss_slope.pipeline.paths.RUN_DONE`), from the run's work tree.

    A run that was given up raises, with its error: the marker job fails for
    that run only.
    """
    run_dir = Path(run_dir)
    done_path = run_dir / "done.json"
    if not done_path.exists():
        errors = read_errors(run_dir)
        if errors:
            last = errors[-1]
            raise SystemExit(
                f"training of {variant}/{run} failed {len(errors)} time(s); last error "
                f"(attempt {last.get('attempt')}, exit {last.get('exit_code')}): {last.get('error')}"
                f"{'; see ' + log_path if log_path else ''}"
            )
        raise SystemExit(
            f"training of {variant}/{run} did not complete: {done_path} is missing"
            f"{'; see ' + log_path if log_path else ''}"
        )
    done = json.loads(done_path.read_text())
    marker = {
        "variant": variant,
        "run": run,
        "run_dir": str(run_dir),
        **{k: done.get(k) for k in ("status", "total_steps", "steps_done", "fingerprint", "completed_at")},
        "attempts": len(done.get("attempts") or []),
        "slurm_jobs": sorted({str(a.get("slurm_job_id")) for a in done.get("attempts") or [] if a.get("slurm_job_id")}),
    }
    write_json(marker, output, indent=2, strict=False)
    return marker


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--pack", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--work-root", default="work")
    ap.add_argument("--attempt", type=int, default=1)
    ap.add_argument("--runs", help="comma-separated run ids the pack must hold (a consistency check)")
    ap.add_argument(
        "--max-error-attempts",
        type=int,
        default=3,
        help="a run that failed this many times (or twice with the same error) is given up",
    )
    ap.add_argument(
        "--measured",
        default=None,
        help="the probe's plan (runs_per_gpu.json; '{variant}' is replaced): the GPU model it measured on "
        "and whether it chose MPS. Omitted when N is fixed",
    )
    ap.add_argument("--gpu-mismatch", choices=["fail", "warn"], default="fail")
    ap.add_argument(
        "--mps",
        choices=list(MPS.MPS_SETTINGS),
        default="off",
        help="packing.mps: start a per-job MPS daemon (on), not (off), or as the probe chose (auto)",
    )
    ap.add_argument(
        "--backoff-base",
        type=float,
        default=0.0,
        help="seconds; 0 = none (on SLURM the profile delays retries with sbatch --begin instead)",
    )
    ap.add_argument("--backoff-cap", type=float, default=600.0)
    ap.add_argument(
        "--run-control",
        default="{}",
        help="JSON: variant -> the run-control overrides now configured for its runs, passed after each "
        "run's planned overrides (before the positional ones), so the current values win",
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_time_s=3300)")
    a = ap.parse_args(argv)
    try:
        run_control = json.loads(a.run_control)
        control = run_control.get(a.variant, []) if isinstance(run_control, dict) else None
    except json.JSONDecodeError:
        control = None
    if not (isinstance(control, list) and all(isinstance(o, str) for o in control)):
        ap.error(f"--run-control: not a JSON object of override lists by variant: {a.run_control!r}")
    return launch_pack(
        plan_path=a.plan,
        pack=a.pack,
        variant=a.variant,
        output=a.output,
        log_dir=a.log_dir,
        work_root=a.work_root,
        attempt=a.attempt,
        backoff_base=a.backoff_base,
        backoff_cap=a.backoff_cap,
        extra_overrides=[*control, *a.overrides],
        expect_runs=a.runs.split(",") if a.runs else None,
        max_error_attempts=a.max_error_attempts,
        measured_plan=a.measured,
        gpu_mismatch=a.gpu_mismatch,
        mps=a.mps,
    )


if __name__ == "__main__":
    sys.exit(main())
