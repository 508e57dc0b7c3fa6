import pandas as pd

from loss_slope.tables.csvlog import CsvTable, truncate_table
from loss_slope.tables.schema import columns


def _steps(n, start=0):
    return [(i, i / 10, 1000.0 + i, 0.1, 1e-4, 2.0, 2.0 / 0.6931471805599453, 0.5) for i in range(start, start + n)]


def test_append_roundtrips_float64_exactly(tmp_path):
    t = CsvTable(tmp_path / "steps.csv", "steps")
    row = (0, 0.0, 1.7e9 + 0.123456789, 0.1 / 3, 1e-4, 2.302585092994046, 2.302585092994046 / 0.6931471805599453, 0.25)
    t.append([row])
    t.close()
    df = pd.read_csv(tmp_path / "steps.csv")
    assert list(df.columns) == columns("steps")
    assert tuple(df.iloc[0]) == row


def test_appended_rows_are_in_the_file_before_any_sync(tmp_path):
    # a block of a few rows (a few hundred bytes) reaches the file at once: progress readers
    # (loss-slope status, tail -f) see it, and a kill after it leaves a tail beyond the checkpoint
    t = CsvTable(tmp_path / "steps.csv", "steps")
    t.append(_steps(5))
    assert pd.read_csv(tmp_path / "steps.csv").step.tolist() == [0, 1, 2, 3, 4]
    t.close()


def test_truncate_keeps_rows_before_checkpoint_and_drops_torn_line(tmp_path):
    p = tmp_path / "steps.csv"
    t = CsvTable(p, "steps")
    t.append(_steps(30))
    t.close()
    with open(p, "a") as fh:
        fh.write("30,3.0,1030.0,0.1")  # killed mid-write
    kept, dropped = truncate_table(p, "steps", 22)
    assert (kept, dropped) == (22, 9)
    df = pd.read_csv(p)
    assert df.step.tolist() == list(range(22))
    # reopening appends after the truncated rows: every step exactly once
    t = CsvTable(p, "steps")
    t.append(_steps(8, start=22))
    t.close()
    assert pd.read_csv(p).step.tolist() == list(range(30))


def test_truncate_val_keeps_the_row_at_the_checkpoint_step(tmp_path):
    p = tmp_path / "val.csv"
    t = CsvTable(p, "val")
    t.append([(s, s / 44, 0.0, 1.0, 1.44, 0.5, 1.0, 2.0) for s in (11, 22, 33, 44)])
    t.close()
    assert truncate_table(p, "val", 22) == (2, 2)
    assert pd.read_csv(p).step.tolist() == [11, 22]


def test_truncate_missing_file_is_noop(tmp_path):
    assert truncate_table(tmp_path / "nope.csv", "steps", 5) == (0, 0)


def test_truncate_refuses_a_table_of_another_layout_instead_of_relabelling_its_rows(tmp_path):
    import pytest

    p = tmp_path / "steps.csv"
    t = CsvTable(p, "steps")
    t.append(_steps(10))
    t.close()
    old = p.read_text()
    cols = columns("steps")
    swapped = ",".join([cols[0], cols[2], cols[1], *cols[3:]])  # same width, two columns swapped
    p.write_text(old.replace(",".join(cols), swapped, 1))
    with pytest.raises(ValueError, match="another version of this code"):
        truncate_table(p, "steps", 5)
    assert p.read_text().startswith(swapped)  # nothing rewritten
    p.write_text("step,epoch\n")  # a narrower table: its rows would all be dropped and never written again
    with pytest.raises(ValueError, match="header is 'step,epoch'"):
        truncate_table(p, "steps", 5)
    p.write_text("step,epo")  # a header torn by a kill at the table's creation: nothing to keep
    assert truncate_table(p, "steps", 5) == (0, 1)
    assert p.read_text() == ",".join(cols) + "\n"
