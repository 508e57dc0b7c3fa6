"""Stable packs, the resource contract and the launcher's retry bookkeeping (no training)."""

import json
import time

import pytest

from loss_slope.probe import plan as P
from loss_slope.study import resources as R
from loss_slope.train import pack as L


def test_packs_are_stable_and_append_only():
    runs = [f"r{i}" for i in range(5)]
    first = P.make_packs(runs, 2)
    assert list(first.values()) == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert all(name == P.pack_name(m) for name, m in first.items())
    grown = P.extend_packs(first, runs + ["r5", "r6"], 2)
    for name, members in first.items():
        assert grown[name] == members  # existing packs keep their members (even the partial one)
    new = {k: v for k, v in grown.items() if k not in first}
    assert list(new.values()) == [["r5", "r6"]] and list(new) == [P.pack_name(["r5", "r6"])]
    # a larger N later: old packs unchanged, new runs in packs of the new N
    assert P.extend_packs(first, runs + ["r5", "r6", "r7"], 3)[P.pack_name(["r5", "r6", "r7"])]
    # a removed run leaves its pack; an emptied pack disappears
    shrunk = P.extend_packs(first, ["r0", "r2", "r3"], 2)
    assert list(shrunk.values()) == [["r0"], ["r2", "r3"]]
    assert P.extend_packs(first, runs, 2) == first  # idempotent
    assert P.extend_packs({"pack000": ["r0", "r1"]}, ["r0", "r1", "r2"], 2)["pack000"] == ["r0", "r1"]


def test_settings_digest_ignores_the_data_location():
    a = ["experiment=s_core", "data.root=/home/x/cifar", "seed=0"]
    b = ["experiment=s_core", "data.root=/scratch/cifar", "seed=0"]
    assert P.run_settings_digest(a) == P.run_settings_digest(b)
    assert P.run_settings_digest(a) != P.run_settings_digest(a[:-1] + ["seed=1"])


def test_settings_digest_ignores_run_control_as_the_fingerprint_does():
    from loss_slope.study.run_control import is_run_control

    a = ["experiment=s_core", "trainer.threads=1", "trainer.flush_every_steps=44", "seed=0"]
    b = ["experiment=s_core", "trainer.threads=6", "trainer.flush_every_steps=391", "seed=0"]
    assert P.run_settings_digest(a) == P.run_settings_digest(b)
    assert P.run_settings_digest(a) == P.run_settings_digest([*a, "trainer.accelerator=cpu", "+trainer.fault.x=1"])
    assert P.run_settings_digest(a) != P.run_settings_digest([*a, "trainer.gradient_clip_val=1.0"])
    assert P.run_settings_digest(a) != P.run_settings_digest([*a, "data.simulation.h2.rho_cell=0"])
    assert P.run_settings_digest(a) == P.run_settings_digest([*a, "data.simulation.fsync=true"])
    assert [is_run_control(o) for o in ("trainer.epochs=2", "data.batch_size=64", "~trainer.checkpoint", "data")] == [
        False,
        False,
        True,
        False,
    ]


def test_a_variant_s_own_run_control_comes_after_the_study_s_and_sets_its_cpus():
    """As in its runs' planned overrides (build_runs): the variant's value wins, Hydra taking the last."""
    from loss_slope.study.config import validate_config
    from loss_slope.study.runs import build_runs, run_control_overrides, run_threads

    config = validate_config(
        {
            "training": {"threads": 1, "flush_every_steps": 44, "hydra_overrides": ["trainer.log_every_steps=5"]},
            "variants": {
                "A": {"experiment": "s_core"},
                "B": {"experiment": "s_narrow", "hydra_overrides": ["trainer.threads=3", "model.base_width=4"]},
            },
            "grid": {"lr": [0.1], "weight_decay": [0.0], "seed": [0]},
        }
    )
    shared = ["trainer.threads=1", "trainer.flush_every_steps=44", "trainer.log_every_steps=5"]
    assert run_control_overrides(config) == shared == run_control_overrides(config, "A")
    assert run_control_overrides(config, "B") == [*shared, "trainer.threads=3"]
    (b,) = [r for r in build_runs(config) if r.variant == "B"]
    planned = [o for o in b.overrides if o.startswith("trainer.threads=")]
    assert planned[-1] == "trainer.threads=3"  # what the pack then passes last is what the run was planned with
    assert (run_threads(config, "A"), run_threads(config, "B")) == (1, 3)


def test_the_pack_command_takes_its_variant_s_run_control_before_its_own_overrides(monkeypatch):
    seen = {}
    monkeypatch.setattr(L, "launch_pack", lambda **kw: seen.update(kw) or 0)
    args = ["--plan", "p.json", "--pack", "pack0", "--variant", "B", "--output", "o", "--log-dir", "l"]
    control = json.dumps({"A": ["trainer.threads=1"], "B": ["trainer.threads=1", "trainer.threads=3"]})
    assert L.main([*args, "--run-control", control, "trainer.max_time_s=60"]) == 0
    assert seen["extra_overrides"] == ["trainer.threads=1", "trainer.threads=3", "trainer.max_time_s=60"]
    assert L.main([*args, "trainer.max_time_s=60"]) == 0  # none given: none passed
    assert seen["extra_overrides"] == ["trainer.max_time_s=60"]
    for bad in ("[1]", "{not json", '{"B": "trainer.threads=1"}'):
        with pytest.raises(SystemExit) as exc:
            L.main([*args, "--run-control", bad])
        assert exc.value.code == 2


def test_the_pack_s_time_budget_is_the_last_one_given_as_hydra_reads_it():
    assert L._budget(["trainer.max_time_s=100", "seed=0", "trainer.max_time_s=3300"]) == 3300.0
    assert L._budget(["seed=0"]) is None
    assert L._budget(["trainer.max_time_s=100", "trainer.max_time_s=null"]) is None
    assert L._budget(["++trainer.max_time_s=50"]) == 50.0


def test_the_last_value_of_an_override_is_the_one_hydra_composes():
    from loss_slope.probe.capacity import pack_cpu_set
    from loss_slope.study.run_control import last_value

    key = "trainer.threads"
    assert last_value(["trainer.threads=1", "seed=0", "+trainer.threads=4"], key) == "4"
    assert last_value(["trainer.threads=2", "~trainer.threads"], key) is None
    assert last_value(["trainer.threads_x=3", "trainer.thread=5", "seed=0"], key) is None
    assert last_value(["trainer.threads = 3"], key) == "3"
    # the probe's level pins k x the last threads value of this job's CPUs
    assert pack_cpu_set(2, ["trainer.threads=1", "++trainer.threads=3"], available=range(8)) == list(range(6))
    assert pack_cpu_set(2, ["seed=0"], available=range(8)) == [0, 1]


def test_planned_packs_need_no_n():
    previous = {"pack-a": ["r0", "r1"], "pack-b": ["r2", "r3"]}
    # the runs still in the config keep their packs, whatever N is now; runs in none wait for N
    assert P.kept_packs(previous, ["r0", "r1", "r3", "r9"]) == {"pack-a": ["r0", "r1"], "pack-b": ["r3"]}
    assert P.kept_packs(previous, ["r9"]) == {}
    for n in (1, 2, 5):
        grown = P.extend_packs(previous, ["r0", "r1", "r3", "r9"], n)
        assert {p: m for p, m in grown.items() if p in previous} == P.kept_packs(previous, ["r0", "r1", "r3", "r9"])


def test_a_pack_is_re_planned_only_for_what_it_still_trains():
    planned = [{"run": "r0", "settings": "d0"}, {"run": "r1", "settings": "d1"}, {"run": "r2", "settings": "d2"}]
    done = {"r1"}.__contains__
    key = P.pack_plan_key(planned, ["r0", "r1", "r2"], {"r0": "d0", "r1": "d1", "r2": "d2"}, done)
    assert key == "r0:d0,r1:d1,r2:d2"
    # r1 removed after it finished: the same key (no re-plan, no resubmission), wherever it was
    assert P.pack_plan_key(planned, ["r0", "r2"], {"r0": "d0", "r2": "d2"}, done) == key
    assert P.pack_plan_key(planned, ["r1", "r2"], {"r1": "d1", "r2": "d2"}, {"r0"}.__contains__) == key
    # r2 removed before it finished: the pack is re-planned without it
    assert P.pack_plan_key(planned, ["r0", "r1"], {"r0": "d0", "r1": "d1"}, done) == "r0:d0,r1:d1"
    # a run whose settings changed re-plans its pack
    assert P.pack_plan_key(planned, ["r0", "r1", "r2"], {"r0": "dX", "r1": "d1", "r2": "d2"}, done) != key


def test_the_registry_keeps_a_removed_run_listed(tmp_path):
    reg, spec = tmp_path / "packs.json", tmp_path / "spec.json"
    runs = [{"run": r, "overrides": [f"seed={r[1]}"]} for r in ("r0", "r1")]
    P.write_pack_spec(spec, reg, variant="V", pack="pack-a", runs=runs)
    P.write_pack_spec(spec, reg, variant="V", pack="pack-a", runs=[{"run": "r1", "overrides": ["seed=1", "x=1"]}])
    # the spec trains r1 only; the registry lists r0 as planned, in its place, so r0 added back returns to pack-a
    assert [m["run"] for m in json.loads(spec.read_text())["packs"]["pack-a"]] == ["r1"]
    assert P.membership(P.read_registry(reg)) == {"pack-a": ["r0", "r1"]}
    entries = P.read_registry(reg)["pack-a"]
    assert entries[0]["settings"] == P.run_settings_digest(["seed=0"]) and entries[0]["dropped"] is True
    assert "dropped" not in entries[1]
    assert entries[1]["settings"] == P.run_settings_digest(["seed=1", "x=1"])
    assert P.extend_packs(P.membership(P.read_registry(reg)), ["r0", "r1", "r2"], 2) == {
        "pack-a": ["r0", "r1"],
        P.pack_name(["r2"]): ["r2"],
    }


def test_pack_spec_registers_the_pack(tmp_path):
    reg = tmp_path / "packs.json"
    for pack, runs in (("pack-a", ["r0", "r1"]), ("pack-b", ["r2"])):
        P.write_pack_spec(
            tmp_path / "packs" / f"{pack}.json",
            reg,
            variant="V",
            pack=pack,
            runs=[{"run": r, "overrides": [f"seed={r[1]}"]} for r in runs],
        )
    assert P.membership(P.read_registry(reg)) == {"pack-a": ["r0", "r1"], "pack-b": ["r2"]}
    spec = json.loads((tmp_path / "packs" / "pack-a.json").read_text())
    assert spec["packs"]["pack-a"][1]["overrides"] == ["seed=1"]
    # only what the runs train: nothing measured, so a probe rerun leaves every spec as it is
    assert set(spec) == {"variant", "pack", "packs"}
    assert P.pack_of(json.loads(reg.read_text()), "r2") == "pack-b"  # the report reads the registry


def test_cpu_probe_refused_for_a_slurm_study(tmp_path):
    probe = tmp_path / "probe.json"
    probe.write_text(
        json.dumps(
            {
                "variant": "V",
                "device": "cpu",
                "on_cpu": True,
                "runs_per_gpu": 2,
                "levels": [{"k": 2, "step_ms": [100.0, 120.0]}],
            }
        )
    )
    out = P.plan_runs_per_gpu(tmp_path / "n.json", variant="V", n=None, source="probe", probe=probe)
    assert out["runs_per_gpu"] == 2 and out["step_s"] == pytest.approx(0.12)
    with pytest.raises(P.PlanError, match="not on a GPU"):
        P.check_plan(out, slurm=True)
    P.check_plan(out, slurm=False)  # a local study (or runs that ask for the CPU) may use it
    probe.write_text(
        json.dumps(
            {
                "variant": "V",
                "device": "cuda:0",
                "on_cpu": False,
                "gpu_name": "NVIDIA H100",
                "runs_per_gpu": 3,
                "levels": [{"k": 3, "step_ms": [50.0]}],
            }
        )
    )
    out = P.plan_runs_per_gpu(tmp_path / "n.json", variant="V", n=None, source="probe", probe=probe)
    assert out["gpu_name"] == "NVIDIA H100" and out["runs_per_gpu"] == 3
    P.check_plan(out, slurm=True)
    fixed = P.plan_runs_per_gpu(tmp_path / "n.json", variant="V", n=2, source="config")
    P.check_plan(fixed, slurm=True)  # a fixed N was measured nowhere


def _attempt(run_dir, job_attempt, status, start_step=0, t=None):
    """One attempt of a run as the trainer logs it (``status=None``: killed, no end record)."""
    from loss_slope.train.attempts import end_attempt, start_attempt

    log = run_dir / "attempts.jsonl"
    n = start_attempt(log, start_step=start_step, reason="resume", snakemake_attempt=str(job_attempt))
    if t is not None:  # the start time, for records of an older invocation
        lines = log.read_text().splitlines()
        lines[-1] = json.dumps({**json.loads(lines[-1]), "time": t})
        log.write_text("\n".join(lines) + "\n")
    if status is not None:
        end_attempt(log, attempt=n, end_step=start_step + 10, status=status)


def test_memory_grows_after_a_kill_or_an_error_not_after_a_time_budget_stop(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert R.memory_attempt([a, b], 1) == 1
    # attempts 1 and 2 of both runs stopped at the time budget (or by SIGTERM): attempt 3 asks for
    # the first attempt's memory
    for job in (1, 2):
        _attempt(a, job, "unfinished")
        _attempt(b, job, "preempted" if job == 2 else "unfinished")
    assert R.memory_attempt([a, b], 3) == 1
    assert R.pack_mem_mb(2, 6000, 2000, R.memory_attempt([a, b], 3)) == 14000
    # attempt 3: run a was killed (the job over its memory: no end record) while b finished
    _attempt(a, 3, None)
    _attempt(b, 3, "completed")
    assert R.memory_attempt([a, b], 4) == 2  # x 1.5, as a second attempt would
    _attempt(a, 4, "failed")
    assert R.memory_attempt([a, b], 5) == 3
    # an attempt no run recorded (the job died before a run started) counts as a failure
    assert R.memory_attempt([a, b], 6) == 4


def test_memory_attempt_reads_only_this_invocations_attempts(tmp_path):
    a = tmp_path / "a"
    _attempt(a, 1, None, t=1000.0)  # an older invocation: killed at its attempt 1 and 2
    _attempt(a, 2, None, t=1100.0)
    _attempt(a, 1, "unfinished", t=5000.0)  # this invocation (started at 4000): a time-budget stop
    assert R.memory_attempt([a], 2, since=4000.0) == 1
    assert R.memory_attempt([a], 3, since=4000.0) == 2  # attempt 2 left no record
    # without the start time, the falling attempt numbers end the trail at the older invocation
    b = tmp_path / "b"
    _attempt(b, 1, "unfinished")
    _attempt(b, 2, None)
    _attempt(b, 1, "unfinished")
    assert R.memory_attempt([b], 2) == 1
    # records without a Snakemake attempt (a run started by hand) count for nothing
    c = tmp_path / "c"
    from loss_slope.train.attempts import start_attempt

    start_attempt(c / "attempts.jsonl", start_step=0, reason="fresh")
    assert R.memory_attempt([c], 3) == 3


def _launcher(run_dir, event, job_attempt, **rec):
    """A pack launcher record of a run, as the launcher writes it."""
    from loss_slope.train.pack import _record

    _record(run_dir, event, attempt=job_attempt, **rec)


def test_memory_attempt_reads_the_launchers_records(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # attempt 1: run a was killed while it started (no record of its own; the launcher saw exit -9),
    # run b stopped at its time budget
    _launcher(a, "error", 1, exit_code=-9, error="(no output)")
    _attempt(b, 1, "unfinished")
    assert R.memory_attempt([a, b], 2) == 2
    # attempt 2: a only waited for another trainer's lock (no record of its own), b stopped again
    _launcher(a, "outcome", 2, status="locked", exit_code=4)
    _attempt(b, 2, "unfinished")
    _launcher(b, "outcome", 2, status="unfinished", exit_code=3)
    assert R.memory_attempt([a, b], 3) == 2  # attempt 2 was clean, attempt 1 was not
    # attempt 3: a given up before it (not started: says nothing), b complete
    _launcher(a, "outcome", 3, status="not_started", exit_code=1)
    _attempt(b, 3, "completed")
    assert R.memory_attempt([a, b], 4) == 2
    # an earlier invocation's launcher records do not count
    assert R.memory_attempt([a, b], 2, since=time.time() + 60) == 2  # nothing of this invocation: grows


def test_a_repeated_attempt_number_does_not_end_the_trail(tmp_path):
    """A requeued job (slurm-requeue) or a run its launcher restarted repeats a Snakemake attempt."""
    a = tmp_path / "a"
    _attempt(a, 1, "unfinished")
    _attempt(a, 2, "preempted")
    _attempt(a, 2, "unfinished")  # the same attempt, requeued
    assert R.memory_attempt([a], 3) == 1
    _attempt(a, 3, None)  # killed
    _attempt(a, 3, "unfinished")
    assert R.memory_attempt([a], 4) == 2


def test_resource_contract():
    assert R.pack_cpus(3, 2) == 6
    assert [R.pack_mem_mb(3, 6000, 2000, a) for a in (1, 2, 3, 4)] == [20000, 30000, 40000, 40000]
    # 19,550 steps at 0.5 s/step x 1.25 + 10 + 5 min = 219 min; capped; no step time: the cap
    assert R.pack_runtime_minutes(19550, 0.5, margin_min=10, cap_min=720) == 219
    assert R.pack_runtime_minutes(19550, 5.0, margin_min=10, cap_min=720) == 720
    assert R.pack_runtime_minutes(19550, None, margin_min=10, cap_min=720) == 720
    assert R.pack_runtime_minutes(0, 0.5, margin_min=10, cap_min=720) == 16


def test_steps_done_from_the_work_tree(tmp_path):
    assert R.steps_done(tmp_path / "none") == 0
    run = tmp_path / "r"
    run.mkdir()
    (run / "attempts.jsonl").write_text(
        '{"event": "start", "start_step": 0}\n{"event": "end", "end_step": 500, "status": "unfinished"}\n'
    )
    assert R.steps_done(run) == 500
    (run / "done.json").write_text('{"total_steps": 900}')
    assert R.steps_done(run) == 900
    # last trained under another settings digest (its start record): the trainer will set the tree
    # aside, nothing is done; records of attempts under the new digest that never trained (a run
    # locked out, or without its GPU, before it opened the tree) leave no start record
    starts = '{"event": "start", "start_step": 0, "settings": "old"}\n{"event": "start", "start_step": 400}\n'
    (run / "attempts.jsonl").write_text(starts + '{"event": "end", "end_step": 900, "status": "completed"}\n')
    (run / "launcher.jsonl").write_text('{"event": "outcome", "status": "locked"}\n')
    assert R.steps_done(run, settings="new") == 0
    assert R.steps_done(run, settings="old") == R.steps_done(run) == 900
    (run / "attempts.jsonl").write_text('{"event": "start", "start_step": 0}\n')  # started by hand: no digest
    assert R.steps_done(run, settings="new") == 900
    # start records that name no digest (an older version): the launcher's records that do
    (run / "launcher.jsonl").write_text('{"event": "error", "exit_code": 1, "error": "x", "settings": "old"}\n')
    assert R.steps_done(run, settings="new") == 0 and R.steps_done(run, settings="old") == 900


def test_error_bookkeeping_gives_up_on_repeated_errors(tmp_path):
    log = (
        "[2026-01-01 00:00:00,000][loss_slope.train][INFO] - resuming\nTraceback (most recent call last):\n"
        "  File x\nValueError: schedule: warm-up (220 steps) must be shorter than training (88 steps)\n\n"
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    )
    assert L.error_line(log).startswith("ValueError: schedule: warm-up")
    # an exception whose class name says neither Error nor Exception, below frames that do
    log = (
        "Error executing job with overrides: ['seed=0']\nTraceback (most recent call last):\n"
        '  File "lightning/pytorch/trainer/call.py", line 47, in _call_and_handle_interrupt\n'
        "    return trainer_fn(*args, **kwargs)\n           ^^^^^^^^^^^^^^^^^^^^\n"
        "torch._dynamo.exc.Unsupported: call_function UserDefinedClassVariable\n\n"
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    )
    assert L.error_line(log) == "torch._dynamo.exc.Unsupported: call_function UserDefinedClassVariable"
    # chained exceptions: the last one
    log = (
        "Traceback (most recent call last):\n  File a\nKeyError: 'x'\n\nThe above exception was the direct "
        "cause of the following exception:\n\nTraceback (most recent call last):\n  File b\nStopIteration\n"
    )
    assert L.error_line(log) == "StopIteration"
    # an error logged after a traceback (one the run survived) is the run's error
    assert L.error_line(log + "[t][loss_slope.train][ERROR] - run failed: micro-batch 1 too small\n") == (
        "run failed: micro-batch 1 too small"
    )
    e = lambda err, code=1: {"event": "error", "error": err, "exit_code": code}  # noqa: E731
    assert L.given_up([e("A")], 3) is None
    assert L.given_up([e("A"), e("B")], 3) is None
    assert "same error" in L.given_up([e("B"), e("A"), e("A")], 5)
    assert "3 times" in L.given_up([e("A"), e("B"), e("C")], 3)
    # two kills by the host's out-of-memory killer: the next attempt asks for more memory
    kill = L.killed_by(-9)
    assert kill.startswith("killed by SIGKILL") and "out-of-memory" in kill
    assert L.given_up([e(kill, -9), e(kill, -9)], 3) is None
    assert "3 times" in L.given_up([e(kill, -9)] * 3, 3)


def test_the_same_error_counts_twice_in_a_row_only_without_an_attempt_between(tmp_path):
    from loss_slope.train.attempts import append_record

    run = tmp_path / "r"
    run.mkdir()

    def rec(event, **kw):
        append_record(run / "launcher.jsonl", {"event": event, **kw})

    rec("error", attempt=1, exit_code=1, error="ValueError: x", settings="s")
    rec("outcome", attempt=1, status="failed")
    rec("outcome", attempt=2, status="unfinished")  # an attempt that trained on, stopped by its budget
    rec("error", attempt=3, exit_code=1, error="ValueError: x", settings="s")
    errors = L.read_errors(run, "s")
    assert [x["after_progress"] for x in errors] == [False, True]
    assert L.given_up(errors, 5) is None
    rec("outcome", attempt=3, status="failed")
    rec("error", attempt=4, exit_code=1, error="ValueError: x", settings="s")
    assert "same error" in L.given_up(L.read_errors(run, "s"), 5)


def test_run_marker_reports_the_error_of_a_given_up_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "launcher.jsonl").write_text(
        json.dumps({"event": "error", "attempt": 2, "exit_code": 1, "error": "ValueError: boom"}) + "\n"
    )
    with pytest.raises(SystemExit, match="ValueError: boom"):
        L.write_run_marker(run, tmp_path / "m.json", variant="V", run="r")
    (run / "done.json").write_text(
        json.dumps({"status": "complete", "total_steps": 10, "attempts": [{"slurm_job_id": "7"}]})
    )
    m = L.write_run_marker(run, tmp_path / "m.json", variant="V", run="r")
    assert m["status"] == "complete" and m["slurm_jobs"] == ["7"]


def test_probe_levels_carry_host_memory_and_the_plan_uses_it():
    from loss_slope.probe.capacity import level_from_workers

    workers = [
        {
            "oom": False,
            "samples_per_s": 100.0,
            "seconds": 2.0,
            "step_ms": 10.0,
            "peak_mem_mb": 900.0,
            "peak_rss_mb": rss,
        }
        for rss in (2100.0, 2300.0)
    ]
    level = level_from_workers(2, workers, [], [])
    assert level.host_rss_mb == [2100.0, 2300.0] and level.aggregate_samples_per_s == pytest.approx(200.0)
    probe = {
        "gpu_name": "A100",
        "on_cpu": False,
        "levels": [{"k": 2, "step_ms": [10.0, 12.0], "host_rss_mb": level.host_rss_mb}],
    }
    measured = P.measured_from_probe(probe, 2)
    assert measured["host_mem_mb_per_run"] == 2300.0 and measured["step_s"] == pytest.approx(0.012)
    # a pack planned with another N is sized from the step time the probe measured at its size
    ran = {"aggregate_samples_per_s": 100.0}  # every worker of the level ran
    probe["levels"] = [
        {"k": 1, "step_ms": [8.0], **ran},
        {**probe["levels"][0], **ran},
        {"k": 3, "step_ms": [30.0, 31.0, 33.0], **ran},
        {"k": 4, "oom": True, "step_ms": [50.0], "aggregate_samples_per_s": None},  # 3 of 4 ran out of memory
    ]
    measured = P.measured_from_probe(probe, 2)
    assert measured["step_s_by_k"] == pytest.approx({"1": 0.008, "2": 0.012, "3": 0.033})
    assert [R.pack_step_seconds(measured, k) for k in (1, 2, 3)] == pytest.approx([0.008, 0.012, 0.033])
    assert R.pack_step_seconds(measured, 4) == pytest.approx(0.012)  # not measured: N's
    assert R.pack_step_seconds({"step_s": 0.5}, 3) == 0.5  # a plan written before step_s_by_k
