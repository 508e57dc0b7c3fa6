"""The real workflow through `snakemake --profile profiles/slurm` on the one-node test cluster.

- the probe and every pack go through sbatch (visible in sacct);
- a pack of 2 trains its two runs at the same time (overlapping step timestamps);
- a run forced to fail once (trainer.fault) fails its pack; the profile's retry
  resubmits the pack after the back-off, with more memory; the failed run resumes
  from its checkpoint, the other run is not retrained;
- a pack stopped by its time budget is resubmitted with the memory it had and
  resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_harness import Cluster

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
FAIL_RUN = "lr0.05-wd0.0005-s1"

TINY = {
    "study": "slurm-tiny",
    "data": {"name": "digits"},
    "training": {
        "epochs": 3,
        "batch_size": 32,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "threads": 1,
        "flush_every_steps": 11,
        "hydra_overrides": ["model.base_width=4", "trainer.accelerator=cpu"],
    },
    "variants": {
        "S-core": {
            "experiment": "s_core",
            "hydra_overrides": [f"trainer.fault.fail_run={FAIL_RUN}", "trainer.fault.fail_at_step=60"],
        }
    },
    "grid": {"lr": [0.05], "weight_decay": [0.0005], "seed": [0, 1]},
    "packing": {"probe_k_max": 2, "probe_steps": 5, "probe_warmup_steps": 2},
    "analysis": {"fit": {"early_window": [1, 3], "window_shift": 1}},  # within the 3 epochs
}


def attempts(workdir: Path, run: str) -> list[dict]:
    lines = (workdir / "work" / "S-core" / run / "attempts.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def test_pack_of_two_runs_concurrently_and_a_failed_run_is_retried(
    run_snakemake, slurm_cluster: Cluster, tmp_path: Path
):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # WORKERS_PER_GPU fixes N = 2 without probing: one pack holding both runs
    sm = run_snakemake(
        tmp_path,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        "tiny.yaml",
        backoff_s=3,
        timeout=900,
        extra_env={"WORKERS_PER_GPU": "2"},
    )
    assert sm.result.returncode == 0, sm.output[-8000:]
    rows = slurm_cluster.sacct(sm.run_id)
    packs = sorted((r for r in rows if r["Comment"].startswith("rule_train_pack")), key=lambda r: int(r["JobIDRaw"]))
    assert [r["State"] for r in packs] == ["FAILED", "COMPLETED"], rows
    assert all("gres/gpu=1" in r["AllocTRES"] for r in packs)
    assert "cpu=2" in packs[0]["AllocTRES"]  # 2 runs x training.threads (1)
    # after a failed attempt the retry asks for 1.5 x (2 x 6000 + 2000) MB
    assert [r["ReqMem"] for r in packs] == ["14000M", "21000M"], packs

    ok_run = "lr0.05-wd0.0005-s0"
    a_ok, a_fail = attempts(tmp_path, ok_run), attempts(tmp_path, FAIL_RUN)
    # the run that never failed trained once; the retried pack skipped it
    assert [a["event"] for a in a_ok] == ["start", "end"] and a_ok[1]["status"] == "completed"
    # the failed run: attempt 1 failed at the injected step, attempt 2 resumed from its checkpoint
    starts = [a for a in a_fail if a["event"] == "start"]
    ends = [a for a in a_fail if a["event"] == "end"]
    assert [e["status"] for e in ends] == ["failed", "completed"], a_fail
    # failed at step 60; the latest checkpoint is the one of the end of epoch 1 (44 steps per epoch)
    assert starts[1]["reason"] == "resume" and starts[1]["start_step"] == 44
    assert starts[1]["snakemake_attempt"] == "2"
    assert starts[0]["slurm_job_id"] == packs[0]["JobIDRaw"] and starts[1]["slurm_job_id"] == packs[1]["JobIDRaw"]

    steps = {r: pd.read_csv(tmp_path / "work" / "S-core" / r / "tables" / "steps.csv") for r in (ok_run, FAIL_RUN)}
    for df in steps.values():
        assert df.step.tolist() == list(range(132))
    # both processes of the pack trained at the same time (first attempt)
    first = steps[FAIL_RUN][steps[FAIL_RUN].step < 55]
    overlap = min(steps[ok_run].time.max(), first.time.max()) - max(steps[ok_run].time.min(), first.time.min())
    assert overlap > 0, "the two runs of the pack did not overlap in time"
    for run in (ok_run, FAIL_RUN):
        rep = json.loads((tmp_path / f"results/validation/S-core/{run}/validation.json").read_text())
        assert rep["passed"], rep["reasons"]


def test_probe_runs_as_a_gpu_job(run_snakemake, slurm_cluster: Cluster, tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # the target goes first: --configfile takes every following word as a file
    sm = run_snakemake(
        tmp_path,
        "results/plan/S-core/runs_per_gpu.json",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        "tiny.yaml",
        timeout=600,
    )
    assert sm.result.returncode == 0, sm.output[-8000:]
    rows = slurm_cluster.sacct(sm.run_id)
    probe = [r for r in rows if r["Comment"].startswith("rule_probe_capacity")]
    assert len(probe) == 1 and probe[0]["State"] == "COMPLETED", rows
    result = json.loads((tmp_path / "results/probe/S-core.json").read_text())
    assert [lv["k"] for lv in result["levels"]] == [1, 2]
    assert result["on_cpu"] and result["cuda_visible_devices"] is not None  # SLURM gave it a (fake) GPU
    plan = json.loads((tmp_path / "results/plan/S-core/runs_per_gpu.json").read_text())
    assert plan["source"] == "probe" and plan["runs_per_gpu"] == result["runs_per_gpu"]


# two simulated runs of 1,564 steps, 5 s per block of 100 steps (~80 s each): a pack job of
# 2 minutes stops them at its 1-minute time budget, the retry finishes them
TIME_BUDGET = {
    "study": "slurm-time-budget",
    "data": {"name": "simulated"},
    "training": {
        "epochs": 4,
        "batch_size": 128,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "threads": 1,
        "flush_every_steps": 100,
        "hydra_overrides": ["data.simulation.pace_s_per_chunk=5", "data.simulation.early_window=[1,3]"],
    },
    "variants": {"S-core": {"experiment": "s_core"}},
    "grid": {"lr": [0.05], "weight_decay": [0.0005], "seed": [0, 1]},
    "packing": {
        "runs_per_gpu": 2,
        "host_mem_mb_per_run": 500,
        "host_mem_margin_mb": 500,
        "runtime_minutes": 2,
        "time_margin_minutes": 1,
    },
    "analysis": {"fit": {"early_window": [1, 3], "window_shift": 1}},  # within the 4 epochs
}


def test_a_pack_stopped_by_its_time_budget_is_resubmitted_with_the_same_memory(
    run_snakemake, slurm_cluster: Cluster, tmp_path: Path
):
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(TIME_BUDGET))
    sm = run_snakemake(
        tmp_path,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        "budget.yaml",
        "--until",
        "run_done",
        backoff_s=2,
        timeout=900,
    )
    assert sm.result.returncode == 0, sm.output[-8000:]
    rows = slurm_cluster.sacct(sm.run_id)
    packs = sorted((r for r in rows if r["Comment"].startswith("rule_train_pack")), key=lambda r: int(r["JobIDRaw"]))
    assert [r["State"] for r in packs] == ["FAILED", "COMPLETED"], rows
    # 2 x 500 + 500 MB both times: the first attempt ended at its time budget, not out of memory
    assert [r["ReqMem"] for r in packs] == ["1500M", "1500M"], packs
    for run in ("lr0.05-wd0.0005-s0", "lr0.05-wd0.0005-s1"):
        ends = [a for a in attempts(tmp_path, run) if a["event"] == "end"]
        assert [e["status"] for e in ends] == ["unfinished", "completed"], ends
        assert 0 < ends[0]["end_step"] < 1564 and ends[1]["end_step"] == 1564
