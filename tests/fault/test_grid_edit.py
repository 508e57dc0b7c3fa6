"""Editing a finished study: only the runs whose own settings changed, and the packs that hold them, are planned."""

import copy
import json
import os
import re
import shlex

import pytest
import yaml

from _util import REPO, run_cmd, snakemake_bin
from loss_slope.pipeline.paths import PROBE_JSON, PROBE_MD, PROBE_PNG, RUNS_PER_GPU
from loss_slope.study.run_control import is_run_control

pytestmark = pytest.mark.slow

CFG = {
    "study": "grid-edit",
    "data": {"name": "digits"},
    "training": {
        "epochs": 3,
        "batch_size": 32,
        "schedule": "constant",
        "warmup_epochs": 1,
        "threads": 1,
        "flush_every_steps": 44,
        "hydra_overrides": ["model.base_width=4", "trainer.monitors.enabled=false"],
    },
    "variants": {
        "S-core": {"experiment": "s_core"},
        # one run: a variant's grid may differ from the study's
        "S-narrow": {"experiment": "s_narrow", "grid": {"seed": [0]}},
    },
    "grid": {"lr": [0.05], "weight_decay": [0.0005], "seed": [0, 1]},
    "paths": {"work_root": "scratch/work"},
    "analysis": {"fit": {"early_window": [1, 3], "window_shift": 1}},
}


def _jobs(text):
    """(rule, wildcards) of each job a Snakemake log lists (a dry-run says rule or checkpoint, a local
    run localrule or localcheckpoint)."""
    return re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    wildcards: (.*)$", text, flags=re.M)


def test_editing_a_finished_study_plans_only_what_changed(tmp_path):
    config = copy.deepcopy(CFG)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [snakemake_bin(), "-s", REPO / "Snakefile", "--directory", tmp_path, "--cores", "2", "--configfile", cfg]
    env = {"WORKERS_PER_GPU": "2"}
    run_cmd(cmd, timeout=900, env=env)
    assert (tmp_path / "scratch/work/S-core/lr0.05-wd0.0005-s0/done.json").exists()  # paths.work_root
    assert sorted(p.name for p in (tmp_path / "results/runs/S-core").iterdir()) == [
        "lr0.05-wd0.0005-s0.json",
        "lr0.05-wd0.0005-s1.json",
    ]
    old_packs = {p.stem for p in (tmp_path / "results/packs/S-core").iterdir()}
    # a pack's spec holds what its runs train, no run control: the pack command passes the run control
    # configured when it runs, so a key removed from the config is gone from packs planned before it
    specs = list((tmp_path / "results/plan").glob("*/packs/*.json"))
    planned = [
        o
        for spec in specs
        for members in json.loads(spec.read_text())["packs"].values()
        for m in members
        for o in m["overrides"]
    ]
    assert specs and "seed=0" in planned and not [o for o in planned if is_run_control(o)], planned

    # nothing changed: nothing to do
    out = run_cmd([*cmd, "-n"], timeout=300, env=env)
    assert not _jobs(out.stdout), out.stdout

    # run control changed and the work tree moved (with its content): nothing to do either
    (tmp_path / "scratch/work").rename(tmp_path / "scratch/moved work")
    config["paths"]["work_root"] = "scratch/moved work"
    config["training"].update(threads=2, flush_every_steps=11)
    config["variants"]["S-narrow"]["hydra_overrides"] = ["trainer.flush_every_steps=7"]
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd([*cmd, "-n"], timeout=300, env=env)
    assert not _jobs(out.stdout), out.stdout
    # and a pack planned before the change trains with the current values when it runs again
    out = run_cmd([*cmd, "-n", "-p", "--forcerun", "train_pack"], timeout=300, env=env)
    packs = [shlex.split(line) for line in out.stdout.splitlines() if "loss_slope.train.pack" in line]
    assert packs
    for p in packs:
        control = json.loads(p[p.index("--run-control") + 1])
        # S-narrow's own flushing wins over the study's, as in its runs' planned overrides
        assert control == {
            "S-core": ["trainer.threads=2", "trainer.flush_every_steps=11"],
            "S-narrow": ["trainer.threads=2", "trainer.flush_every_steps=11", "trainer.flush_every_steps=7"],
        }, control
        assert p[p.index("--run-control") + 2].startswith("trainer.max_time_s=")
    config["training"].update(threads=1, flush_every_steps=44)
    config["variants"]["S-narrow"]["hydra_overrides"] = []

    # a seed removed after its run finished: its pack (shared with seed 1) is neither re-planned
    # nor resubmitted, and no job of the run left in it reruns; only the study's tables and report
    config["grid"]["seed"] = [1]
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd(cmd, timeout=600, env=env)
    rules = {rule for rule, _ in _jobs(out.stdout + out.stderr)}
    assert rules and not rules & {"pack_spec", "train_pack", *PER_RUN}, out.stderr
    # added back: it returns to its pack, finished, so only the study's tables and report again
    config["grid"]["seed"] = [0, 1]
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd([*cmd, "-n"], timeout=300, env=env)
    rules = {rule for rule, _ in _jobs(out.stdout)}
    assert rules and not rules & {"pack_spec", "train_pack", *PER_RUN}, out.stdout
    run_cmd(cmd, timeout=600, env=env)

    # two more seeds for S-core (S-narrow keeps its own grid)
    config["grid"]["seed"] = [0, 1, 2, 3]
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd([*cmd, "-n"], timeout=300, env=env)
    jobs = _jobs(out.stdout)
    per_run = [w for rule, w in jobs if rule in PER_RUN]
    assert per_run and all("S-core" in w and ("-s2" in w or "-s3" in w) for w in per_run), jobs
    packs = [w for rule, w in jobs if rule == "train_pack"]
    assert len(packs) == 1 and not any(p in packs[0] for p in old_packs), jobs
    # the reason of a re-planned job stays short
    assert max(len(line) for line in out.stdout.splitlines() if "reason:" in line and "pack" in line) < 400

    # a change to what S-narrow's runs train (a variant's own override): its
    # pack and its run are planned again, nothing of S-core's finished runs
    config["grid"]["seed"] = [0, 1]
    config["variants"]["S-narrow"]["hydra_overrides"] = ["trainer.gradient_clip_val=1.0"]
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd([*cmd, "-n"], timeout=300, env=env)
    jobs = _jobs(out.stdout)
    trained = [w for rule, w in jobs if rule in ("pack_spec", "train_pack", *PER_RUN)]
    assert trained and all("variant=S-narrow" in w for w in trained), jobs
    assert {rule for rule, _ in jobs} >= {"train_pack", *PER_RUN}, jobs
    assert not any("S-core" in w for _, w in jobs), jobs


# the jobs of one run after its training: they depend on the run, not on its pack
PER_RUN = ("run_done", "to_parquet", "validate_run", "fit_run")


def test_run_control_and_grid_edits_of_a_probed_study_rerun_neither_probe_nor_packs(tmp_path):
    # N measured by the probe (no WORKERS_PER_GPU): the probe's params are its own settings and the
    # variant's overrides less the per-run ones, so packing run control and a new LR rerun no probe,
    # no plan and no finished pack
    config = copy.deepcopy(CFG)
    config["training"]["epochs"] = 2
    config["analysis"]["fit"] = {"early_window": [1, 2], "window_shift": 1}
    config["variants"] = {"S-narrow": {"experiment": "s_narrow"}}
    config["grid"]["seed"] = [0]
    config["packing"] = {"probe_k_max": 1, "probe_steps": 5, "probe_warmup_steps": 1}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [snakemake_bin(), "-s", REPO / "Snakefile", "--directory", tmp_path, "--cores", "2", "--configfile", cfg]
    run_cmd(cmd, timeout=900, env={"WORKERS_PER_GPU": ""})
    assert (tmp_path / "results/probe/S-narrow.json").exists()
    (old_pack,) = [p.stem for p in (tmp_path / "results/packs/S-narrow").iterdir()]
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*") if p.is_file()}

    # N measured again (a forced probe; a probe key changed does the same): the probe and the
    # plan rerun, and nothing of the planned pack or its runs
    out = run_cmd([*cmd[:-2], "--forcerun", "probe_capacity", *cmd[-2:]], timeout=600, env={"WORKERS_PER_GPU": ""})
    assert sorted(rule for rule, _ in _jobs(out.stdout + out.stderr)) == ["plan_packs", "probe_capacity"], out.stderr
    changed = {p.relative_to(tmp_path).as_posix() for p, t in finished.items() if p.stat().st_mtime_ns != t}
    measured = {f.format(variant="S-narrow") for f in (PROBE_JSON, PROBE_MD, PROBE_PNG, RUNS_PER_GPU)}
    assert changed and changed <= measured, changed
    # and a switch to a fixed N plans nothing either (the pack was planned: N decides only new ones)
    out = run_cmd([*cmd, "-n"], timeout=300, env={"WORKERS_PER_GPU": "3"})
    assert not _jobs(out.stdout), out.stdout

    config["packing"].update(max_error_attempts=5, gpu_mismatch="warn", runtime_minutes=600, host_mem_margin_mb=3000)
    # run control, study-wide and the variant's own: the probe gets the current values when it runs
    config["training"].update(threads=2, flush_every_steps=33)
    config["variants"]["S-narrow"]["hydra_overrides"] = ["trainer.log_every_steps=50"]
    config["grid"]["lr"] = [0.02, 0.05]  # a new LR before the one trained (the first run changes)
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd([*cmd, "-n"], timeout=300, env={"WORKERS_PER_GPU": ""})
    jobs = _jobs(out.stdout)
    rules = {rule for rule, _ in jobs}
    assert not rules & {"probe_capacity", "plan_packs"}, out.stdout
    assert [w for rule, w in jobs if rule == "train_pack"] and not any(
        old_pack in w for rule, w in jobs if rule in ("pack_spec", "train_pack")
    ), jobs
    per_run = [w for rule, w in jobs if rule in PER_RUN]
    assert per_run and all("lr0.02" in w for w in per_run), jobs

    # a change to what the trained run trains: the trainer will set its old tree aside, so its pack
    # asks for the time of the whole run, not the minimum left by the old tree's steps (a slow step,
    # written into the plan without touching its modification time, makes the difference large)
    plan = tmp_path / RUNS_PER_GPU.format(variant="S-narrow")
    before = plan.stat()
    measured = json.loads(plan.read_text())
    assert set(measured["step_s_by_k"]) == {"1"}  # the probe's one level (probe_k_max 1)
    # the pack holds one run: its runtime reads the step time measured with one run on the GPU
    plan.write_text(json.dumps({**measured, "step_s": 0.001, "step_s_by_k": {"1": 30.0}}))
    os.utime(plan, ns=(before.st_atime_ns, before.st_mtime_ns))
    total = json.loads((tmp_path / "scratch/work/S-narrow/lr0.05-wd0.0005-s0/done.json").read_text())["total_steps"]
    config["grid"]["lr"] = [0.05]
    config["variants"]["S-narrow"]["hydra_overrides"] = ["trainer.gradient_clip_val=1.0"]
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd([*cmd, "-n", "-p"], timeout=300, env={"WORKERS_PER_GPU": ""})
    runtimes = re.findall(r"^rule train_pack:\n(?:    .*\n)*?    resources: .*\bruntime=(\d+)", out.stdout, flags=re.M)
    assert runtimes and all(int(m) >= total * 30.0 / 60 for m in runtimes), (total, runtimes, out.stdout)


def test_moving_the_data_reruns_nothing_and_packs_train_from_the_new_place(tmp_path):
    # the jobs depend on a marker that does not name the data's folder; the pack command says where it is now
    from loss_slope.data.cifar10 import FOLDER, TEST_FILE, TRAIN_FILES

    def place(root):
        (root / FOLDER).mkdir(parents=True)
        for f in (*TRAIN_FILES, TEST_FILE):
            (root / FOLDER / f).write_bytes(b"")  # presence is what the data rule checks

    config = copy.deepcopy(CFG)
    config["data"] = {"name": "cifar10", "root": str(tmp_path / "a"), "download": False}
    config["packing"] = {"runs_per_gpu": 1}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    marker = "results/data/cifar10.json"

    def cmd(*args):  # targets and flags before --configfile (which takes every argument after it)
        return [
            snakemake_bin(),
            *args,
            "-s",
            REPO / "Snakefile",
            "--directory",
            tmp_path,
            "--cores",
            "1",
            "--configfile",
            cfg,
        ]

    failed = run_cmd(cmd(marker), timeout=300, check=False)  # not there yet: the error says where it looked
    assert failed.returncode != 0
    assert "CIFAR-10 is not at" in (tmp_path / "logs/prepare_cifar10/cifar10.log").read_text()
    place(tmp_path / "a")
    run_cmd(cmd(marker), timeout=300)

    (tmp_path / "a").rename(tmp_path / "b")
    config["data"]["root"] = str(tmp_path / "b")
    cfg.write_text(yaml.safe_dump(config))
    out = run_cmd(cmd("-n", marker), timeout=300)
    assert not _jobs(out.stdout), out.stdout
    out = run_cmd(cmd("-n", "-p"), timeout=300)
    packs = [line for line in out.stdout.splitlines() if "loss_slope.train.pack" in line]
    assert packs and all(
        line.rstrip().endswith(shlex.quote(f"data.root='{tmp_path / 'b'}'") + " > " + line.split(" > ")[-1])
        for line in packs
    )
    assert str(tmp_path / "a") not in out.stdout and "prepare_cifar10" not in {r for r, _ in _jobs(out.stdout)}


def test_packs_planned_with_a_fixed_n_train_when_the_study_switches_to_the_probe(tmp_path):
    # planned (not trained) with N fixed at 2, then N left to the probe: the planned pack keeps its
    # two runs and may start while the probe measures, before any runs_per_gpu.json exists
    config = copy.deepcopy(CFG)
    config["training"]["epochs"] = 2
    config["analysis"]["fit"] = {"early_window": [1, 2], "window_shift": 1}
    config["variants"] = {"S-narrow": {"experiment": "s_narrow"}}
    config["packing"] = {"probe_k_max": 1, "probe_steps": 5, "probe_warmup_steps": 1}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [snakemake_bin(), "-s", REPO / "Snakefile", "--directory", tmp_path, "--cores", "2", "--configfile", cfg]
    run_cmd([*cmd[:-2], "--until", "pack_spec", *cmd[-2:]], timeout=300, env={"WORKERS_PER_GPU": "2"})
    (spec,) = (tmp_path / "results/plan/S-narrow/packs").iterdir()
    assert not (tmp_path / "results/plan/S-narrow/runs_per_gpu.json").exists()

    out = run_cmd(cmd, timeout=900, env={"WORKERS_PER_GPU": ""})
    rules = sorted(rule for rule, _ in _jobs(out.stdout + out.stderr))
    assert rules.count("train_pack") == 1 and "probe_capacity" in rules and "pack_spec" not in rules, rules
    (pack,) = (tmp_path / "results/packs/S-narrow").iterdir()
    assert pack.stem == spec.stem and len(json.loads(pack.read_text())["runs"]) == 2
    assert json.loads((tmp_path / "results/plan/S-narrow/runs_per_gpu.json").read_text())["source"] == "probe"
