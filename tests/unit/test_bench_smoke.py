"""The benchmark scripts still run (tiny sizes; no timing is asserted)."""

import pytest

from _util import PYTHON, REPO, run_cmd


@pytest.mark.parametrize(
    "args",
    [
        ["bench/bench_parquet.py", "--runs", "2", "--rows", "300"],
        ["bench/bench_recorder.py", "--steps", "12", "--repeats", "1"],
    ],
)
def test_bench_script_runs(args, tmp_path):
    md = tmp_path / "out.md"
    run_cmd([PYTHON, REPO / args[0], *args[1:], "--markdown", md], cwd=REPO, timeout=300)
    text = md.read_text()
    assert "| " in text and ("ratio" in text or "speed-up" in text)


LOG = """Assuming unrestricted shared filesystem usage.
  Date: 2026-12-03 10:00:00
Select jobs to execute...
[Thu Dec  3 10:00:02 2026]
localrule train_pack:
    jobid: 5
    threads: 2
    wildcards: variant=V, pack=pack-x
[Thu Dec  3 10:00:12 2026]
Finished jobid: 5 (Rule: train_pack)
[Thu Dec  3 10:00:12 2026]
localrule fit_run:
    jobid: 7
    wildcards: variant=V, run=r0
[Thu Dec  3 10:00:14 2026]
Finished jobid: 7 (Rule: fit_run)
"""


def test_demo_overhead_breakdown_adds_up_to_the_wall_time(tmp_path, monkeypatch):
    """bench_demo_overhead: jobs from the Snakemake log, each run's start-up / loop / bare steps from its
    work tree; the rows (core-seconds / cores) add up to the wall time."""
    import importlib.util
    import json
    import sys
    import time

    spec = importlib.util.spec_from_file_location("bench_demo_overhead", REPO / "bench" / "bench_demo_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_demo_overhead", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    (tmp_path / ".snakemake" / "log" / "2026-12-03T100000.snakemake.log").write_text(LOG)
    began, jobs = bench.parse_log(LOG)
    assert [(j.rule, j.threads, j.seconds, j.wildcards) for j in jobs] == [
        ("train_pack", 2, 10.0, {"variant": "V", "pack": "pack-x"}),
        ("fit_run", 1, 2.0, {"variant": "V", "run": "r0"}),
    ]
    t0 = time.mktime(time.strptime("2026-12-03 10:00:02", "%Y-%m-%d %H:%M:%S"))
    (tmp_path / "results" / "packs" / "V").mkdir(parents=True)
    (tmp_path / "results" / "packs" / "V" / "pack-x.json").write_text(json.dumps({"runs": {"r0": {}, "r1": {}}}))
    for run, end in (("r0", 9.0), ("r1", 7.0)):
        d = tmp_path / "work" / "V" / run
        (d / "tables").mkdir(parents=True)
        att = [{"event": "start", "time": t0 + 1.5}, {"event": "end", "time": t0 + end}]
        (d / "attempts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in att))
        rows = [f"{s},0,{t0 + 2 + s * 0.5},0.1" for s in range(11)]  # 11 steps from t0+2 to t0+7
        (d / "tables" / "steps.csv").write_text("step,epoch,time,lr\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(bench, "_load_demo_config", lambda workdir: {})
    v = {"step_s": 0.2, "runs": 2, "steps_per_run": 11, "batch_draw_s": 0.001, "bare_s": 4.4}
    bare = {"variants": {"V": v}, "bare_s": 5.0, "bare_serial_s": 10.0}
    out = bench.breakdown(tmp_path, bare, cores=2)
    assert out["wall_s"] == 14.0 and out["ratio"] == 14.0 / 5.0 and out["runs"] == 2
    rows = out["rows"]
    assert rows["train: bare steps"] == 2 * 11 * 0.2 / 2
    assert rows["train: run start-up (pack start -> first step)"] == 2 * 2.0 / 2
    assert abs(sum(rows.values()) - 14.0) < 1e-9
    assert "| **total** | **14** |" in bench.markdown({**bare, "cores": 2, "slots": 2}, out)


def test_checkpoint_bytes_benchmark_counts_the_files_of_each_cadence(tmp_path):
    """One epoch, 4 validations: a latest file after each of them before, one now; the record of each
    run counts every file of its checkpoints table."""
    md = tmp_path / "out.md"
    run_cmd(
        [PYTHON, REPO / "bench/bench_checkpoints.py", "--epochs", "1", "--base-width", "4", "--markdown", md],
        cwd=REPO,
        timeout=600,
    )
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.read_text().splitlines()
        if line.startswith("| S-")
    ]
    runs = {(r[0], r[1].split(":")[0]): r for r in rows if len(r) == 7}
    for variant in ("S-core", "S-adamw"):
        before, now = runs[(variant, "before")], runs[(variant, "now")]
        assert int(before[4]) == 4 and int(now[4]) == 1  # latest files
        assert int(before[2]) - int(now[2]) == 3  # the same best files
        assert float(before[3]) > float(now[3]) > 0
    assert float(runs[("S-adamw", "now")][5]) > float(runs[("S-core", "now")][5])  # AdamW keeps two moments
    totals = {r[0]: r for r in rows if len(r) == 6}
    assert set(totals) == {"S-core", "S-adamw"}


def test_probe_against_run_bench_prints_the_ratio(tmp_path):
    """bench_probe_vs_run: the probe's level k = 1 and a real run of the demo's variant, one row each
    with the ratio of their steps/s (no timing asserted: only that the figures are there and agree)."""
    md = tmp_path / "out.md"
    run_cmd(
        [
            PYTHON,
            REPO / "bench/bench_probe_vs_run.py",
            "--variants",
            "S-narrow",
            "--epochs",
            "2",
            "--repeats",
            "1",
            "--markdown",
            md,
        ],
        cwd=REPO,
        timeout=600,
    )
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.read_text().splitlines()]
    (row,) = [r for r in rows if r[0] == "S-narrow"]
    probe_ms, run_ms, ratio = float(row[1]), float(row[2]), float(row[3])
    assert probe_ms > 0 and run_ms > 0 and row[4] in ("yes", "no")
    assert ratio == pytest.approx(run_ms / probe_ms, abs=0.02)
