"""bench/gpu_check.sh: the CPU switch runs it end to end; without a GPU and without the switch it exits 2."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch

from _util import PYTHON, REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row, separator rows left out."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _num(cell: str) -> float:
    """The leading number of a cell such as '171 (168–173)' or '1.32'."""
    m = re.match(r"[-+]?\d+(\.\d+)?", cell)
    assert m, f"no number in {cell!r}"
    return float(m.group())


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_DEVICE"}
    return {**env, "PYTHON": PYTHON, **extra}


def _run(tmp_path, *args, timeout=300):
    md = tmp_path / "gpu_check.md"
    proc = subprocess.run(
        ["bash", str(SCRIPT), *map(str, args), "--markdown", str(md)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = md.read_text()
    assert text in proc.stdout  # printed as well
    return text


def _check_report(text: str, *, max_n: int, cpu: bool) -> None:
    assert ("CPU smoke run" in text) == cpu
    assert ("(peak reserved + CUDA context)" in text) == (not cpu)
    rows = _rows(text)
    by_key = {r[0]: r for r in rows if len(r) == 2}
    assert by_key["torch"][1].startswith(("2.", "3."))
    assert re.match(r"\d{4}-\d{2}-\d{2}", by_key["date"][1])
    assert "GPU" in by_key

    # variant, k, MPS, total, per process, memory, gain, util, OOM; on the CPU never under MPS
    probe = {(r[0], r[1], r[2]): r for r in rows if len(r) == 9 and r[0] in ("S-core", "S-narrow")}
    assert all(key[2] == "no" for key in probe) or not cpu
    for variant in ("S-core", "S-narrow"):
        for k in range(1, max_n + 1):
            r = probe[(variant, str(k), "no")]
            total, per, mem = _num(r[3]), _num(r[4]), _num(r[5])
            assert total > 0 and per > 0 and mem > 0, r
            assert per <= total * 1.01, r
            assert len(r[5].split(",")) == k  # one peak per process
            assert r[8] == "no"
        assert _num(probe[(variant, "1", "no")][6]) == pytest.approx(1.0)

    chosen = {r[0]: r for r in rows if len(r) == 5 and r[0] in ("S-core", "S-narrow")}
    for variant in ("S-core", "S-narrow"):
        n, mps, gain = int(chosen[variant][1]), chosen[variant][2], _num(chosen[variant][3])
        assert 1 <= n <= max_n
        # the gain is the table's own figures: total at N over total at k=1
        expect = _num(probe[(variant, str(n), "yes" if n > 1 and mps == "yes" else "no")][3]) / _num(
            probe[(variant, "1", "no")][3]
        )
        assert gain > 0 and gain == pytest.approx(expect, rel=0.02, abs=0.01)

    fast = next(r for r in rows if r[0].startswith("fast path"))
    plain = next(r for r in rows if r[0].startswith("plain DataLoader"))
    assert _num(fast[1]) > 0 and _num(plain[1]) > 0
    assert _num(fast[2]) == pytest.approx(1.0)
    ratio = float(re.search(r"throughput ratio: \*\*([\d.]+)\*\*", text).group(1))
    assert ratio == pytest.approx(_num(fast[1]) / _num(plain[1]), rel=0.02)
    if not cpu:
        assert _num(fast[3]) > 0 and _num(plain[3]) > 0  # peak MiB

    opt_in = {
        r[0]: r
        for r in rows
        if r[0] in ("fp32 (as trained)", "channels_last", "bf16 autocast", "channels_last + bf16 autocast")
    }
    assert len(opt_in) == 4
    for label in ("channels_last", "bf16 autocast", "channels_last + bf16 autocast"):
        assert "changes numerics" in opt_in[label][4]
        if cpu and label.startswith("channels_last"):  # a CUDA option: never run on the CPU
            assert "left out on the CPU" in opt_in[label][4] and opt_in[label][1] == "—"
            continue
        if "not supported" not in opt_in[label][4]:
            assert _num(opt_in[label][1]) > 0
    assert "changes numerics" not in opt_in["fp32 (as trained)"][4]

    # the real training loop: a complete one-epoch run and its checkpoints
    real = text.split("## The real training loop", 1)[1]
    assert "exit code 0" in real
    files, mb = (float(x) for x in by_key["files, MB written"][1].split(","))
    assert files >= 2 and mb > 0  # at least the epoch's latest and one best
    assert _num(by_key["`latest` file"][1]) > 0
    # the probe's k = 1 step time against the run's: steps/s probe / run
    probe_ms, run_ms, ratio = re.search(
        r"([\d.]+) ms per step against ([\d.]+) ms; steps/s probe / run = \*\*([\d.]+)\*\*", real
    ).groups()
    assert float(ratio) == pytest.approx(float(run_ms) / float(probe_ms), rel=0.02) and float(ratio) > 0
    if cpu:
        assert "not counted on the CPU" in real
    else:
        assert "| window |" in real and "outside validations" in real


@pytest.mark.slow
def test_cpu_smoke_run_writes_the_table(tmp_path):
    text = _run(
        tmp_path,
        "--device",
        "cpu",
        "--steps",
        3,
        "--warmup",
        1,
        "--max-n",
        2,
        "--batch-size",
        16,
        "--base-width",
        4,
        "--train-size",
        256,
        "--val-size",
        64,
        "--num-workers",
        1,
        "--repeats",
        1,
        "--budget-s",
        0,
    )
    _check_report(text, max_n=2, cpu=True)
    assert "num_workers=1" in text
    assert "## GPU-only tests\n\nNot run (a CPU smoke run" in text
    assert "## The monitors at the study's model and batch\n\nNot run (a CPU smoke run" in text


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_short_gpu_run_writes_the_table(tmp_path):
    text = _run(
        tmp_path,
        "--steps",
        30,
        "--warmup",
        5,
        "--max-n",
        2,
        "--repeats",
        1,
        "--train-size",
        5000,
        "--val-size",
        1000,
        "--no-tests",  # the check runs the GPU-only tests, this one among them: not again from here
        timeout=600,
    )
    _check_report(text, max_n=2, cpu=False)


def test_cpu_timing_leaves_channels_last_out():
    """channels_last is never run on the CPU (oneDNN heap corruption on AVX2-only CPUs): no model is built."""
    gc = _gpu_check()
    t = gc.train_timed(None, [], torch.device("cpu"), steps=1, warmup=0, channels_last=True)
    assert t.samples_per_s is None and t.note == gc.CPU_CHANNELS_LAST_NOTE


def test_without_cuda_and_without_switch_exits_2(tmp_path):
    md = tmp_path / "gpu_check.md"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--markdown", str(md)],
        cwd=tmp_path,
        env=_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA GPU is visible" in proc.stderr
    assert "--device cpu" in proc.stderr and "GPU_CHECK_DEVICE=cpu" in proc.stderr
    assert not md.exists()


def test_device_choice():
    g = _gpu_check()
    assert g.resolve_device("cpu", environ={}) == "cpu"
    assert g.resolve_device(None, environ={"GPU_CHECK_DEVICE": "CPU"}) == "cpu"
    with pytest.raises(ValueError):
        g.resolve_device(None, environ={"GPU_CHECK_DEVICE": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(g.NoGpu):
            g.resolve_device(None, environ={})


def test_budget_shrinks_steps_only_when_the_projection_overruns():
    g = _gpu_check()
    worker = {"step_ms": 100.0, "seconds": 30.0}  # 300 steps of 100 ms
    kw = dict(steps=300, warmup=20, min_steps=30, max_n=4, n_variants=2, repeats=2, opt_in=True)
    now = time.perf_counter()
    slow = g.Budget(budget_s=420, t_start=now - 40, **kw)
    new = slow(1, None, [worker], 40.0)
    assert new is not None and 30 <= new < 300 and slow.steps == new and "budget" in slow.note
    assert slow(1, None, [worker], 40.0) is None  # decided once

    fast = g.Budget(budget_s=420, t_start=now - 5, **kw)
    assert fast(1, None, [{"step_ms": 5.0, "seconds": 1.5}], 5.0) is None and fast.steps == 300

    off = g.Budget(budget_s=0, t_start=now - 40, **kw)
    assert off(1, None, [worker], 40.0) is None and off.steps == 300


@pytest.mark.filterwarnings("ignore:an unrelated warning")
def test_sync_counter_puts_each_sync_in_its_part_and_quarter_epoch_window():
    """Known answer: syncs raised (as torch's sync debug mode raises them: a warning while the caller's
    frames are live) from a training step, a validation and the recorder inside Lightning's loops, and
    from the set-up and teardown around them (the trainer exists there too: model moved to the device)."""
    g = _gpu_check()
    modes = []
    ns = {"warnings": warnings, "MSG": g.SYNC_MESSAGE}
    for name, where in (
        ("training_step(self)", "/site/loss_slope/train/module.py"),
        ("validation_step(self)", "/site/loss_slope/train/module.py"),
        ("flush(trainer)", "/site/loss_slope/train/recorder.py"),
        ("model_to_device(trainer)", "/site/pytorch_lightning/strategies/strategy.py"),
    ):
        exec(compile(f"def {name}:\n    warnings.warn(MSG)\n", where, "exec"), ns)
    # Lightning's loop: what it calls runs inside the training loop
    exec(compile("def run(fn, *args):\n    fn(*args)\n", "/site/pytorch_lightning/loops/fit_loop.py", "exec"), ns)
    loop = ns["run"]
    counter = g.SyncCounter(enabled=True, set_mode=modes.append)
    with counter:
        trainer = types.SimpleNamespace(global_step=0, fit_loop=object())
        ns["model_to_device"](trainer)  # set-up: before the loop
        warnings.warn("an unrelated warning", stacklevel=1)  # passed on, not counted
        module = types.SimpleNamespace(trainer=trainer)
        for done in range(8):  # validations every 4 steps
            trainer.global_step = done
            loop(ns["training_step"], module)
            trainer.global_step = done + 1
            if (done + 1) % 4 == 0:
                loop(ns["validation_step"], module)
        loop(ns["flush"], trainer)  # after step 8: window 1
        ns["model_to_device"](trainer)  # teardown: after the loop

        class Unattached:  # a LightningModule without a trainer raises on .trainer
            @property
            def trainer(self):
                raise RuntimeError("not attached to a Trainer")

        loop(ns["training_step"], Unattached())  # counted, and never raises into the torch call
    assert modes == ["warn", "default"]
    assert counter.by_window(4) == {
        "outside": {"outside": 2},
        0: {"step": 4, "validation": 1},
        1: {"step": 4, "validation": 1, "recorder": 1},
        2: {"step": 1},  # the unattached module's step: the trainer further out on the stack says step 8
    }
    places = dict(counter.places)
    assert places["loss_slope/train/module.py:2 training_step"] == 9
    assert places["loss_slope/train/recorder.py:2 flush"] == 1
    assert places["pytorch_lightning/strategies/strategy.py:2 model_to_device"] == 2
    assert sum(places.values()) == 14  # 2 outside the loop, 9 steps, 2 validations, 1 flush


def test_a_sync_whose_frames_cannot_be_read_is_counted_unattributed():
    g = _gpu_check()
    counter = g.SyncCounter(enabled=False)
    counter.record(object())  # not a frame
    assert counter.by_window(4) == {"outside": {"unattributed": 1}}


def test_probe_rows_say_which_levels_ran_under_mps():
    g = _gpu_check()
    lv = [{"k": k, "aggregate_samples_per_s": 100.0 * k} for k in (1, 2, 3)]
    # `on`: every level under a daemon, as probe_variant saw them
    rows = g.probe_rows({"levels": lv, "mps_compared": None, "under_mps": {1: True, 2: True, 3: True}})
    assert [(r["k"], u) for r, u in rows] == [(1, True), (2, True), (3, True)]
    # a setting that fell back (no control tool): nothing ran under a daemon
    assert [u for _, u in g.probe_rows({"levels": lv, "mps_compared": None, "under_mps": {}})] == [False] * 3
    # `auto`: the set without, then k = 2.. with
    compared = {"without": {"levels": lv}, "with": {"levels": lv}}
    rows = g.probe_rows({"levels": lv, "mps_compared": compared})
    assert [(r["k"], u) for r, u in rows] == [(1, False), (2, False), (3, False), (2, True), (3, True)]


def test_the_gpu_tests_are_killed_with_their_children_on_a_timeout(tmp_path, monkeypatch):
    g = _gpu_check()
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
        "print('FAILED tests/x.py::test_a', flush=True)\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setattr(g, "gpu_tests_command", lambda python=sys.executable: [python, "-c", script])
    res = g.run_gpu_tests(timeout=3)
    assert res["exit_code"] is None and res["failed"] == ["tests/x.py::test_a"]
    child = int(pid_file.read_text())
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a killed child stays a zombie until its parent (killed too) is reaped by init
        if Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the test's child process {child} outlived the timeout")


def test_a_failed_real_loop_run_is_reported_not_raised(tmp_path):
    g = _gpu_check()
    real = g.real_loop_run(
        ["experiment=s_core", "data=cifar10", f"data.root={tmp_path / 'missing'}", "trainer.accelerator=cpu"],
        tmp_path / "run",
        device_kind="cpu",
    )
    assert real["exit_code"] != 0 and real["error"]
    text = "\n".join(g._real_loop_markdown(real, cpu=True, first="S-core"))
    assert "**Failed**" in text and real["error"] in text


def test_sync_phase_reads_the_innermost_frame_that_names_a_part():
    g = _gpu_check()
    torch_frame = ("/site/torch/_tensor.py", "item")
    assert g.sync_phase(
        [torch_frame, ("/site/loss_slope/metrics/curvature.py", "lanczos"), ("x", "training_step")]
    ) == ("monitors")
    assert g.sync_phase([torch_frame, ("/site/loss_slope/train/checkpoint_io.py", "host_snapshot")]) == "checkpoint"
    assert g.sync_phase([("/site/pytorch_lightning/loops/evaluation_loop.py", "run")]) == "validation"
    assert g.sync_phase([torch_frame, ("/site/loss_slope/data/loader.py", "__iter__")]) == "data"
    assert g.sync_phase([torch_frame]) == "other"


def test_gpu_tests_are_every_gpu_marked_test_but_this_scripts_own():
    g = _gpu_check()
    cmd = g.gpu_tests_command("py")
    assert cmd[:5] == ["py", "-m", "pytest", "-m", "gpu"] and cmd[-1] == "tests"
    assert cmd[cmd.index("--deselect") + 1] == g.SELF_TEST
    # the deselected test exists (a rename would make the check run itself)
    assert f"def {g.SELF_TEST.rsplit('::', 1)[1]}(" in Path(__file__).read_text()
    assert g.parse_pytest_summary("x\n== 7 passed, 1 skipped, 690 deselected in 41.20s ==\n") == {
        "passed": 7,
        "failed": 0,
        "errors": 0,
        "skipped": 1,
        "deselected": 690,
    }
    assert g.parse_pytest_summary("1 failed, 6 passed, 2 errors in 3.0s")["errors"] == 2
    assert g.parse_pytest_summary("timed out")["passed"] == 0


def _cuda_skip(node) -> bool:
    """``pytest.mark.skipif(..., reason="... CUDA ...")`` (not the inverse "without CUDA" skip)."""
    if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("mark.skipif")):
        return False
    reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
    text = reason.value.lower() if isinstance(reason, ast.Constant) and isinstance(reason.value, str) else ""
    return "cuda" in text and "without cuda" not in text


def _has_gpu_mark(nodes) -> bool:
    return any(ast.unparse(n).endswith("mark.gpu") for n in nodes)


def test_every_test_that_skips_without_cuda_is_marked_gpu():
    """The GPU check runs `pytest -m gpu`: a CUDA-only test without the marker would never run anywhere.
    Checked on the source (decorators and `pytest.param(..., marks=...)`), whatever this run selects."""
    unmarked = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(_cuda_skip(d) for d in node.decorator_list):
                if not _has_gpu_mark(node.decorator_list):
                    unmarked.append(f"{path.name}::{node.name}")
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("param"):
                marks = next((k.value for k in node.keywords if k.arg == "marks"), None)
                items = list(marks.elts) if isinstance(marks, (ast.List, ast.Tuple)) else [marks] if marks else []
                if any(_cuda_skip(m) for m in items) and not _has_gpu_mark(items):
                    unmarked.append(f"{path.name}:{node.lineno} pytest.param")
    assert not unmarked


def test_budget_plans_for_the_real_loop_run_and_only_the_levels_that_will_run():
    g = _gpu_check()
    # 320 window steps of 10 ms (the training loop: 16 ms per step); the level took 20 s with start-up
    worker = {"step_ms": 16.0, "window_step_ms": 10.0, "seconds": 3.2}
    kw = dict(steps=300, warmup=20, min_steps=30, n_variants=2, repeats=2, opt_in=True)
    now = time.perf_counter()
    # 4 levels per variant and 4 more under MPS: 15 levels of ~17 s start-up overrun 360 s
    with_mps = g.Budget(budget_s=360, t_start=now - 20, max_n=4, mps_levels=True, **kw)
    assert with_mps(1, None, [worker], 20.0) is not None
    # on an exclusive-process GPU the probe measures k = 1 only: nothing to shrink
    alone = g.Budget(budget_s=360, t_start=now - 20, max_n=1, mps_levels=False, **kw)
    assert alone(1, None, [worker], 20.0) is None
    # the same without MPS fits, until a long real-loop run is counted in
    plain = dict(budget_s=360, t_start=now - 20, max_n=4, mps_levels=False, **kw)
    assert g.Budget(**plain)(1, None, [worker], 20.0) is None
    assert g.Budget(**plain, real_steps=20_000)(1, None, [worker], 20.0) is not None  # 20,000 x 16 ms = 320 s
    # the real-loop run takes the training loop's step (16 ms), not the probe window's (10 ms)
    assert g.Budget(**plain, real_steps=8_000)(1, None, [worker], 20.0) is not None  # 128 s
    as_window = {**worker, "step_ms": 10.0}
    assert g.Budget(**plain, real_steps=8_000)(1, None, [as_window], 20.0) is None  # 80 s: it would fit


def test_budget_forgets_the_levels_a_probe_stopped_before():
    """An OOM at k = 1 ends that variant's probe: its other levels are not projected at the next check."""
    g = _gpu_check()
    kw = dict(steps=300, warmup=20, min_steps=30, max_n=4, repeats=2, opt_in=True, mps_levels=True)
    now = time.perf_counter()
    worker = {"step_ms": 10.0, "seconds": 3.2}
    two = g.Budget(budget_s=360, t_start=now - 20, n_variants=2, **kw)
    assert two(1, None, [{"oom": True}], 5.0) is None and not two.checked  # no figure: no check yet
    two.end_variant()
    one = g.Budget(budget_s=360, t_start=now - 20, n_variants=1, **kw)
    assert (two.levels_left, two.units_left) == (one.levels_left, one.units_left)
    assert two(1, None, [worker], 20.0) == one(1, None, [worker], 20.0)


def test_the_monitor_benchmark_runs_at_the_study_size_and_its_table_goes_into_the_report(tmp_path):
    g = _gpu_check()
    cmd = g.monitor_bench_command("cuda", tmp_path / "m.md", python="py")
    assert cmd[cmd.index("--base-width") + 1] == "64" and cmd[cmd.index("--batch-size") + 1] == "128"
    assert cmd[cmd.index("--device") + 1] == "cuda" and cmd[-2:] == ["--markdown", str(tmp_path / "m.md")]
    tiny = ["--base-width", "4", "--batch-size", "8", "--steps", "3", "--curvature-events", "1"]  # later options win
    res = g.run_monitor_bench("cpu", tmp_path / "m.md", extra=tiny)
    assert res["exit_code"] == 0 and "base_width=4" in res["text"]
    text = "\n".join(g._monitors_markdown(res, cpu=True))
    assert "## The monitors at the study's model and batch" in text and res["text"].strip() in text
    failed = g.run_monitor_bench("cpu", tmp_path / "m.md", extra=["--base-width", "not-a-number"])
    assert failed["exit_code"] != 0 and failed["text"] is None and not (tmp_path / "m.md").exists()
    assert "**failed**" in "\n".join(g._monitors_markdown(failed, cpu=False))
    assert "Not run (a CPU smoke run" in "\n".join(g._monitors_markdown(None, cpu=True))


def test_probe_against_run_leaves_out_the_curvature_a_short_run_never_reaches():
    g = _gpu_check()
    loop = {"step_ms": 30.0, "curvature_ms": 2.0, "curvature_every": 500}
    run = {"loop_from_step": 20, "loop_span_steps": 1000}
    short = g.probe_against_run({**run, "loop_step_ms": 26.0, "curvature_events": 0}, loop)
    assert short["probe_ms"] == 28.0 and short["ratio"] == pytest.approx(26.0 / 28.0)
    full = g.probe_against_run({**run, "loop_step_ms": 33.0, "curvature_events": 2}, loop)
    assert full["probe_ms"] == 30.0 and full["ratio"] == pytest.approx(1.1)
    half = g.probe_against_run({**run, "loop_step_ms": 29.0, "curvature_events": 1}, loop)  # 1 in 1,000 steps
    assert half["probe_ms"] == pytest.approx(29.0)
    assert g.probe_against_run({"loop_step_ms": None}, loop) is None and g.probe_against_run({}, None) is None


def test_run_loop_step_counts_the_events_between_its_first_and_last_timed_steps(tmp_path):
    """Known answer: 100 steps of 10 ms, from step 20 on; events after optimizer steps 50 and 100 —
    the first lies between table steps 49 and 50, the second after the last step (99)."""
    g = _gpu_check()
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "steps.csv").write_text("step,time\n" + "".join(f"{i},{0.01 * i}\n" for i in range(100)))
    (tables / "curvature.csv").write_text("step,lambda_max\n50,1.0\n100,1.0\n")
    span = g.run_loop_step(tmp_path)
    assert span["loop_from_step"] == 20 and span["loop_span_steps"] == 79
    assert span["loop_step_ms"] == pytest.approx(10.0) and span["curvature_events"] == 1
