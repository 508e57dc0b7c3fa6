"""A simulated study's estimates against its known truth.

The simulated backend (``loss_slope.simulate``) writes each run's truth to
``truth.json`` in its work tree. The truth is a pure function of the run's config, so the
report recomputes it from the exported ``run_info.json`` it declares as input
(:func:`truths_from_run_infos`); :func:`load_truths`, for use outside the pipeline, reads a
run's ``truth.json`` beside the ``run_info.json`` it finds, or recomputes it.
:func:`compare_with_truth` sets the per-run table (``runs.parquet``) against
it; :func:`truth_markdown` renders the result as a section of ``summary.md``.

What is compared
----------------
- **H1 share**: the per-run decision ``h1_single_power_law`` (True/False/None)
  when the table has it, else ``r2_column >= r2_threshold``, against the truth
  (the clean curve is one power law after its knee, i.e. has no second break).
  The estimated share's interval should hold the true share: the study's
  cluster-aware interval (``stats["h1"]``) when the caller passes it, else a
  Wilson interval that treats runs as independent (and says so).
- **H2 ρ**: Spearman ρ of α_early vs best validation CE, pooled and within
  cells (values minus their cell means; a cell is variant × lr × weight decay),
  estimated vs the same statistic on the clean curves' α_early and best CE;
  with the study's H2 result (``stats["h2"]``), its defensible verdict and
  cluster-aware intervals are judged against the truth.
- **Knee error**: |log10(estimated knee epoch / true knee epoch)|, decades.
- **Exponent error**: α_early and α_full (log-log slope from the knee to the end)
  estimated minus their values on the clean curve; ``power_exponent`` against
  the model's exponent only when the schedule does not shape the curve
  (``schedule_effect == 0``; otherwise they measure different things).
- **Wrong verdicts**: the runs whose H1 decision or divergence status differs
  from the truth, and the true knees that were not found.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from loss_slope.analysis.stats import wilson_interval
from loss_slope.jsonio import jsonable
from loss_slope.pipeline.paths import DEFAULT_WORK_ROOT, EXPORT_DIR, EXPORT_ROOT, work_run
from loss_slope.simulate import model
from loss_slope.train.schedule import Schedule
from loss_slope.train.val_schedule import validation_steps

from .results import Correlation, H2Result, NotComputable, Share
from .truth_section import TruthComparison, TruthH1

__all__ = [
    "compare_with_truth",
    "load_truths",
    "truth_axis",
    "truth_for_run",
    "truth_markdown",
    "truths_from_run_infos",
]


# ---- truths ----------------------------------------------------------------------------------------------------------
def truth_for_run(run_info: Mapping[str, Any]) -> dict:
    """Recompute a simulated run's truth from its ``run_info.json`` (plus α_full on the clean curve)."""
    cfg = run_info["config"]
    if cfg["data"]["name"] != "simulated":
        raise ValueError(f"{run_info.get('variant')}/{run_info.get('run')} is not a simulated run")
    sim = model.settings(cfg["data"].get("simulation"))
    sch = run_info["schedule"]
    schedule = Schedule(sch["kind"], int(sch["warmup_steps"]), int(sch["total_steps"]), float(sch["min_lr_ratio"]))
    spe, epochs = int(run_info["steps_per_epoch"]), int(run_info["epochs"])
    kw = dict(
        variant=str(run_info.get("variant") or "none"),
        lr=float(run_info["lr"]),
        weight_decay=float(run_info["weight_decay"]),
        seed=int(run_info["seed"]),
        steps_per_epoch=spe,
        epochs=epochs,
        schedule=schedule,
    )
    truth = model.run_truth(sim, **kw, val_steps=validation_steps(epochs, spe, int(run_info["val_per_epoch"])))
    return add_derived(truth, sim, kw)


def add_derived(truth: dict, sim: Mapping[str, Any], kw: Mapping[str, Any]) -> dict:
    """α_full of the clean curve (from the true knee to the end) and the configured H2 correlations."""
    if "alpha_full_true" not in truth:
        p, tau, _ = model.run_params(sim, **kw)
        clean = model.clean_loss(p, tau)
        steps = np.arange(len(clean), dtype=float)
        sel = steps >= math.ceil(p["knee_step"])
        truth["alpha_full_true"] = model.ols_alpha(steps[sel], clean[sel])
    truth.setdefault("configured_rho_cell", float(sim["h2"]["rho_cell"]))
    truth.setdefault("configured_rho_within", float(sim["h2"]["rho_within"]))
    return truth


def _simulated(run_info: Mapping[str, Any]) -> bool:
    """Whether a ``run_info.json`` is a simulated run's (one trained on real data has no truth)."""
    return run_info.get("config", {}).get("data", {}).get("name") == "simulated"


def truths_from_run_infos(run_infos: Sequence[str | Path]) -> dict[str, dict]:
    """``"variant/run"`` → truth, recomputed from each of these ``run_info.json`` files alone
    (what the report declares as its input; a real run's file is skipped)."""
    out: dict[str, dict] = {}
    for path in run_infos:
        info = json.loads(Path(path).read_text())
        if _simulated(info):
            out[f"{info['variant']}/{info['run']}"] = truth_for_run(info)
    return out


def load_truths(root: str | Path = ".", runs: Sequence[tuple[str, str]] | None = None) -> dict[str, dict]:
    """``"variant/run"`` → truth, for every simulated run found under ``root``.

    Takes each run's ``run_info.json`` from ``results/export/{variant}/{run}/``, else from
    ``work/{variant}/{run}/``, and the ``truth.json`` of that same folder; without one (the
    export holds none), recomputes the truth from that ``run_info.json``. A ``truth.json`` of
    another folder may be another study's and is never read. ``runs`` limits the search to
    these (variant, run) pairs.
    """
    root = Path(root)
    if runs is None:
        found = set()
        for base in (root / EXPORT_ROOT, root / DEFAULT_WORK_ROOT):
            if base.is_dir():
                found |= {(d.parent.name, d.name) for d in base.glob("*/*") if d.is_dir() and ".stale-" not in d.name}
        runs = sorted(found)
    out: dict[str, dict] = {}
    for variant, run in runs:
        dirs = [
            root / EXPORT_DIR.format(variant=variant, run=run),
            root / work_run(DEFAULT_WORK_ROOT, variant, run),
        ]
        home = next((d for d in dirs if (d / "run_info.json").is_file()), None)
        if home is None:
            continue
        info = json.loads((home / "run_info.json").read_text())
        if not _simulated(info):
            continue
        tfile = home / "truth.json"
        if tfile.is_file() and "alpha_full_true" in (t := json.loads(tfile.read_text())):
            out[f"{variant}/{run}"] = t
        else:
            out[f"{variant}/{run}"] = truth_for_run(info)
    return out


# ---- comparison ------------------------------------------------------------------------------------------------------
def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) < 3:
        return math.nan, math.nan
    r = stats.spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def _within(df: pd.DataFrame, col: str) -> np.ndarray:
    return (df[col] - df.groupby("cell")[col].transform("mean")).to_numpy(dtype=float)


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    return wilson_interval(k, n, confidence=confidence) if n else (math.nan, math.nan)


def truth_axis(truths: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The time axis on which the simulated curves are a power law after the knee.

    The simulator's progress is ``(1 - w) (step + 1) + w Σ lr`` (``schedule_effect`` w):
    ``"step"`` when every run has w = 0, ``"cumulative_lr"`` when every run has w = 1,
    ``None`` otherwise (no logged axis is exact).
    """
    effects = {float(t.get("schedule_effect", 0.0)) for t in truths.values()}
    if effects == {0.0}:
        return "step"
    if effects == {1.0}:
        return "cumulative_lr"
    return None


def _spearman_ci(corr: Correlation | None) -> list[float] | None:
    """``[low, high]`` of a correlation's Spearman interval (None when absent)."""
    if corr is None or corr.spearman_ci_low is None or corr.spearman_ci_high is None:
        return None
    return [float(corr.spearman_ci_low), float(corr.spearman_ci_high)]


def _inside(v: float, ci) -> bool | None:
    if ci is None or None in ci or not math.isfinite(v):
        return None
    return bool(ci[0] <= v <= ci[1])


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def compare_with_truth(
    table: pd.DataFrame,
    truths: Mapping[str, Mapping[str, Any]],
    *,
    r2_column: str = "power_r2",
    r2_threshold: float = 0.98,
    h2_min_abs_rho: float = 0.7,
    h2_max_p: float = 0.01,
    h2_sign: str = "either",
    confidence: float = 0.95,
    h1_study: Share | None = None,
    h2_study: H2Result | NotComputable | None = None,
    h1_column: str = "h1_single_power_law",
) -> dict:
    """Every estimate of the per-run table against the truth; JSON-ready (read back: :class:`TruthComparison`).

    Parameters
    ----------
    table : DataFrame
        The per-run table (``runs.parquet``): variant, run, status, knee_epoch, knee_found, alpha_early,
        alpha_full, best_val_ce, power_exponent, the R² column and, when present, ``h1_single_power_law``.
    truths : mapping
        ``"variant/run"`` → truth (:func:`load_truths`).
    r2_column, r2_threshold : the H1 decision while the table has no ``h1_single_power_law``.
    h2_min_abs_rho, h2_max_p, h2_sign : the H2 verdict's thresholds and required sign.
    h1_study : Share, optional
        The study's H1 share (the ``overall`` of an H1 criterion of ``stats.json``): its
        cluster-aware interval is the one judged.
    h2_study : H2Result or NotComputable, optional
        The study's H2 result (``h2`` of ``stats.json``): its verdict and its pooled and
        within-cell Spearman intervals are judged.
    h1_column : str
        The per-run H1 decision judged: the one on the time axis where the truth is a power law
        (:func:`truth_axis`), e.g. ``cumulative_lr__h1_single_power_law``.
    """
    # a run without a fit has no estimates: so has a table in which no run was fitted
    estimates = ["knee_found", "knee_epoch", "alpha_early", "alpha_full", "best_val_ce", "power_exponent"]
    t = table.reindex(columns=[*table.columns, *(c for c in estimates if c not in table.columns)])
    t["key"] = t["variant"].astype(str) + "/" + t["run"].astype(str)
    t = t[t["key"].isin(truths)].reset_index(drop=True)
    tr = (
        pd.DataFrame([{**truths[k], "key": k} for k in t["key"]])
        if len(t)
        else pd.DataFrame(
            columns=[
                "key",
                "cell",
                "h1_single_power_law",
                "diverged",
                "knee_epoch",
                "alpha_early_true",
                "alpha_full_true",
                "best_val_ce_true",
                "alpha",
                "schedule_effect",
            ]
        )
    )
    t = t.merge(tr.add_prefix("true_").rename(columns={"true_key": "key"}), on="key", how="left")
    t["cell"] = t["true_cell"]
    ok = t[t["status"] == "ok"]
    res: dict[str, Any] = {"n_runs": int(len(t)), "n_ok": int(len(ok)), "n_truth": len(truths)}

    # ---- H1 ----
    if h1_column in t.columns:
        decision, rule = t[h1_column], h1_column
    elif r2_column not in t.columns:  # no run was fitted: no decision
        decision, rule = pd.Series(None, index=t.index, dtype=object), h1_column
    else:
        decision, rule = (
            pd.to_numeric(t[r2_column], errors="coerce") >= r2_threshold,
            f"{r2_column} >= {r2_threshold:g}",
        )
    t["h1_est"] = decision.where(t["status"] == "ok")
    h1 = t[(t["status"] == "ok") & t["h1_est"].notna() & t["true_h1_single_power_law"].notna()]
    k_est, n = int(h1["h1_est"].astype(bool).sum()), int(len(h1))
    k_true = int(h1["true_h1_single_power_law"].astype(bool).sum())
    share = k_est / n if n else None
    if h1_study is not None and None not in h1_study.ci:
        (lo, hi), interval = h1_study.ci, "cluster-aware"
        share = _num(h1_study.share)
    else:
        (lo, hi), interval = _wilson(k_est, n, confidence), "Wilson, runs as independent"
    wrong = h1[h1["h1_est"].astype(bool) != h1["true_h1_single_power_law"].astype(bool)]
    res["h1"] = {
        "rule": rule,
        "n": n,
        "estimated_share": share,
        "ci": [_num(lo), _num(hi)],
        "interval": interval,
        "true_share": k_true / n if n else None,
        "true_within_ci": bool(n and lo <= k_true / n <= hi),
        "confidence": confidence,
        "false_positive": int((h1["h1_est"].astype(bool) & ~h1["true_h1_single_power_law"].astype(bool)).sum()),
        "false_negative": int((~h1["h1_est"].astype(bool) & h1["true_h1_single_power_law"].astype(bool)).sum()),
    }

    # ---- H2 ----
    h2 = ok.dropna(subset=["alpha_early", "best_val_ce", "true_alpha_early_true", "true_best_val_ce_true"]).copy()
    h2 = h2.astype(
        {"alpha_early": float, "best_val_ce": float, "true_alpha_early_true": float, "true_best_val_ce_true": float}
    )
    est_rho, est_p = _spearman(h2["alpha_early"].to_numpy(), h2["best_val_ce"].to_numpy())
    true_rho, true_p = _spearman(h2["true_alpha_early_true"].to_numpy(), h2["true_best_val_ce_true"].to_numpy())
    multi = h2[h2.groupby("cell")["cell"].transform("size") > 1]
    est_w, est_wp = _spearman(_within(multi, "alpha_early"), _within(multi, "best_val_ce"))
    true_w, true_wp = _spearman(_within(multi, "true_alpha_early_true"), _within(multi, "true_best_val_ce_true"))
    # the literal rule with its required sign (a correlation of the other sign never supports H2)
    sign_ok = lambda rho: h2_sign == "either" or (rho < 0) == (h2_sign == "negative")  # noqa: E731
    verdict = lambda rho, p: bool(  # noqa: E731
        math.isfinite(rho) and sign_ok(rho) and abs(rho) >= h2_min_abs_rho and p < h2_max_p
    )
    first = truths[next(iter(truths))] if truths else {}
    res["h2"] = {
        "n": int(len(h2)),
        "estimated_rho": _num(est_rho),
        "estimated_p": _num(est_p),
        "true_rho": _num(true_rho),
        "true_p": _num(true_p),
        "estimated_within_rho": _num(est_w),
        "estimated_within_p": _num(est_wp),
        "true_within_rho": _num(true_w),
        "true_within_p": _num(true_wp),
        "configured_rho_cell": first.get("configured_rho_cell"),
        "configured_rho_within": first.get("configured_rho_within"),
        "min_abs_rho": h2_min_abs_rho,
        "max_p": h2_max_p,
        "estimated_verdict": "supported" if verdict(est_rho, est_p) else "not supported",
        "true_verdict": "supported" if verdict(true_rho, true_p) else "not supported",
    }
    res["h2"]["verdict_matches"] = res["h2"]["estimated_verdict"] == res["h2"]["true_verdict"]
    if h2_study is not None:
        true_def = (
            "supported"
            if math.isfinite(true_rho) and abs(true_rho) >= h2_min_abs_rho and sign_ok(true_rho)
            else "not supported"
        )
        pooled_ci = _spearman_ci(h2_study.overall) if h2_study.computable else None
        within_ci = _spearman_ci(h2_study.within_cell) if h2_study.computable else None
        verdict = h2_study.verdict
        res["h2"]["defensible"] = {
            "verdict": verdict,
            "true_verdict": true_def,
            "matches": None if verdict == "inconclusive" else verdict == true_def,
            "pooled_ci": pooled_ci,
            "within_ci": within_ci,
            "true_in_pooled_ci": _inside(true_rho, pooled_ci),
            "true_within_in_ci": _inside(true_w, within_ci),
        }

    # ---- knees ----
    found = ok[ok["knee_found"].fillna(False).astype(bool) & ok["knee_epoch"].notna()]
    err = np.abs(
        np.log10(found["knee_epoch"].astype(float).to_numpy() / found["true_knee_epoch"].astype(float).to_numpy())
    )
    res["knee"] = {
        "n_true": int(len(ok)),
        "n_found": int(len(found)),
        "median_error_decades": _num(float(np.median(err))) if len(err) else None,
        "p90_error_decades": _num(float(np.quantile(err, 0.9))) if len(err) else None,
        "max_error_decades": _num(float(err.max())) if len(err) else None,
    }

    # ---- exponents ----
    def _err(est: str, true: str) -> dict:
        d = ok.dropna(subset=[est, true])
        e = d[est].astype(float).to_numpy() - d[true].astype(float).to_numpy()
        return {
            "n": int(len(e)),
            "median_error": _num(float(np.median(e))) if len(e) else None,
            "median_abs_error": _num(float(np.median(np.abs(e)))) if len(e) else None,
        }

    res["exponent"] = {
        "alpha_early": _err("alpha_early", "true_alpha_early_true"),
        "alpha_full": _err("alpha_full", "true_alpha_full_true"),
    }
    effects = set(ok["true_schedule_effect"].dropna().astype(float)) if len(ok) else set()
    if effects == {0.0} and "power_exponent" in ok.columns:
        res["exponent"]["power_exponent"] = _err("power_exponent", "true_alpha")
    else:
        res["exponent"]["power_exponent"] = None  # the schedule shapes the curve: no single true exponent in steps

    # ---- wrong verdicts ----
    runs = []
    for _, r in wrong.iterrows():
        runs.append(
            {
                "run": r["key"],
                "what": "H1",
                "estimated": bool(r["h1_est"]),
                "truth": bool(r["true_h1_single_power_law"]),
            }
        )
    div_est = t["status"] == "diverged"
    div_true = t["true_diverged"].fillna(False).astype(bool)
    for _, r in t[div_est != div_true].iterrows():
        runs.append(
            {
                "run": r["key"],
                "what": "diverged",
                "estimated": bool(r["status"] == "diverged"),
                "truth": bool(r["true_diverged"]),
            }
        )
    for _, r in ok[~ok["knee_found"].fillna(False).astype(bool)].iterrows():
        runs.append({"run": r["key"], "what": "knee", "estimated": False, "truth": True})
    res["diverged"] = {"estimated": int(div_est.sum()), "true": int(div_true.sum())}
    res["wrong"] = runs
    return res


# ---- markdown --------------------------------------------------------------------------------------------------------
def _f(v, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def truth_markdown(result: TruthComparison | Mapping[str, Any], *, max_runs: int = 30) -> str:
    """``summary.md``'s section on a simulated study: each estimate next to its truth.

    ``result`` is ``stats.json``'s ``truth`` section or :func:`compare_with_truth`'s JSON object.
    """
    if not isinstance(result, TruthComparison):
        result = TruthComparison.from_dict(jsonable(result))
    h1, h2, kn, ex = result.h1, result.h2, result.knee, result.exponent
    lines = [
        "## Against the known truth (simulated study)",
        "",
        f"The runs were simulated from known curves; {result.n_ok} of {result.n_runs} runs are usable "
        f"({result.diverged.estimated} diverged, {result.diverged.true} by design).",
        "",
        "| quantity | estimated | truth | recovered |",
        "|---|---|---|---|",
        f"| H1 share ({h1.rule}{_axis(h1)}) | {_f(h1.estimated_share)} "
        f"[{_f(h1.ci[0])}, {_f(h1.ci[1])}] | {_f(h1.true_share)} | "
        + (
            "— (no run decided)"
            if h1.n == 0
            else f"{'yes' if h1.true_within_ci else 'no'} (truth {'inside' if h1.true_within_ci else 'outside'} the "
            f"{h1.confidence:.0%} {h1.interval} interval)"
        )
        + " |",
    ]
    d = h2.defensible
    if d is not None:
        match = {None: "— (inconclusive)", True: "yes", False: "no"}[d.matches]
        lines += [
            f"| H2 Spearman ρ, pooled | {_f(h2.estimated_rho)} {_ci(d.pooled_ci)} | {_f(h2.true_rho)} | "
            f"{_in(d.true_in_pooled_ci)}; verdict {d.verdict} vs {d.true_verdict}: {match} |",
            f"| H2 Spearman ρ, within cells | {_f(h2.estimated_within_rho)} {_ci(d.within_ci)} | "
            f"{_f(h2.true_within_rho)} | {_in(d.true_within_in_ci)} |",
        ]
    else:
        lines += [
            f"| H2 Spearman ρ, pooled | {_f(h2.estimated_rho)} (p {_f(h2.estimated_p, '.2g')}) | "
            f"{_f(h2.true_rho)} | verdict {h2.estimated_verdict} vs {h2.true_verdict} (runs as "
            f"independent): {'yes' if h2.verdict_matches else 'no'} |",
            f"| H2 Spearman ρ, within cells | {_f(h2.estimated_within_rho)} | {_f(h2.true_within_rho)} | "
            f"error {_f(_diff(h2.estimated_within_rho, h2.true_within_rho), '+.3f')} |",
        ]
    lines += [
        f"| knee, median error (decades) | {_f(kn.median_error_decades)} (p90 {_f(kn.p90_error_decades)}, "
        f"max {_f(kn.max_error_decades)}) | 0 | {kn.n_found} of {kn.n_true} knees found |",
        f"| α_early, median error | {_f(ex.alpha_early.median_error, '+.4f')} | 0 | "
        f"median abs. {_f(ex.alpha_early.median_abs_error, '.4f')} |",
        f"| α_full, median error | {_f(ex.alpha_full.median_error, '+.4f')} | 0 | "
        f"median abs. {_f(ex.alpha_full.median_abs_error, '.4f')} |",
    ]
    pe = ex.power_exponent
    if pe is not None:
        lines.append(
            f"| power-law exponent, median error | {_f(pe.median_error, '+.4f')} | 0 | "
            f"median abs. {_f(pe.median_abs_error, '.4f')} |"
        )
    lines += [
        "",
        f"H1 decisions: {h1.false_positive} false positive(s), {h1.false_negative} false negative(s) among "
        f"{h1.n} usable runs. The truth's ρ is the same statistic on the clean curves (configured correlations of "
        f"the generating parts: cell {_f(h2.configured_rho_cell, '+.2f')}, within "
        f"{_f(h2.configured_rho_within, '+.2f')}).",
        "",
    ]
    wrong = result.wrong
    if wrong:
        lines += ["Runs whose verdict was wrong:", "", "| run | what | estimated | truth |", "|---|---|---|---|"]
        lines += [f"| {w.run} | {w.what} | {w.estimated} | {w.truth} |" for w in wrong[:max_runs]]
        if len(wrong) > max_runs:
            lines.append(f"| … {len(wrong) - max_runs} more | | | |")
    else:
        lines.append("No run's verdict was wrong.")
    return "\n".join(lines) + "\n"


def _axis(h1: TruthH1) -> str:
    return f", {h1.time_axis.replace('_', ' ')} axis" if h1.time_axis else ""


def _ci(ci) -> str:
    return "" if not ci or None in ci else f"[{_f(ci[0])}, {_f(ci[1])}]"


def _in(inside: bool | None) -> str:
    return {None: "—", True: "truth inside the interval", False: "truth outside the interval"}[inside]


def _diff(a, b):
    return None if a is None or b is None else a - b
