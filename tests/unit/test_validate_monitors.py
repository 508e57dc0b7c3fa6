"""Monitor tables (curvature, noise, checkpoints): export, Parquet and validation on synthetic runs."""

import json
import math

import pyarrow.parquet as pq
import pytest

from loss_slope.tables.csvlog import CsvTable, truncate_table
from loss_slope.tables.export import export_run
from loss_slope.tables.parquet import convert_run
from loss_slope.tables.schema import MONITOR_TABLES, TABLES, columns
from loss_slope.tables.validate import validate_run
from loss_slope.tables.validate_monitors import expected_monitor_steps
from loss_slope.train.schedule import Schedule
from loss_slope.train.val_schedule import validation_steps

LN2 = math.log(2)
SPE, EPOCHS, VPE, LR, WD = 8, 3, 4, 0.1, 1e-3
TOTAL = SPE * EPOCHS
SCHED = Schedule("cosine", warmup_steps=4, total_steps=TOTAL)
MONITORS = {
    "enabled": True,
    "curvature_every_steps": 6,
    "noise_every_epochs": 1,
    "noise_every_steps": SPE,
    "hutch_matvecs": 9,
    "lambda_iters": 6,
    "lambda_min_iters": 5,
    "psd_window": 32,
    "psd_min_points": 12,
    "checkpoint_size": True,
}


def curvature_row(s, lam=50.0, status="ok"):
    return (s, s / SPE, lam, 100.0 + s, 5, 9, 0.25, True, 3.0, 1e-4, -2.0, status)


def noise_row(s, points=None, tail=0.1):
    points = min(32, s - 2) if points is None else points  # residuals from step 2 on
    ok = points >= 12
    return (s, s / SPE, tail if ok else math.nan, 0.01 if ok else math.nan, 2.0, points, SPE)


def checkpoint_rows():
    rows = []
    for s in validation_steps(EPOCHS, SPE, VPE):
        if s in (2, 4, 8, 16):
            rows.append((int(s), s / SPE, 1.7e9 + s, "best", f"best-{s}.ckpt", 0.81))
        rows.append((int(s), s / SPE, 1.7e9 + s + 0.5, "latest", "latest.ckpt", 0.81))
    return rows


def write_run(d, *, monitors=MONITORS, curvature=None, noise=None, checkpoints=None, outcome=None):
    """A complete synthetic run in ``d`` (work-tree layout: tables/*.csv, run_info.json)."""
    t = d / "tables"
    steps = CsvTable(t / "steps.csv", "steps")
    steps.append(
        [
            (s, s / SPE, 1.7e9 + s, LR * SCHED.factor(s), WD, 2.0 / (1 + s) ** 0.5, 2.0 / (1 + s) ** 0.5 / LN2, 0.5)
            for s in range(TOTAL)
        ]
    )
    steps.close()
    val = CsvTable(t / "val.csv", "val")
    val.append(
        [(int(s), s / SPE, 1.7e9 + s, 1.0, 1.0 / LN2, 0.6, 2.0, 10.0) for s in validation_steps(EPOCHS, SPE, VPE)]
    )
    val.close()
    if monitors and monitors.get("enabled"):
        defaults = {
            "curvature": [curvature_row(s) for s in (6, 12, 18, 24)],
            "noise": [noise_row(s) for s in (8, 16, 24)],
            "checkpoints": checkpoint_rows(),
        }
        given = {"curvature": curvature, "noise": noise, "checkpoints": checkpoints}
        for table in MONITOR_TABLES:
            csv = CsvTable(t / f"{table}.csv", table)
            csv.append(defaults[table] if given[table] is None else given[table])
            csv.close()
    info = {
        "steps_per_epoch": SPE,
        "epochs": EPOCHS,
        "val_per_epoch": VPE,
        "lr": LR,
        "weight_decay": WD,
        "seed": 0,
        "schedule": {"kind": "cosine", "warmup_steps": 4, "total_steps": TOTAL, "min_lr_ratio": 0.0},
    }
    if monitors is not None:
        info["monitors"] = monitors
    if outcome:
        info["outcome"] = outcome
    (d / "run_info.json").write_text(json.dumps(info))
    (d / "attempts.jsonl").write_text("")


def check(d):
    out = d / "out"
    exported = {t: out / f"{t}.csv" for t in MONITOR_TABLES}
    export_run(
        d,
        steps_csv=out / "steps.csv",
        val_csv=out / "val.csv",
        run_info=out / "run_info.json",
        attempts=out / "attempts.json",
        monitors=exported,
    )
    parquet = {t: out / f"{t}.parquet" for t in MONITOR_TABLES}
    conv = convert_run(
        steps_csv=out / "steps.csv",
        val_csv=out / "val.csv",
        steps_parquet=out / "s.parquet",
        val_parquet=out / "v.parquet",
        report_path=out / "conv.json",
        monitors={t: (exported[t], parquet[t]) for t in MONITOR_TABLES},
    )
    rep = validate_run(
        steps_parquet=out / "s.parquet",
        val_parquet=out / "v.parquet",
        convert_report=out / "conv.json",
        run_info=out / "run_info.json",
        expected={"variant": "V", "run": "r", "lr": LR, "weight_decay": WD, "seed": 0},
        monitors=parquet,
    )
    return conv, rep


def failed(rep):
    return {c.name for c in rep.failures}


def reasons(rep):
    return " | ".join(rep.to_dict()["reasons"])


def test_clean_run_with_monitors_passes_and_parquet_is_typed(tmp_path):
    write_run(tmp_path)
    conv, rep = check(tmp_path)
    assert conv["ok"] and rep.passed, rep.summary()
    names = {c.name for c in rep.checks}
    assert {
        "curvature_cadence",
        "curvature_values",
        "noise_cadence",
        "noise_values",
        "checkpoints_recorded",
        "checkpoint_sizes",
    } <= names
    out = tmp_path / "out"
    c = pq.read_table(out / "curvature.parquet")
    assert c.schema.equals(TABLES["curvature"]) and c.column("lambda_converged").to_pylist() == [True] * 4
    k = pq.read_table(out / "checkpoints.parquet")
    assert k.schema.equals(TABLES["checkpoints"]) and k.num_rows == 16
    n = pq.read_table(out / "noise.parquet").to_pandas()
    assert n.psd_points.tolist() == [6, 14, 22] and math.isnan(n.psd_tail[0]) and n.psd_tail[1] == 0.1


def test_monitors_off_exports_header_only_csvs_and_empty_parquet(tmp_path):
    write_run(
        tmp_path,
        monitors={
            "enabled": False,
            "curvature_every_steps": 0,
            "noise_every_epochs": 0,
            "noise_every_steps": 0,
            "checkpoint_size": False,
        },
    )
    assert not (tmp_path / "tables" / "curvature.csv").exists()
    conv, rep = check(tmp_path)
    assert conv["ok"] and rep.passed, rep.summary()
    for table in MONITOR_TABLES:
        assert (tmp_path / "out" / f"{table}.csv").read_text() == ",".join(columns(table)) + "\n"
        t = pq.read_table(tmp_path / "out" / f"{table}.parquet")
        assert t.num_rows == 0 and t.schema.equals(TABLES[table])


def test_run_info_without_monitor_settings_expects_no_rows(tmp_path):
    write_run(tmp_path, monitors=None)
    _, rep = check(tmp_path)
    assert rep.passed, rep.summary()
    # rows that no setting asked for are reported
    (tmp_path / "tables" / "curvature.csv").write_text(
        ",".join(columns("curvature")) + "\n" + ",".join(map(str, curvature_row(6))) + "\n"
    )
    _, rep = check(tmp_path)
    assert "curvature_cadence" in failed(rep)


@pytest.mark.parametrize(
    "steps,expect",
    [
        ((6, 12, 24), "missing 1 (first [18])"),  # a lost event
        ((6, 12, 18, 20, 24), "unexpected 1 (first [20])"),  # off the cadence
        ((6, 12, 18), "missing 1 (first [24])"),  # the last event, at the final step
    ],
)
def test_curvature_cadence(tmp_path, steps, expect):
    write_run(tmp_path, curvature=[curvature_row(s) for s in steps])
    _, rep = check(tmp_path)
    assert failed(rep) == {"curvature_cadence"}, rep.summary()
    assert expect in reasons(rep)


def test_noise_cadence_is_epochs_times_steps_per_epoch(tmp_path):
    write_run(tmp_path, noise=[noise_row(s) for s in (8, 12, 24)])
    _, rep = check(tmp_path)
    assert "noise_cadence" in failed(rep)
    assert "missing 1 (first [16]), unexpected 1 (first [12])" in reasons(rep)


def test_non_finite_curvature_is_reported_except_after_divergence(tmp_path):
    rows = [curvature_row(s, lam=math.inf if s == 18 else 50.0) for s in (6, 12, 18, 24)]
    write_run(tmp_path, curvature=rows)
    _, rep = check(tmp_path)
    assert failed(rep) == {"curvature_values"}
    assert "first at step 18" in reasons(rep)

    d = tmp_path / "diverged"
    d.mkdir()
    write_run(
        d,
        curvature=rows,
        outcome={
            "status": "diverged",
            "steps_done": TOTAL,
            "diverged_at_step": 17,
            "reason": "non-finite training loss",
        },
    )
    _, rep = check(d)
    assert "curvature_values" not in failed(rep), rep.summary()


def test_wrong_matvec_count_is_reported(tmp_path):
    rows = [curvature_row(s) for s in (6, 12, 18, 24)]
    rows[1] = rows[1][:5] + (8,) + rows[1][6:]
    write_run(tmp_path, curvature=rows)
    _, rep = check(tmp_path)
    assert failed(rep) == {"curvature_values"} and "first at step 12" in reasons(rep)


def test_lanczos_ended_early_by_an_invariant_space_is_valid_and_otherwise_not(tmp_path):
    rows = [curvature_row(s) for s in (6, 12, 18, 24)]
    rows[1] = rows[1][:4] + (3,) + rows[1][5:9] + (0.0,) + rows[1][10:]  # 3 vectors, residual 0: exact
    write_run(tmp_path / "a", curvature=rows)
    assert failed(check(tmp_path / "a")[1]) == set()
    rows[1] = rows[1][:9] + (1e-4,) + rows[1][10:]  # 3 vectors, not converged: below lambda_min_iters
    write_run(tmp_path / "b", curvature=rows)
    _, rep = check(tmp_path / "b")
    assert failed(rep) == {"curvature_values"} and "first at step 12" in reasons(rep)


def test_noise_nan_only_below_psd_min_points(tmp_path):
    # NaN spectral values are expected while the window holds < psd_min_points residuals ...
    write_run(tmp_path, noise=[noise_row(8, points=10), noise_row(16), noise_row(24)])
    _, rep = check(tmp_path)
    assert rep.passed, rep.summary()
    # ... but not once it is full enough
    d = tmp_path / "full"
    d.mkdir()
    write_run(d, noise=[noise_row(8), noise_row(16, tail=math.nan), noise_row(24)])
    _, rep = check(d)
    assert failed(rep) == {"noise_values"} and "first at step 16" in reasons(rep)


def test_noise_grad_var_window_must_match_cadence(tmp_path):
    rows = [noise_row(s) for s in (8, 16, 24)]
    rows[2] = rows[2][:6] + (SPE - 1,)
    write_run(tmp_path, noise=rows)
    _, rep = check(tmp_path)
    assert failed(rep) == {"noise_values"} and "first at step 24" in reasons(rep)


def test_missing_latest_checkpoint_row_is_reported(tmp_path):
    rows = [r for r in checkpoint_rows() if not (r[0] == 14 and r[3] == "latest")]
    write_run(tmp_path, checkpoints=rows)
    _, rep = check(tmp_path)
    assert failed(rep) == {"checkpoints_recorded"}
    assert "latest missing at 1 validation step(s) (first [14])" in reasons(rep)


def test_bad_checkpoint_size_is_reported(tmp_path):
    rows = checkpoint_rows()
    rows[3] = rows[3][:5] + (0.0,)
    write_run(tmp_path, checkpoints=rows)
    _, rep = check(tmp_path)
    assert failed(rep) == {"checkpoint_sizes"}


def test_duplicate_checkpoint_row_never_reaches_parquet(tmp_path):
    rows = checkpoint_rows()
    write_run(tmp_path, checkpoints=rows + [rows[-1]])
    conv, rep = check(tmp_path)
    assert not conv["ok"] and "conversion" in failed(rep)
    errors = conv["tables"]["checkpoints"]["errors"]
    assert any("step 24, kind latest duplicates line" in e for e in errors), errors
    assert pq.read_table(tmp_path / "out" / "checkpoints.parquet").num_rows == 0


def test_truncation_keeps_monitor_rows_at_the_checkpoint_step(tmp_path):
    write_run(tmp_path)
    t = tmp_path / "tables"
    assert truncate_table(t / "curvature.csv", "curvature", 12) == (2, 2)
    assert truncate_table(t / "noise.csv", "noise", 16) == (2, 1)
    kept, dropped = truncate_table(t / "checkpoints.csv", "checkpoints", 8)
    assert (kept, dropped) == (7, 9)  # latest 2,4,6,8 + best 2,4,8
    assert [line.split(",")[3] for line in (t / "checkpoints.csv").read_text().splitlines()[1:]] == [
        "best",
        "latest",
        "best",
        "latest",
        "latest",
        "best",
        "latest",
    ]


def test_expected_monitor_steps_study_cadence():
    # curvature every 500 steps of 50 x 391 = 19,550: 500 ... 19,500
    c = expected_monitor_steps(500, 19550)
    assert len(c) == 39 and c[0] == 500 and c[-1] == 19500
    # noise every 2 epochs of 391 steps: exactly at the end of every second epoch, the last at 19,550
    n = expected_monitor_steps(2 * 391, 19550)
    assert len(n) == 25 and n[0] == 782 and n[-1] == 19550
    assert expected_monitor_steps(0, 100).tolist() == []


def test_latest_once_per_epoch_passes_and_a_missing_epoch_end_is_reported(tmp_path):
    # trainer.checkpoint in the run's config: latest only at the last validation of each epoch
    rows = [r for r in checkpoint_rows() if r[3] == "best" or r[0] % SPE == 0]

    def run(d, checkpoints):
        write_run(d, checkpoints=checkpoints)
        info = json.loads((d / "run_info.json").read_text())
        info["config"] = {"trainer": {"checkpoint": {"latest_every_epochs": 1, "latest_every_minutes": 10.0}}}
        (d / "run_info.json").write_text(json.dumps(info))
        return check(d)[1]

    rep = run(tmp_path / "a", rows)
    assert rep.passed, rep.summary()
    assert "latest at each of the 3 epoch-end validations" in " | ".join(
        c.detail for c in rep.checks if c.name == "checkpoints_recorded"
    )
    rep = run(tmp_path / "b", [r for r in rows if not (r[0] == 16 and r[3] == "latest")])
    assert failed(rep) == {"checkpoints_recorded"}
    assert "latest missing at 1 validation step(s) (first [16])" in reasons(rep)


def test_latest_every_epochs_left_out_of_the_config_takes_the_trainings_default(tmp_path):
    # training saves once per epoch when the key is missing; validation must require the same rows
    rows = [r for r in checkpoint_rows() if r[3] == "best" or (r[0] % SPE == 0 and r[0] != 16)]
    write_run(tmp_path, checkpoints=rows)
    info = json.loads((tmp_path / "run_info.json").read_text())
    info["config"] = {"trainer": {"checkpoint": {"latest_every_minutes": 10.0}}}
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    rep = check(tmp_path)[1]
    assert failed(rep) == {"checkpoints_recorded"}
    assert "latest missing at 1 validation step(s) (first [16])" in reasons(rep)


def test_curvature_event_out_of_memory_is_a_nan_row_with_its_reason_and_passes(tmp_path):
    nan = math.nan
    oom = (12, 12 / SPE, nan, nan, 0, 0, 0.5, False, nan, nan, nan, "out of memory: CUDA out of memory. Tried")
    rows = [curvature_row(6), oom, curvature_row(18), curvature_row(24)]
    write_run(tmp_path / "a", curvature=rows)
    _, rep = check(tmp_path / "a")
    assert rep.passed, rep.summary()
    assert "1 event(s) out of memory" in " | ".join(c.detail for c in rep.checks if c.name == "curvature_values")
    # any other failure (e.g. non-finite weights) is still reported
    failed_row = oom[:-1] + ("failed: CurvatureError: non-finite",)
    write_run(tmp_path / "b", curvature=[curvature_row(6), failed_row, curvature_row(18), curvature_row(24)])
    _, rep = check(tmp_path / "b")
    assert failed(rep) == {"curvature_values"}


@pytest.mark.parametrize("epoch", [math.nan, 7.0])
def test_a_wrong_epoch_in_a_noise_or_checkpoint_row_is_reported(tmp_path, epoch):
    noise = [noise_row(s) for s in (8, 16, 24)]
    noise[1] = (noise[1][0], epoch, *noise[1][2:])
    write_run(tmp_path / "n", noise=noise)
    _, rep = check(tmp_path / "n")
    assert failed(rep) == {"noise_values"} and "first at step 16" in reasons(rep)
    ckpt = checkpoint_rows()
    ckpt[3] = (ckpt[3][0], epoch, *ckpt[3][2:])
    write_run(tmp_path / "k", checkpoints=ckpt)
    _, rep = check(tmp_path / "k")
    assert failed(rep) == {"checkpoint_sizes"} and f"first at step {ckpt[3][0]}" in reasons(rep)


def test_latest_cadence_changed_between_attempts_is_checked_attempt_by_attempt(tmp_path):
    # attempt 1 saved every 2nd epoch (step 16), attempt 2 resumed there at every epoch (step 24):
    # with only the last attempt's config, epoch 1's end (step 8) would be required
    rows = [r for r in checkpoint_rows() if r[3] == "best" or r[0] in (16, 24)]

    def run(d, cadence):
        write_run(d, checkpoints=rows, outcome={"status": "complete", "latest_every_epochs": cadence})
        info = json.loads((d / "run_info.json").read_text())
        info["config"] = {"trainer": {"checkpoint": {"latest_every_epochs": 1, "latest_every_minutes": 10.0}}}
        (d / "run_info.json").write_text(json.dumps(info))
        return check(d)[1]

    rep = run(tmp_path / "a", [[0, 2], [16, 1]])
    assert rep.passed, rep.summary()
    assert "latest at each of the 2 epoch-end validations (every 1 or 2 epoch(s))" in " | ".join(
        c.detail for c in rep.checks if c.name == "checkpoints_recorded"
    )
    # the same rows with every attempt at every epoch: epoch 1's end is missing
    rep = run(tmp_path / "b", [[0, 1], [16, 1]])
    assert failed(rep) == {"checkpoints_recorded"}
    assert "latest missing at 1 validation step(s) (first [8])" in reasons(rep)


def test_cadence_by_attempt_reads_the_start_records():
    from loss_slope.train.latest_cadence import cadence_by_attempt, every_epochs_at

    records = [
        {"event": "start", "attempt": 1, "start_step": 0, "latest_every_epochs": 2},
        {"event": "end", "attempt": 1, "end_step": 20},
        {"event": "start", "attempt": 2, "start_step": 16},  # written before the cadence was recorded
        {"event": "start", "attempt": 3, "start_step": 16, "latest_every_epochs": 1},
    ]
    cadence = cadence_by_attempt(records)
    assert cadence == [[0, 2], [16, 1]]
    assert [every_epochs_at(s, cadence, 3) for s in (8, 16, 24)] == [2, 2, 1]
    assert every_epochs_at(8, [], 3) == 3
