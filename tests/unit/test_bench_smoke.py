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
    assert "| " in text and "ratio" in text or "speed-up" in text
