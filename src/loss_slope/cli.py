"""``loss-slope``: command-line tools around a running or finished study.

    loss-slope status [--root DIR] [--configfile config/study.yaml] [--work-root work] [--max-error-attempts 3]

``status`` prints, per variant, how many runs are done / running / failed /
waiting, the optimizer steps done of the total and an ETA from the measured
step rates; then one line per running run (step, current training loss, rate,
ETA, pack, SLURM job, host). It reads only the work tree (``work/``) and
``results/`` (the pack registries): no Snakemake, no torch, no SLURM query,
so it is cheap enough to run every minute (``watch -n 60 loss-slope status``).

A run is

* **done**: its work tree has ``done.json``;
* **running**: its lock file (``{run}.lock``) names a holder whose heartbeat is recent;
* **failed**: it failed and was given up, or its last attempt failed and nothing holds it now;
* **waiting**: anything else (planned, not started, or stopped at its time budget and waiting for the next job).

    loss-slope retry VARIANT/RUN [VARIANT/RUN ...] [--root DIR] [--configfile config/study.yaml] [--work-root work]

``retry`` starts failed runs again, for a cause fixed outside what the run trains (a bad node, a
full disk, a run-control setting such as ``trainer.threads``): it gives each run a fresh error
budget (a ``retry`` record in its ``launcher.jsonl``; the errors before it count no more, so a
run given up is no longer) and removes the output of the pack that trains it
(``results/packs/{variant}/{pack}.json``), so the next ``snakemake`` resubmits that pack: its
finished runs skip themselves, the retried run resumes from its latest checkpoint, and the jobs
after training rerun for the pack's runs. A run that is done, in no pack planned now (never
planned, or removed from the config), or with no error recorded since its last retry (another
work tree: pass the study's ``--configfile``) is refused, and then nothing is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from loss_slope.pipeline.paths import DEFAULT_WORK_ROOT, PACK_DONE, PACK_REGISTRY
from loss_slope.train.lock import lock_path

ALIVE_S = 180.0  # a lock touched within this many seconds is held by a live trainer (heartbeat: 30 s)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _last_row(csv: Path) -> dict | None:
    """The header and last complete line of a CSV table, read from its end."""
    try:
        with open(csv, "rb") as fh:
            header = fh.readline().decode().strip().split(",")
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:] if size <= 4096 else lines):
        parts = line.split(",")
        if len(parts) == len(header) and parts[0].isdigit():
            return dict(zip(header, parts))
    return None


def _attempts(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def run_state(
    run_dir: Path, *, now: float, max_errors: int = 3, total_hint: int | None = None, settings: str | None = None
) -> dict:
    """One run's state. ``settings``: the digest its pack was planned with (the registry's); only
    errors under it count, as the pack launcher counts them (a changed run has a fresh budget)."""
    from loss_slope.train.attempts import read_launcher
    from loss_slope.train.pack import given_up, read_errors

    st = {
        "run": run_dir.name,
        "state": "waiting",
        "steps": 0,
        "total": total_hint,
        "loss": None,
        "rate": None,
        "pack": None,
        "job": None,
        "host": None,
    }
    done = _read_json(run_dir / "done.json")
    info = _read_json(run_dir / "run_info.json") or {}
    if info.get("total_steps"):
        st["total"] = int(info["total_steps"])
    if done:
        st.update(
            state="done",
            steps=int(done.get("total_steps") or 0),
            total=int(done.get("total_steps") or 0),
            outcome=done.get("status"),
        )
        return st
    last = _last_row(run_dir / "tables" / "steps.csv")
    if last:
        st["steps"] = int(last["step"]) + 1
        loss = last.get("loss_train_nats")
        st["loss"] = float(loss) if loss not in (None, "") else None
    lock = lock_path(run_dir)
    holder = _read_json(lock) if lock.exists() else None
    try:
        fresh = holder is not None and now - lock.stat().st_mtime < ALIVE_S
    except OSError:
        fresh = False
    attempts = _attempts(run_dir / "attempts.jsonl")
    if fresh:
        st.update(
            state="running", pack=holder.get("slurm_pack"), job=holder.get("slurm_job_id"), host=holder.get("host")
        )
        starts = [a for a in attempts if a.get("event") == "start"]
        if starts and last:
            s0 = starts[-1]
            dt = float(last["time"]) - float(s0["time"])
            ds = int(last["step"]) + 1 - int(s0.get("start_step") or 0)
            if dt > 0 and ds > 0:
                st["rate"] = ds / dt
        return st
    errors = read_errors(run_dir, settings)
    ends = [a for a in attempts if a.get("event") == "end"]
    retried = [r.get("time") or 0.0 for r in read_launcher(run_dir) if r.get("event") == "retry"]
    # a failed last attempt counts unless `loss-slope retry` came after it
    last_failed = bool(
        ends and ends[-1].get("status") == "failed" and not any(t > ends[-1].get("time", 0.0) for t in retried)
    )
    if (errors and given_up(errors, max_errors)) or (last_failed and (settings is None or errors)):
        st["state"] = "failed"
        st["error"] = errors[-1]["error"] if errors else ends[-1].get("error")
    return st


def _planned_runs(root: Path) -> dict[str, dict[str, str | None]]:
    """Runs of each variant from the pack registries (:data:`loss_slope.pipeline.paths.PACK_REGISTRY`),
    with the settings digest each was planned with (``None``: not recorded), less those dropped
    from their pack (removed from the config; one with a work tree is still listed)."""
    from loss_slope.probe.plan import read_registry

    out: dict[str, dict[str, str | None]] = {}
    for reg in sorted(root.glob(PACK_REGISTRY.format(variant="*"))):
        runs = out.setdefault(reg.parent.name, {})
        for members in read_registry(reg).values():
            for m in members:
                if not m.get("dropped"):
                    runs[m["run"]] = m.get("settings")
    return out


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, m = divmod(seconds // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{seconds % 60:02d}s"


def collect(root: Path, work_root: Path, max_errors: int = 3, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    variants = _planned_runs(root)
    if work_root.is_dir():
        for vdir in sorted(p for p in work_root.iterdir() if p.is_dir()):
            runs = variants.setdefault(vdir.name, {})
            for rdir in sorted(vdir.iterdir()):
                if rdir.is_dir() and ".stale-" not in rdir.name and rdir.name not in runs:
                    runs[rdir.name] = None
    table = {}
    for v, runs in variants.items():
        states = [
            run_state(work_root / v / r, now=now, max_errors=max_errors, settings=digest) for r, digest in runs.items()
        ]
        totals = [s["total"] for s in states if s["total"]]
        typical = max(totals) if totals else None
        for s in states:
            s["total"] = s["total"] or typical
        table[v] = states
    return table


def format_status(table: dict, now: float | None = None) -> str:
    lines = [
        f"{'variant':<14} {'done':>5} {'running':>8} {'failed':>7} {'waiting':>8} {'steps done / total':>24} {'ETA':>8}"
    ]
    running_lines, failed_lines = [], []
    for v, states in table.items():
        count = {k: sum(1 for s in states if s["state"] == k) for k in ("done", "running", "failed", "waiting")}
        steps = sum(s["steps"] for s in states)
        total = sum(s["total"] or 0 for s in states)
        rates = [s["rate"] for s in states if s["rate"]]
        open_runs = [s for s in states if s["state"] in ("running", "waiting")]
        unknown = any(not s["total"] for s in states)
        left = sum(max(0, (s["total"] or 0) - s["steps"]) for s in open_runs)
        if not open_runs:
            eta = 0
        elif rates and not unknown:
            eta = left / sum(rates)
        else:
            eta = None  # no measured rate yet, or the size of a run not known yet
        pct = f" ({100 * steps / total:.0f}%)" if total and not unknown else ""
        shown = f"{steps:,} / {'?' if unknown else f'{total:,}'}{pct}"
        lines.append(
            f"{v:<14} {count['done']:>5} {count['running']:>8} {count['failed']:>7} {count['waiting']:>8} "
            f"{shown:>24} {_fmt_eta(eta):>8}"
        )
        for s in states:
            if s["state"] == "running":
                eta_run = ((s["total"] or 0) - s["steps"]) / s["rate"] if s["rate"] else None
                loss = f"{s['loss']:.4f}" if s["loss"] is not None else "-"
                rate = f"{s['rate']:.2f}/s" if s["rate"] else "-"
                running_lines.append(
                    f"  {v}/{s['run']:<28} step {s['steps']:>7,} / {s['total'] or '?':<7} "
                    f"loss {loss:>8}  {rate:>9}  ETA {_fmt_eta(eta_run):>7}  "
                    f"pack {s['pack'] or '-'}  job {s['job'] or '-'}  host {s['host'] or '-'}"
                )
            elif s["state"] == "failed":
                failed_lines.append(f"  {v}/{s['run']}: {s.get('error') or 'failed'}")
    out = lines
    if running_lines:
        out += ["", "running:"] + running_lines
    if failed_lines:
        out += ["", "failed (once the cause is fixed: loss-slope retry VARIANT/RUN, then snakemake):"] + failed_lines
    if not table:
        out += ["(no runs planned or started yet)"]
    return "\n".join(out)


def retry(root: Path, work_root: Path, runs: list[str]) -> list[str]:
    """Give each ``VARIANT/RUN`` a fresh error budget and remove its pack's output (module doc).
    Returns what was done, a line per run; raises ``ValueError`` naming every run refused (then
    nothing is changed)."""
    from loss_slope.probe.plan import read_registry
    from loss_slope.train.pack import read_errors, record_retry

    todo, refused = [], []
    for key in runs:
        variant, sep, run = key.partition("/")
        if not (sep and variant and run and "/" not in run):
            refused.append(f"{key}: not VARIANT/RUN")
            continue
        run_dir = work_root / variant / run
        registry = root / PACK_REGISTRY.format(variant=variant)
        # a run removed from the config stays listed in its pack, marked dropped: that pack no longer trains it
        planned = [
            (p, m)
            for p, members in read_registry(registry).items()
            for m in members
            if m["run"] == run and not m.get("dropped")
        ]
        if (run_dir / "done.json").exists():
            refused.append(f"{key}: done ({run_dir / 'done.json'})")
        elif not planned:
            refused.append(f"{key}: in no pack planned in {registry} (removed from the config, or never planned)")
        elif not read_errors(run_dir, planned[0][1].get("settings")):
            # as the launcher counts them: under the settings the run is planned with now
            refused.append(
                f"{key}: no error recorded in {run_dir / 'launcher.jsonl'} under its current settings since its "
                "last retry (another work tree? pass the study's --configfile, or --work-root)"
            )
        else:
            todo.append((key, run_dir, root / PACK_DONE.format(variant=variant, pack=planned[0][0])))
    if refused:
        raise ValueError("nothing retried; refused: " + "; ".join(refused))
    out = []
    for key, run_dir, pack_done in todo:
        record_retry(run_dir, by="loss-slope retry")
        removed = pack_done.exists()
        pack_done.unlink(missing_ok=True)
        out.append(f"{key}: errors before now count no more" + (f"; removed {pack_done}" if removed else ""))
    return out


def _study_paths(a) -> tuple[Path, Path, dict]:
    """The study's folder, its work tree and its config (``--root``, ``--work-root``, ``--configfile``)."""
    root = Path(a.root)
    cfg = {}
    if a.configfile:
        with open(a.configfile) as fh:
            cfg = yaml.safe_load(fh) or {}
    work = a.work_root or (cfg.get("paths") or {}).get("work_root") or DEFAULT_WORK_ROOT
    return root, Path(work) if Path(work).is_absolute() else root / work, cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="loss-slope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="progress of the study in this folder (reads work/ and results/ only)")
    rt = sub.add_parser("retry", help="start failed runs again: a fresh error budget, their packs resubmitted")
    rt.add_argument(
        "runs", nargs="+", metavar="VARIANT/RUN", help="the runs to retry (as `loss-slope status` names them)"
    )
    for p in (st, rt):
        p.add_argument("--root", default=".", help="the study's working directory (default: .)")
        p.add_argument(
            "--configfile",
            default=None,
            help="the study's config: its paths.work_root (and packing.max_error_attempts; the options below win)",
        )
        p.add_argument("--work-root", default=None, help="the runs' work tree (default: ROOT/work; paths.work_root)")
    st.add_argument(
        "--max-error-attempts", type=int, default=None, help="packing.max_error_attempts of the study (default 3)"
    )
    st.add_argument("--json", action="store_true", help="print the per-run states as JSON")
    a = ap.parse_args(argv)
    root, work_root, cfg = _study_paths(a)
    if a.command == "retry":
        try:
            lines = retry(root, work_root, a.runs)
        except ValueError as err:
            print(f"loss-slope retry: {err}", file=sys.stderr)
            return 2
        print("\n".join(lines + ["run snakemake again to train them"]))
        return 0
    max_errors = a.max_error_attempts or (cfg.get("packing") or {}).get("max_error_attempts") or 3
    table = collect(root, work_root, max_errors=int(max_errors))
    if a.json:
        print(json.dumps(table, indent=1))
    else:
        print(format_status(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
