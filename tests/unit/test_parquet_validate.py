"""CSV → Parquet and validation on synthetic tables with known answers."""

import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from loss_slope.tables.csvlog import CsvTable
from loss_slope.tables.parquet import convert_run
from loss_slope.tables.schema import TABLES
from loss_slope.tables.validate import validate_run
from loss_slope.train.schedule import Schedule
from loss_slope.train.val_schedule import validation_steps

LN2 = math.log(2)
SPE, EPOCHS, VPE, LR, WD = 8, 3, 4, 0.1, 1e-3
SCHED = Schedule("cosine", warmup_steps=4, total_steps=SPE * EPOCHS)


def write_run(d, *, n_steps=SPE * EPOCHS, lr_scale=1.0, wd=WD, loss_at=None):
    steps = CsvTable(d / "steps.csv", "steps")
    rows = []
    for s in range(n_steps):
        loss = 2.0 / (1 + s) ** 0.5 if loss_at is None or s != loss_at[0] else loss_at[1]
        rows.append((s, s / SPE, 1.7e9 + s, LR * lr_scale * SCHED.factor(s), wd, loss, loss / LN2, 0.5))
    steps.append(rows)
    steps.close()
    val = CsvTable(d / "val.csv", "val")
    val.append(
        [(int(s), s / SPE, 1.7e9 + s, 1.0, 1.0 / LN2, 0.6, 2.0, 10.0) for s in validation_steps(EPOCHS, SPE, VPE)]
    )
    val.close()
    info = {
        "steps_per_epoch": SPE,
        "epochs": EPOCHS,
        "val_per_epoch": VPE,
        "lr": LR,
        "weight_decay": WD,
        "seed": 0,
        "schedule": {"kind": "cosine", "warmup_steps": 4, "total_steps": SPE * EPOCHS, "min_lr_ratio": 0.0},
    }
    (d / "run_info.json").write_text(json.dumps(info))


def check(d):
    conv = convert_run(
        steps_csv=d / "steps.csv",
        val_csv=d / "val.csv",
        steps_parquet=d / "s.parquet",
        val_parquet=d / "v.parquet",
        report_path=d / "conv.json",
    )
    rep = validate_run(
        steps_parquet=d / "s.parquet",
        val_parquet=d / "v.parquet",
        convert_report=d / "conv.json",
        run_info=d / "run_info.json",
        expected={"variant": "V", "run": "r", "lr": LR, "weight_decay": WD, "seed": 0},
    )
    return conv, rep


def failed(rep):
    return {c.name for c in rep.failures}


def test_clean_run_passes_and_parquet_is_typed(tmp_path):
    write_run(tmp_path)
    conv, rep = check(tmp_path)
    assert conv["ok"] and rep.passed, rep.summary()
    t = pq.read_table(tmp_path / "s.parquet")
    assert str(t.schema.field("step").type) == "int64" and t.num_rows == 24
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.row_group(0).column(0).compression == "ZSTD"


def test_missing_steps_detected(tmp_path):
    write_run(tmp_path, n_steps=20)
    _, rep = check(tmp_path)
    assert "steps_exactly_once" in failed(rep)
    assert "missing 4" in rep.to_dict()["reasons"][0]


def test_wrong_lr_schedule_and_wd_detected(tmp_path):
    write_run(tmp_path, lr_scale=1.001, wd=1e-4)
    _, rep = check(tmp_path)
    assert {"lr_follows_schedule", "wd_equals_config"} <= failed(rep)


def test_nan_and_negative_loss_detected(tmp_path):
    write_run(tmp_path, loss_at=(5, float("nan")))
    _, rep = check(tmp_path)
    assert failed(rep) == {"steps_finite"}  # a NaN loss is no negative loss and no bits mismatch
    assert "first at step 5" in " ".join(rep.to_dict()["reasons"])
    neg = tmp_path / "negative"
    neg.mkdir()
    write_run(neg, loss_at=(5, -0.5))  # the bits column follows it: -0.5 / ln 2
    _, rep = check(neg)
    assert failed(rep) == {"loss_nonnegative"}


def _set_fields(path, lineno, **values):
    """Replace the named columns of line ``lineno`` (0 is the header) of a table's CSV."""
    lines = path.read_text().splitlines(keepends=True)
    names = lines[0].rstrip("\n").split(",")
    fields = lines[lineno].rstrip("\n").split(",")
    for name, value in values.items():
        fields[names.index(name)] = value
    lines[lineno] = ",".join(fields) + "\n"
    path.write_text("".join(lines))


def _swap_lines(path, a, b):
    lines = path.read_text().splitlines(keepends=True)
    lines[a], lines[b] = lines[b], lines[a]
    path.write_text("".join(lines))


def _set_run_info(d, **values):
    info = json.loads((d / "run_info.json").read_text())
    (d / "run_info.json").write_text(json.dumps({**info, **values}))


STEPS, VAL = "steps.csv", "val.csv"


@pytest.mark.parametrize(
    "damage, check_name",
    [
        # the run trained other settings than the study config names (its tables follow the config)
        pytest.param(lambda d: _set_run_info(d, seed=1), "config_matches", id="wrong_seed"),
        pytest.param(lambda d: _set_run_info(d, lr=0.2), "config_matches", id="wrong_lr"),
        pytest.param(lambda d: _set_run_info(d, weight_decay=1e-4), "config_matches", id="wrong_weight_decay"),
        # steps 5 and 6 swapped: every step once, each row self-consistent, but not in order
        pytest.param(lambda d: _swap_lines(d / STEPS, 6, 7), "steps_in_order", id="two_steps_swapped"),
        # line 6 is step 5; a negative loss with its bits consistent
        pytest.param(
            lambda d: _set_fields(d / STEPS, 6, loss_train_nats="-0.5", loss_train_bits=repr(-0.5 / LN2)),
            "loss_nonnegative",
            id="negative_loss",
        ),
        pytest.param(lambda d: _set_fields(d / STEPS, 6, acc_train="1.5"), "acc_in_unit_interval", id="acc_above_1"),
        pytest.param(lambda d: _set_fields(d / STEPS, 6, acc_train="-0.25"), "acc_in_unit_interval", id="acc_below_0"),
        pytest.param(
            lambda d: _set_fields(d / STEPS, 6, loss_train_bits="3.0"), "bits_equal_nats_over_ln2", id="bits_wrong"
        ),
        # line 3 of val.csv is the validation at step 6
        pytest.param(lambda d: _set_fields(d / VAL, 3, grad_norm="nan"), "val_finite", id="val_nan_grad_norm"),
        pytest.param(lambda d: _set_fields(d / VAL, 3, weight_norm="inf"), "val_finite", id="val_inf_weight_norm"),
        pytest.param(
            lambda d: _set_fields(d / VAL, 3, loss_val_nats="-1.0", loss_val_bits=repr(-1.0 / LN2)),
            "val_ranges",
            id="val_negative_loss",
        ),
        pytest.param(lambda d: _set_fields(d / VAL, 3, acc_val="1.5"), "val_ranges", id="val_acc_above_1"),
        pytest.param(lambda d: _set_fields(d / VAL, 3, acc_val="-0.5"), "val_ranges", id="val_acc_below_0"),
        pytest.param(lambda d: _set_fields(d / VAL, 3, grad_norm="-2.0"), "val_ranges", id="val_negative_grad_norm"),
        pytest.param(lambda d: _set_fields(d / VAL, 3, weight_norm="0.0"), "val_ranges", id="val_zero_weight_norm"),
        pytest.param(
            lambda d: _set_fields(d / VAL, 3, loss_val_bits="1.0"), "val_bits_equal_nats_over_ln2", id="val_bits_wrong"
        ),
    ],
)
def test_each_damaged_value_fails_exactly_its_own_check(tmp_path, damage, check_name):
    write_run(tmp_path)
    _, rep = check(tmp_path)
    assert rep.passed, rep.summary()
    before = {f: (tmp_path / f).read_text() for f in ("steps.csv", "val.csv", "run_info.json")}
    damage(tmp_path)
    assert {f: (tmp_path / f).read_text() for f in before} != before
    _, rep = check(tmp_path)
    assert failed(rep) == {check_name}, rep.summary()
    assert rep.to_dict()["status"] == "invalid"
    # every failed check says where (the first bad step) or what differs, not its rule alone
    (fail,) = rep.failures
    assert re.search(r"first at step \d+|trained .*, config", fail.detail), fail.detail


@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda t: t[: len(t) - 7], "truncated line"),  # cut mid-line
        (lambda t: t.replace("\n5,", "\n5,garbage,", 1), "expected 8 fields"),  # garbage row
        (lambda t: t.replace("\n7,", "\n7,0.875,x", 1), "expected 8 fields"),
        (lambda t: t.replace("wd,", "", 1), "header mismatch; missing columns ['wd']"),  # missing column
        (lambda t: t + t.split("\n", 1)[1].split("\n")[3] + "\n", "duplicates line"),  # duplicated step
        (lambda t: t.replace("\n9,", "\n9,abc", 1).replace("abc1.125", "abc", 1), "not a"),
    ],
)
def test_corrupt_tables_never_reach_parquet(tmp_path, damage, expect):
    write_run(tmp_path)
    p = tmp_path / "steps.csv"
    p.write_text(damage(p.read_text()))
    conv, rep = check(tmp_path)
    assert not conv["ok"] and not rep.passed
    errors = conv["tables"]["steps"]["errors"]
    assert any(expect in e for e in errors), errors
    assert all(str(p) in e for e in errors[:1])  # names the file (and line)
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 0  # nothing half-parsed
    assert "conversion" in failed(rep)


def test_wrong_validation_count_detected(tmp_path):
    write_run(tmp_path)
    p = tmp_path / "val.csv"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:-1]))
    _, rep = check(tmp_path)
    assert "val_per_epoch" in failed(rep)


def test_an_epoch_too_short_for_its_validations_is_refused():
    from loss_slope.train.val_schedule import val_interval

    assert val_interval(44, 4) == 11 and val_interval(4, 4) == 1 and val_interval(391, 4) == 97
    with pytest.raises(ValueError, match="val_per_epoch=5 exceeds the 4 steps"):
        validation_steps(2, 4, 5)
    # Lightning validates at every multiple of the interval: 8 steps, every 2, is 4 validations, not 3
    with pytest.raises(ValueError, match=r"comes 4 times an epoch; use one of \[1, 2, 4, 8\]"):
        val_interval(8, 3)


def test_validation_steps_quarter_boundaries():
    assert validation_steps(2, 44, 4).tolist() == [11, 22, 33, 44, 55, 66, 77, 88]
    # 391 steps/epoch: every floor(391/4) = 97 batches within each epoch
    assert validation_steps(2, 391, 4).tolist() == [97, 194, 291, 388, 488, 585, 682, 779]
    assert np.all(np.diff(validation_steps(50, 391, 4)) > 0)


def test_diverged_run_is_complete_up_to_its_stop_and_flagged(tmp_path):
    write_run(tmp_path, n_steps=13, loss_at=(10, float("nan")))
    info = json.loads((tmp_path / "run_info.json").read_text())
    info["outcome"] = {"status": "diverged", "steps_done": 13, "diverged_at_step": 10, "reason": "nan at step 10"}
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    v = (tmp_path / "val.csv").read_text().splitlines(keepends=True)
    # header + validations at steps 2, 4, ..., 12; the one at step 10 saw the weights that gave step 10's NaN
    v[5] = ",".join(x if i < 3 else "nan" for i, x in enumerate(v[5].rstrip("\n").split(","))) + "\n"
    assert v[5].startswith("10,")
    (tmp_path / "val.csv").write_text("".join(v[:7]))
    conv, rep = check(tmp_path)
    d = rep.to_dict()
    assert conv["ok"] and rep.passed, d["reasons"]
    assert d["status"] == "diverged" and "nan at step 10" in d["reasons"][0]
    assert (d["expected_steps"], d["expected_val"], d["n_val"]) == (13, 6, 6)  # the validations up to the stop
    # a diverged run that lost rows before its stop is invalid, not diverged
    (tmp_path / "steps.csv").write_text("".join((tmp_path / "steps.csv").read_text().splitlines(keepends=True)[:9]))
    _, rep = check(tmp_path)
    assert rep.to_dict()["status"] == "invalid"


@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda t: t.replace("step,epoch,", "epoch,step,", 1), "columns out of order"),  # renamed columns by position
        (lambda t: t.replace("acc_train\n", "acc_train,extra\n", 1), "unexpected ['extra']"),  # extra column
        (lambda t: "", "header mismatch"),  # empty file
        (lambda t: t.replace("\n3,", '\n"3",', 1), "not a"),  # the recorder never quotes
    ],
)
def test_header_and_quoting_are_strict(tmp_path, damage, expect):
    write_run(tmp_path)
    p = tmp_path / "steps.csv"
    p.write_text(damage(p.read_text()))
    conv, _ = check(tmp_path)
    errors = conv["tables"]["steps"]["errors"]
    assert not conv["ok"] and any(expect in e for e in errors), errors
    assert errors[0].startswith(f"{p}:")
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 0


def test_out_of_order_rows_are_kept_and_duplicates_found_anywhere(tmp_path):
    write_run(tmp_path)
    p = tmp_path / "steps.csv"
    header, *rows = p.read_text().splitlines(keepends=True)
    p.write_text(header + "".join(rows[12:] + rows[:12]))  # unique steps, not increasing
    conv = convert_run(
        steps_csv=p,
        val_csv=tmp_path / "val.csv",
        steps_parquet=tmp_path / "s.parquet",
        val_parquet=tmp_path / "v.parquet",
        report_path=tmp_path / "conv.json",
    )
    assert conv["ok"] and conv["tables"]["steps"]["rows"] == 24
    assert pq.read_table(tmp_path / "s.parquet")["step"].to_pylist() == list(range(12, 24)) + list(range(12))
    p.write_text(header + "".join(rows[12:] + rows[:12] + rows[20:21]))  # step 20 again, not next to its twin
    conv = convert_run(
        steps_csv=p,
        val_csv=tmp_path / "val.csv",
        steps_parquet=tmp_path / "s.parquet",
        val_parquet=tmp_path / "v.parquet",
        report_path=tmp_path / "conv.json",
    )
    errors = conv["tables"]["steps"]["errors"]
    assert not conv["ok"] and errors == [f"{p}:26: step 20 duplicates line 10"], errors
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 0


def test_parquet_is_exact_and_compact(tmp_path):
    """Bit-exact floats (incl. nan/inf and 17-digit values); no dictionary for float columns."""
    rng = np.random.default_rng(1)
    vals = rng.uniform(0, 1, 500).tolist() + [float("nan"), float("inf"), 5e-324, 1.7976931348623157e308]
    t = CsvTable(tmp_path / "steps.csv", "steps")
    t.append((i, i / 3, 1.7e9 + i / 7, 0.1, 1e-4, v, -v, 0.5) for i, v in enumerate(vals))
    t.close()
    val = CsvTable(tmp_path / "val.csv", "val")
    val.close()  # header only
    conv = convert_run(
        steps_csv=tmp_path / "steps.csv",
        val_csv=tmp_path / "val.csv",
        steps_parquet=tmp_path / "s.parquet",
        val_parquet=tmp_path / "v.parquet",
        report_path=tmp_path / "conv.json",
    )
    assert conv["ok"] and conv["tables"]["steps"]["rows"] == len(vals) and conv["tables"]["val"]["rows"] == 0
    got = pq.read_table(tmp_path / "s.parquet")
    np.testing.assert_array_equal(got["loss_train_nats"].to_numpy(), np.array(vals))  # nan == nan here
    np.testing.assert_array_equal(got["epoch"].to_numpy(), np.arange(len(vals)) / 3)
    assert got.schema.remove_metadata() == TABLES["steps"]
    meta = pq.ParquetFile(tmp_path / "s.parquet").metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert all(c.compression == "ZSTD" and c.statistics is not None for c in cols.values())
    assert "BYTE_STREAM_SPLIT" in cols["loss_train_nats"].encodings
    assert not any("DICTIONARY" in e for e in cols["loss_train_nats"].encodings)
    assert "DELTA_BINARY_PACKED" in cols["step"].encodings
    assert (cols["step"].statistics.min, cols["step"].statistics.max) == (0, len(vals) - 1)
    assert pq.read_table(tmp_path / "v.parquet").num_rows == 0


def test_crlf_is_read_and_a_header_without_newline_is_rejected(tmp_path):
    write_run(tmp_path)
    p = tmp_path / "steps.csv"
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    timings = {}
    conv = convert_run(
        steps_csv=p,
        val_csv=tmp_path / "val.csv",
        steps_parquet=tmp_path / "s.parquet",
        val_parquet=tmp_path / "v.parquet",
        report_path=tmp_path / "conv.json",
        timings=timings,
    )
    assert conv["ok"] and pq.read_table(tmp_path / "s.parquet")["step"].to_pylist() == list(range(24))
    assert {"read", "parse", "checks", "write", "report"} <= set(timings)
    v = tmp_path / "val.csv"
    v.write_text(v.read_text().split("\n")[0])  # a torn header-only file (the recorder writes "header\n")
    conv = convert_run(
        steps_csv=p,
        val_csv=v,
        steps_parquet=tmp_path / "s.parquet",
        val_parquet=tmp_path / "v.parquet",
        report_path=tmp_path / "conv.json",
    )
    assert not conv["ok"] and conv["tables"]["val"]["errors"][0].startswith(f"{v}:1: truncated line")


def test_missing_file_gives_empty_parquet_and_error(tmp_path):
    write_run(tmp_path)
    (tmp_path / "val.csv").unlink()
    conv, rep = check(tmp_path)
    assert not conv["ok"] and conv["tables"]["val"]["errors"] == [f"{tmp_path / 'val.csv'}: file not found"]
    assert pq.read_table(tmp_path / "v.parquet").num_rows == 0 and "conversion" in failed(rep)


def test_a_run_trained_with_a_schedule_lightning_could_not_keep_fails_validation(tmp_path):
    # 8 steps, 3 validations an epoch: Lightning validated every 2 steps, 4 times an epoch (such a
    # config is refused before training now); its validation reports it instead of crashing
    write_run(tmp_path)
    info = json.loads((tmp_path / "run_info.json").read_text())
    (tmp_path / "run_info.json").write_text(json.dumps({**info, "val_per_epoch": 3}))
    _, rep = check(tmp_path)
    assert failed(rep) == {"val_per_epoch"}
    assert "comes 4 times an epoch" in " ".join(rep.to_dict()["reasons"])


def _edit_line(path, lineno, edit):
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno] = edit(lines[lineno])
    path.write_text("".join(lines))


def test_a_validation_at_step_0_fails_the_count_instead_of_crashing(tmp_path):
    write_run(tmp_path)
    p = tmp_path / "val.csv"
    header, first = p.read_text().splitlines(keepends=True)[:2]
    p.write_text(p.read_text().replace(first, first.replace("2,0.25,", "0,0.0,", 1), 1))
    _, rep = check(tmp_path)
    assert failed(rep) == {"val_per_epoch"}
    assert "missing at 1 step(s) (first [2]), unexpected at 1 (first [0])" in " ".join(rep.to_dict()["reasons"])


@pytest.mark.parametrize(
    "table, lineno, edit, check_name",
    [
        # step 0 is no exception: its epoch is 0
        ("steps.csv", 1, lambda ln: ln.replace("0,0.0,", "0,5.0,", 1), "epoch_column"),
        # the validation's epoch becomes the fits' best_val_epoch
        ("val.csv", 2, lambda ln: ln.replace(",0.5,", ",nan,", 1), "val_epoch_column"),
        ("val.csv", 3, lambda ln: ln.replace(",0.75,", ",7.5,", 1), "val_epoch_column"),
    ],
)
def test_a_wrong_epoch_is_found_in_every_table(tmp_path, table, lineno, edit, check_name):
    write_run(tmp_path)
    before = (tmp_path / table).read_text()
    _edit_line(tmp_path / table, lineno, edit)
    assert (tmp_path / table).read_text() != before
    _, rep = check(tmp_path)
    assert failed(rep) == {check_name}


def test_steps_outside_the_run_are_named(tmp_path):
    write_run(tmp_path)
    p = tmp_path / "steps.csv"
    last = p.read_text().splitlines()[-1].split(",")
    p.write_text(p.read_text() + ",".join(["24", "3.0", *last[2:]]) + "\n")
    _, rep = check(tmp_path)
    assert "steps_exactly_once" in failed(rep)
    assert "outside 0..23 1 (first [24])" in " ".join(rep.to_dict()["reasons"])


def test_a_failed_parquet_write_leaves_nothing_a_dataset_read_would_see(tmp_path, monkeypatch):
    """The partition folder of a failed write holds only the previous file: no stray part."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from loss_slope.tables import parquet

    schema = pa.schema([("step", pa.int64())])
    part = tmp_path / "variant=V" / "run=r" / "part-0.parquet"
    parquet.write_parquet(pa.table({"step": [0, 1]}, schema=schema), part, schema)

    write_table = pq.write_table

    def write_then_fail(table, where, **kw):
        write_table(table, where, **kw)  # the bytes reach the disk, then the job dies
        raise OSError("No space left on device")

    monkeypatch.setattr(parquet.pq, "write_table", write_then_fail)
    with pytest.raises(OSError, match="No space"):
        parquet.write_parquet(pa.table({"step": [0, 1, 2]}, schema=schema), part, schema)
    assert [p.name for p in part.parent.iterdir()] == ["part-0.parquet"]
    assert ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table().num_rows == 2
