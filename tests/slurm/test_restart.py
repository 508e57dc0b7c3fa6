"""The README's "After a crash" recipe on the real test cluster.

The controller is SIGKILLed while a pack trains (its SLURM job keeps running);
`--unlock` and the same command again resubmit the pack. The per-run lock makes
the new job wait for the old one instead of training the same runs at once;
a pack job stopped at its time budget (exit 3) is resumed and no run records
an error; every table holds each step exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_harness import PROFILE, Cluster, run

from loss_slope.train.pack import read_errors

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
RUNS = ["lr0.05-wd0.0005-s0", "lr0.05-wd0.0005-s1"]
EPOCHS = 30  # 1,320 steps per run, each slowed to >= 0.1 s: longer than one 120 s budget on any machine

CONFIG = {
    "study": "slurm-restart",
    "data": {"name": "digits"},
    "training": {
        "epochs": EPOCHS,
        "batch_size": 32,
        "schedule": "constant",
        "warmup_epochs": 1,
        "threads": 1,
        "flush_every_steps": 11,
        "hydra_overrides": [
            "model.base_width=4",
            "trainer.accelerator=cpu",
            "trainer.monitors.enabled=false",
            "trainer.fault.step_sleep_s=0.1",
        ],
    },
    "variants": {"S-core": {"experiment": "s_core"}},
    "grid": {"lr": [0.05], "weight_decay": [0.0005], "seed": [0, 1]},
    # runtime 3 min (LOSS_SLOPE_SLURM_RUNTIME) - margin 1 min: each pack job trains 120 s, then exits 3;
    # the window in which --unlock, the resubmission and the new trainer must meet the old job's runs
    "packing": {"time_margin_minutes": 1},
    "analysis": {"fit": {"early_window": [5, 15], "window_shift": 1}},
}


def _rows(path: Path) -> int:
    return sum(1 for _ in open(path)) - 1 if path.exists() else 0


def _attempts(workdir: Path, run: str) -> list[dict]:
    p = workdir / "work" / "S-core" / run / "attempts.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_kill_controller_then_restart_recipe(slurm_cluster: Cluster, tmp_path: Path):
    slurm_cluster.wait_idle(300)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(slurm_cluster.env)
    env.update(LOSS_SLOPE_SLURM_RETRY_BACKOFF_S="2", WORKERS_PER_GPU="2", LOSS_SLOPE_SLURM_RUNTIME="3")
    prefix = "lsrestart" + uuid.uuid4().hex[:6]
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [
        exe if exe.exists() else "snakemake",
        "--profile",
        PROFILE,
        "--snakefile",
        REPO / "Snakefile",
        "--configfile",
        "c.yaml",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-jobname-prefix",
        prefix,
        "--latency-wait",
        "5",
    ]
    steps = [tmp_path / "work" / "S-core" / r / "tables" / "steps.csv" for r in RUNS]
    first = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=tmp_path,
        env=env,
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        t0 = time.time()
        while not all(_rows(s) >= 30 for s in steps):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-5000:]
            assert time.time() - t0 < 400, (tmp_path / "first.log").read_text()[-5000:]
            time.sleep(1)
        os.killpg(first.pid, signal.SIGKILL)  # the controller dies; its pack job keeps training
        first.wait(timeout=30)
        queued = run(["squeue", "-h", "-o", "%j %T"], timeout=30).stdout
        assert prefix in queued, queued

        # the recipe: --unlock, then the same command (the profile sets --rerun-incomplete)
        assert run([*cmd, "--unlock"], timeout=300, env=env, cwd=tmp_path).returncode == 0
        second = run(cmd, timeout=1200, env=env, cwd=tmp_path)
        assert second.returncode == 0 and not second.timed_out, second.stdout[-8000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        run(
            [
                "scancel",
                "-n",
                ",".join(
                    line.split()[0]
                    for line in run(["squeue", "-h", "-o", "%j"], timeout=30).stdout.splitlines()
                    if line.startswith(prefix)
                )
                or "none",
            ],
            timeout=30,
        )

    total = EPOCHS * 44
    for run_id, path in zip(RUNS, steps):
        df = pd.read_csv(path)
        assert df.step.tolist() == list(range(total)), f"{run_id}: steps not exactly once"
        recs = _attempts(tmp_path, run_id)
        spans = []
        for r in recs:
            if r["event"] == "start":
                spans.append([r["time"], None, r.get("slurm_job_id")])
            elif r["event"] == "end":
                spans[-1][1] = r["time"]
        # never two trainers at once: every attempt starts after the previous one ended
        for (_s0, e0, j0), (s1, _, j1) in zip(spans, spans[1:]):
            assert e0 is not None and s1 >= e0, f"{run_id}: attempt in job {j1} overlaps job {j0}: {recs}"
        ends = [r["status"] for r in recs if r["event"] == "end"]
        assert ends[-1] == "completed" and "unfinished" in ends, ends  # a time-budget stop, then resumed
        assert "failed" not in ends and not read_errors(tmp_path / "work" / "S-core" / run_id)  # no failed try
        rep = json.loads((tmp_path / f"results/validation/S-core/{run_id}/validation.json").read_text())
        assert rep["passed"], rep["reasons"]
    log = "".join((tmp_path / "logs" / "train" / "S-core" / f"{r}.log").read_text() for r in RUNS)
    # the resubmitted pack met the first job's runs while they trained, and waited
    assert "run is locked by another trainer" in log
