"""Real-SLURM tests: the harness (cluster.sh) and the cluster profile (profiles/slurm).

Each test writes a tiny self-contained Snakefile into tmp_path whose cluster rules
are named like the workflow's GPU rules (probe_capacity, train_pack), so the real
profile's per-rule resources, retries and back-off are what gets exercised.
Run: pytest -m slurm tests/slurm   (as root; ~4 min, most of it snakemake polling)
"""

from __future__ import annotations

import re
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from slurm_harness import CLUSTER_SH, Cluster, parse_env, run

pytestmark = pytest.mark.slurm


def write_snakefile(workdir: Path, text: str) -> None:
    (workdir / "Snakefile").write_text(textwrap.dedent(text))


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def tres(row: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in row["AllocTRES"].split(",") if "=" in item)


def test_up_is_idempotent(slurm_cluster: Cluster):
    r = run([CLUSTER_SH, "up"], timeout=120)
    assert r.returncode == 0, r.stdout
    assert "already up" in r.stdout
    st = run([CLUSTER_SH, "status"], timeout=60)
    assert st.returncode == 0, st.stdout
    env = parse_env(run([CLUSTER_SH, "env"], timeout=30).stdout)
    assert env["LOSS_SLOPE_SLURM_PARTITION"] == slurm_cluster.partition
    assert int(env["LOSS_SLOPE_SLURM_GPUS"]) >= 2


GPU_LOCAL_RETRY = """
    localrules: all, local_summary

    rule all:
        input: "local.txt", "pack_flaky.txt"

    # like the workflow's rule: it sets its CPUs (probe_k_max x training.threads) and memory
    # (a pack of probe_k_max runs)
    rule probe_capacity:
        output: "probe.txt"
        threads: 4
        resources:
            cpus_per_task=4,
            mem_mb=12000,
        shell: 'echo "CVD=$CUDA_VISIBLE_DEVICES JOB=$SLURM_JOB_ID" > {output}'

    rule local_summary:
        input: "probe.txt"
        output: "local.txt"
        shell: 'echo "JOB=${{SLURM_JOB_ID:-none}}" > {output}'

    # fails on its first attempt (no marker yet), succeeds on the retry
    rule train_pack:
        output: "pack_{pack}.txt"
        threads: 1
        resources:
            # the in-job way to see the attempt number (1 = first try)
            attempt_no=lambda wc, attempt: attempt,
        shell:
            '''
            echo "$SLURM_JOB_ID {resources.attempt_no}" >> attempts.txt
            if [ ! -e marker ]; then touch marker; echo "failing on purpose" >&2; exit 1; fi
            echo "CVD=$CUDA_VISIBLE_DEVICES JOB=$SLURM_JOB_ID" > {output}
            '''
"""


def test_gpu_job_localrule_and_retry(run_snakemake, slurm_cluster: Cluster, tmp_path: Path):
    write_snakefile(tmp_path, GPU_LOCAL_RETRY)
    backoff = 8
    sm = run_snakemake(tmp_path, backoff_s=backoff)
    assert sm.result.returncode == 0, sm.output[-8000:]
    rows = slurm_cluster.sacct(sm.run_id)

    # --- went through sbatch: every cluster job is in accounting under this run
    by_rule: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_rule.setdefault(row["Comment"], []).append(row)
    assert set(by_rule) == {
        "rule_probe_capacity",
        "rule_train_pack_wildcards_flaky",
    }, rows
    for row in rows:
        assert row["Partition"] == slurm_cluster.partition
        assert row["Account"] == slurm_cluster.account
        assert tres(row)["gres/gpu"] == "1"

    # --- the GPU job saw its fake GPU and its SLURM job id
    probe = by_rule["rule_probe_capacity"]
    assert len(probe) == 1 and probe[0]["State"] == "COMPLETED"
    m = re.fullmatch(r"CVD=(\d+) JOB=(\d+)\n", (tmp_path / "probe.txt").read_text())
    assert m, (tmp_path / "probe.txt").read_text()
    assert 0 <= int(m.group(1)) < slurm_cluster.gpus
    assert m.group(2) == probe[0]["JobIDRaw"]
    # the rule's CPUs and memory for probe_capacity reached sbatch
    assert tres(probe[0])["cpu"] == "4" and tres(probe[0])["mem"] == "12000M"
    # sbatch logs are kept for successful jobs too
    assert (tmp_path / f"logs/slurm/rule_probe_capacity/{m.group(2)}.log").is_file()

    # --- the local rule ran on the submit host, outside SLURM
    assert (tmp_path / "local.txt").read_text() == "JOB=none\n"

    # --- the retry: a second, new SLURM job, started after the back-off
    flaky = sorted(by_rule["rule_train_pack_wildcards_flaky"], key=lambda r: int(r["JobIDRaw"]))
    assert [r["State"] for r in flaky] == ["FAILED", "COMPLETED"], flaky
    attempts = (tmp_path / "attempts.txt").read_text().split("\n")[:-1]
    assert attempts == [f"{flaky[0]['JobIDRaw']} 1", f"{flaky[1]['JobIDRaw']} 2"]
    retry = flaky[1]
    waited = (ts(retry["Eligible"]) - ts(retry["Submit"])).total_seconds()
    assert waited >= backoff - 1, f"retry eligible after {waited}s, back-off {backoff}s"
    assert ts(retry["Start"]) >= ts(retry["Eligible"])
    assert re.search(rf"SLURM jobid {retry['JobIDRaw']} ", sm.output)


ALWAYS_FAILS = """
    localrules: all

    rule all:
        input: "pack_doomed.txt"

    rule train_pack:
        output: "pack_{pack}.txt"
        shell: 'echo "doomed attempt in job $SLURM_JOB_ID" >&2; exit 3'
"""


def test_job_that_keeps_failing_shows_its_log(run_snakemake, slurm_cluster: Cluster, tmp_path: Path):
    write_snakefile(tmp_path, ALWAYS_FAILS)
    sm = run_snakemake(tmp_path, "--retries", "1", backoff_s=1)
    assert sm.result.returncode != 0
    rows = sorted(slurm_cluster.sacct(sm.run_id), key=lambda r: int(r["JobIDRaw"]))
    assert [r["State"] for r in rows] == ["FAILED", "FAILED"], rows
    last = rows[-1]["JobIDRaw"]
    log = tmp_path / f"logs/slurm/rule_train_pack/doomed/{last}.log"
    # the final error names the SLURM log of the last attempt ...
    assert re.search(rf"log: {re.escape(str(log))} \(check log file", sm.output), sm.output[-6000:]
    # ... which exists and holds the job's stderr
    assert f"doomed attempt in job {last}" in log.read_text()


TWO_PACKS = """
    localrules: all

    rule all:
        input: expand("pack_{p}.txt", p=["a", "b"])

    rule train_pack:
        output: "pack_{pack}.txt"
        threads: 2
        resources: cpus_per_task=4, mem_mb=14000   # set by the rule, as the workflow's train_pack does
        shell:
            '''
            start=$(date +%s.%N); sleep 8; end=$(date +%s.%N)
            echo "$start $end $CUDA_VISIBLE_DEVICES $SLURM_JOB_ID" > {output}
            '''
"""


def test_two_gpu_jobs_run_concurrently(run_snakemake, slurm_cluster: Cluster, tmp_path: Path):
    assert slurm_cluster.gpus >= 2
    slurm_cluster.wait_idle(300)  # other users' jobs would serialise ours
    write_snakefile(tmp_path, TWO_PACKS)
    sm = run_snakemake(tmp_path)
    assert sm.result.returncode == 0, sm.output[-8000:]
    recs = []
    for p in "ab":
        start, end, cvd, job = (tmp_path / f"pack_{p}.txt").read_text().split()
        recs.append((float(start), float(end), cvd, job))
    (s1, e1, g1, _), (s2, e2, g2, _) = recs
    assert max(s1, s2) < min(e1, e2), f"no overlap: {recs}"
    assert {g1, g2} == {"0", "1"}, f"both packs must get a distinct fake GPU: {recs}"
    rows = slurm_cluster.sacct(sm.run_id)
    assert sorted(r["JobIDRaw"] for r in rows) == sorted(r[3] for r in recs)
    for row in rows:
        t = tres(row)
        # the rule's cpus_per_task and mem_mb reach sbatch unchanged
        assert (t["cpu"], t["mem"], t["gres/gpu"]) == ("4", "14000M", "1"), row
