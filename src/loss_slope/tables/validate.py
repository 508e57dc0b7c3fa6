"""Completeness and range checks of one run's Parquet tables.

The result says *why* a run is invalid; nothing here drops a run. Later
stages read ``passed`` and the failed checks and decide what to do.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loss_slope.jsonio import write_json
from loss_slope.tables.arrays import read_columns
from loss_slope.tables.schema import LN2
from loss_slope.tables.validate_monitors import check_monitors
from loss_slope.train.schedule import Schedule
from loss_slope.train.val_schedule import validation_steps

REL_TOL = 1e-9


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ValidationReport:
    variant: str
    run: str
    passed: bool = True
    checks: list[Check] = field(default_factory=list)
    n_steps: int = 0
    n_val: int = 0
    expected_steps: int | None = None
    expected_val: int | None = None
    diverged: dict | None = None  # the training's divergence outcome, if it stopped a diverged run

    def add(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(passed), detail))
        self.passed &= bool(passed)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = [f"{c.name}: {c.detail}" for c in self.failures]
        if not self.passed:
            d["status"] = "invalid"
        elif self.diverged:
            d["status"] = "diverged"  # complete, trustworthy tables of a run that diverged
            d["reasons"] = [f"diverged: {self.diverged.get('reason')}"]
        else:
            d["status"] = "valid"
        return d

    def summary(self) -> str:
        head = (
            f"{self.variant}/{self.run}: {'INVALID' if not self.passed else 'DIVERGED' if self.diverged else 'PASSED'}"
        )
        head += f" ({self.n_steps} step rows, {self.n_val} validation rows)"
        lines = [head] + [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines) + "\n"


def _first_bad(mask: np.ndarray, steps: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    return f"{len(idx)} row(s), first at step {int(steps[idx[0]])}" if len(idx) else ""


def _rel_close(a: np.ndarray, b: np.ndarray, tol: float = REL_TOL) -> np.ndarray:
    return np.abs(a - b) <= tol * np.maximum(np.abs(b), 1e-300)


def validate_run(
    *, steps_parquet, val_parquet, convert_report, run_info, expected: dict, monitors: dict | None = None
) -> ValidationReport:
    """Check one run. ``expected`` holds the study config's lr, weight_decay, seed, variant, run.

    ``monitors`` maps ``curvature``/``noise``/``checkpoints`` to their Parquet
    files; their cadence is checked against run_info.json (tables/validate_monitors.py).
    """
    rep = ValidationReport(variant=expected["variant"], run=expected["run"])
    conv = json.loads(Path(convert_report).read_text())
    conv_errors = [e for t in conv["tables"].values() for e in t["errors"]]
    rep.add("conversion", conv["ok"], "; ".join(conv_errors[:5]) if conv_errors else "all tables parsed exactly")
    info = json.loads(Path(run_info).read_text())

    # the run trained what the study config asks for
    mism = []
    for key, got in (("lr", info.get("lr")), ("weight_decay", info.get("weight_decay")), ("seed", info.get("seed"))):
        if got is None or not math.isclose(float(got), float(expected[key]), rel_tol=1e-12):
            mism.append(f"{key}: trained {got}, config {expected[key]}")
    rep.add("config_matches", not mism, "; ".join(mism) or "lr, weight_decay and seed match the study config")

    spe, epochs, vpe = int(info["steps_per_epoch"]), int(info["epochs"]), int(info["val_per_epoch"])
    total = spe * epochs
    outcome = info.get("outcome") or {}
    diverged_at = None
    if outcome.get("status") == "diverged":
        # a diverged run stopped early on purpose: its tables must be complete up to the stop
        rep.diverged = outcome
        diverged_at = int(outcome["diverged_at_step"])
        total = int(outcome["steps_done"])
    rep.expected_steps, rep.expected_val = total, epochs * vpe  # the validations due up to the stop: below
    # numpy arrays without pandas (loss_slope.tables.arrays): pandas alone costs a job ~0.3 s of CPU
    s = read_columns(steps_parquet)
    v = read_columns(val_parquet)
    rep.n_steps, rep.n_val = len(s), len(v)
    if not conv["ok"]:
        return rep

    # ---- completeness ---------------------------------------------------
    steps = s["step"]
    exact = len(steps) == total and np.array_equal(np.sort(steps), np.arange(total))
    detail = f"{len(steps)} rows for {total} steps"
    if not exact:
        have = set(steps.tolist())
        missing = [i for i in range(total) if i not in have]
        extra = sorted(have - set(range(total)))
        dup = len(steps) - len(have)
        detail += (
            f"; missing {len(missing)} (first {missing[:3]}), duplicated {dup}, "
            f"outside 0..{total - 1} {len(extra)} (first {extra[:3]})"
        )
    rep.add("steps_exactly_once", exact, detail)
    back = np.concatenate(([False], np.diff(steps) <= 0))  # a row at or below the one before it
    rep.add("steps_in_order", not back.any(), _first_bad(back, steps) or "step column strictly increasing")
    ep_ok = _rel_close(s["epoch"], steps / spe, 1e-12)
    rep.add("epoch_column", bool(ep_ok.all()), _first_bad(~ep_ok, steps) or "epoch = step / steps_per_epoch")

    vsteps = v["step"]
    try:
        want = validation_steps(epochs, spe, vpe)
    except ValueError as exc:  # a schedule Lightning cannot keep (trained before it was refused)
        rep.add("val_per_epoch", False, str(exc))
        want = np.asarray(vsteps)  # the monitor checks go on against the validations there are
    else:
        want = want[want <= total]
        rep.expected_val = len(want)
        vexact = len(vsteps) == len(want) and np.array_equal(vsteps, want)
        vdetail = f"{len(vsteps)} rows for {len(want)} expected ({vpe} per epoch)"
        if diverged_at is not None:
            vdetail += f" up to the stop at step {total}"
        if not vexact:
            have, expect = set(vsteps.tolist()), set(want.tolist())
            missing, extra = sorted(expect - have), sorted(have - expect)
            vdetail += (
                f"; missing at {len(missing)} step(s) (first {missing[:3]}), unexpected at {len(extra)} "
                f"(first {extra[:3]}), duplicated {len(vsteps) - len(have)}"
            )
        rep.add("val_per_epoch", vexact, vdetail)
    vep_ok = _rel_close(v["epoch"], vsteps / spe, 1e-12)
    rep.add("val_epoch_column", bool(vep_ok.all()), _first_bad(~vep_ok, vsteps) or "epoch = step / steps_per_epoch")

    # ---- ranges ---------------------------------------------------------
    if diverged_at is not None:
        # values from the divergence on are the finding, not a defect: range-check the steps before it
        s = s.rows(s["step"] < diverged_at)
        v = v.rows(v["step"] < diverged_at)  # the validation at that step saw the weights after it
        steps, vsteps = s["step"], v["step"]
    num = s.matrix(["time", "lr", "wd", "loss_train_nats", "loss_train_bits", "acc_train"])
    finite = np.isfinite(num).all(axis=1)
    rep.add("steps_finite", bool(finite.all()), _first_bad(~finite, steps) or "all values finite")
    loss = s["loss_train_nats"]
    negative = np.isfinite(loss) & (loss < 0)
    rep.add("loss_nonnegative", not negative.any(), _first_bad(negative, steps) or "loss_train_nats >= 0")
    acc = s["acc_train"]
    acc_bad = ~((acc >= 0) & (acc <= 1))
    rep.add("acc_in_unit_interval", not acc_bad.any(), _first_bad(acc_bad, steps) or "acc_train in [0, 1]")
    bits_ok = _rel_close(s["loss_train_bits"], loss / LN2) | ~np.isfinite(loss)
    rep.add(
        "bits_equal_nats_over_ln2", bool(bits_ok.all()), _first_bad(~bits_ok, steps) or f"relative tolerance {REL_TOL}"
    )

    sch = info["schedule"]
    schedule = Schedule(sch["kind"], int(sch["warmup_steps"]), int(sch["total_steps"]), float(sch["min_lr_ratio"]))
    want_lr = float(expected["lr"]) * np.array([schedule.factor(int(i)) for i in steps])
    lr_ok = _rel_close(s["lr"], want_lr)
    rep.add(
        "lr_follows_schedule",
        bool(lr_ok.all()),
        _first_bad(~lr_ok, steps) or f"{sch['kind']} with {sch['warmup_steps']} warm-up steps, peak {expected['lr']}",
    )
    wd_ok = _rel_close(s["wd"], np.full(len(s), float(expected["weight_decay"])))
    rep.add("wd_equals_config", bool(wd_ok.all()), _first_bad(~wd_ok, steps) or f"wd = {expected['weight_decay']}")

    vnum = v.matrix(["time", "loss_val_nats", "loss_val_bits", "acc_val", "grad_norm", "weight_norm"])
    vfin = np.isfinite(vnum).all(axis=1)
    rep.add("val_finite", bool(vfin.all()), _first_bad(~vfin, vsteps) or "all values finite")
    vl = v["loss_val_nats"]
    vrange = (vl >= 0) & ((v["acc_val"] >= 0) & (v["acc_val"] <= 1)) & (v["grad_norm"] >= 0) & (v["weight_norm"] > 0)
    vout = vfin & ~vrange  # the non-finite rows are val_finite's
    rep.add(
        "val_ranges",
        not vout.any(),
        _first_bad(vout, vsteps) or "loss >= 0, acc in [0, 1], grad_norm >= 0, weight_norm > 0",
    )
    vbits = _rel_close(v["loss_val_bits"], vl / LN2) | ~np.isfinite(vl)
    rep.add("val_bits_equal_nats_over_ln2", bool(vbits.all()), _first_bad(~vbits, vsteps) or "ok")

    # ---- monitor tables (curvature, noise, checkpoint sizes) ------------
    if monitors is not None:
        check_monitors(rep, info=info, total=total, val_steps=want, tables=monitors, diverged_at=diverged_at)
    return rep


def write_report(rep: ValidationReport, json_path, text_path) -> None:
    write_json(rep.to_dict(), json_path, indent=2, strict=False)
    Path(text_path).write_text(rep.summary())
