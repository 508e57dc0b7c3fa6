#!/usr/bin/env python
"""Benchmark of loss_slope.analysis on seeded known-truth curves.

Prints (and with ``--markdown PATH`` writes) for the default knee detector and
the default power-law fit:

* false-positive knee rate on knee-free curves, per noise class (iid / AR) x floor;
* detection rate and knee location error (decades) on curves with a knee;
* power-law exponent error and 95 % CI coverage on knee-free curves;
* time per 20,000-point curve (detection + all fits), on one thread;
* the O(n) hinge scan against a loop of statsmodels OLS fits (time ratio, AIC gap).

Usage::

    python bench/bench_analysis.py            # full run (800 curves, ~1 min)
    python bench/bench_analysis.py --quick    # smoke run (~40 short curves)
    python bench/bench_analysis.py --markdown bench/out/analysis.md
"""

from __future__ import annotations

import os

# "one core": pin BLAS/OpenMP to one thread before numpy loads
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from loss_slope.analysis import analyze_curve, detect_knee, fit_exponential, fit_power_law, fit_two_power_law  # noqa: E402
from loss_slope.analysis.scan import hinge_scan  # noqa: E402
from loss_slope.analysis.search import LRT_THRESHOLD  # noqa: E402
from loss_slope.analysis.stats import wilson_interval  # noqa: E402
from loss_slope.analysis.synthetic import CurveSpec, make_curve, sample_spec  # noqa: E402

TARGETS = {
    "fpr": 0.05,
    "detection": 0.90,
    "knee_err_median": 0.02,
    "knee_err_p90": 0.10,
    "exp_err_nofloor": 0.004,
    "exp_err_floor": 0.012,
    "coverage_iid": (0.92, 0.98),
    "coverage_ar": 0.90,
    "time_curve": 0.3,
    "time_scan": 0.005,
}


def _classes():
    return list(itertools.product(("iid", "ar"), (False, True)))


def run_curves(n_null: int, n_knee: int, seed: int, n_steps: int | None, log) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for knee, (noise, floor) in itertools.product((False, True), _classes()):
        count = n_knee if knee else n_null
        for _ in range(count):
            spec = sample_spec(rng, knee=knee, floor=floor, noise=noise, n_steps=n_steps)
            c = make_curve(spec, seed=int(rng.integers(2**31)))
            t0 = time.perf_counter()
            k = detect_knee(c.steps, c.loss)
            t_knee = time.perf_counter() - t0
            row = dict(
                knee=knee,
                noise=noise,
                floor=floor,
                n=spec.n_steps,
                found=k.found,
                stat=k.statistic,
                step=k.step,
                step_ci=k.step_ci,
                true_step=spec.knee_step,
                t_knee=t_knee,
            )
            hinge = detect_knee(c.steps, c.loss, method="hinge")
            row["hinge_found"] = hinge.found
            if not knee:
                t0 = time.perf_counter()
                f = fit_power_law(c.steps, c.loss)
                row["t_power"] = time.perf_counter() - t0
                row["alpha"] = spec.alpha
                row["alpha_hat"] = f.exponent
                row["alpha_ci"] = f.exponent_ci
            rows.append(row)
        log(f"  {'knee' if knee else 'null'} {noise:3} {'floor' if floor else 'no floor'}: {count} curves")
    return rows


def summarise(rows: list[dict]) -> dict:
    out: dict = {"null": {}, "knee": {}}
    for noise, floor in _classes():
        key = f"{noise}, {'floor' if floor else 'no floor'}"
        nul = [r for r in rows if not r["knee"] and r["noise"] == noise and r["floor"] == floor]
        kn = [r for r in rows if r["knee"] and r["noise"] == noise and r["floor"] == floor]
        if nul:
            err = np.array([abs(r["alpha_hat"] - r["alpha"]) for r in nul])
            cov = np.array([r["alpha_ci"][0] <= r["alpha"] <= r["alpha_ci"][1] for r in nul])
            out["null"][key] = dict(
                n=len(nul),
                fpr=float(np.mean([r["found"] for r in nul])),
                fpr_hinge=float(np.mean([r["hinge_found"] for r in nul])),
                exp_err_median=float(np.median(err)),
                exp_err_p90=float(np.quantile(err, 0.9)),
                coverage=float(np.mean(cov)),
            )
        if kn:
            det = np.array([r["found"] for r in kn])
            errs = np.array([abs(math.log10(r["step"] / r["true_step"])) for r in kn if r["found"]])
            ci = [r["step_ci"][0] <= r["true_step"] <= r["step_ci"][1] for r in kn if r["found"]]
            out["knee"][key] = dict(
                n=len(kn),
                detection=float(np.mean(det)),
                err_median=float(np.median(errs)) if errs.size else float("nan"),
                err_p90=float(np.quantile(errs, 0.9)) if errs.size else float("nan"),
                ci_coverage=float(np.mean(ci)) if ci else float("nan"),
            )
    # pooled figures
    nul = [r for r in rows if not r["knee"]]
    kn = [r for r in rows if r["knee"]]
    errs = np.array([abs(math.log10(r["step"] / r["true_step"])) for r in kn if r["found"]])
    out["pooled"] = dict(
        detection=float(np.mean([r["found"] for r in kn])) if kn else float("nan"),
        err_median=float(np.median(errs)) if errs.size else float("nan"),
        err_p90=float(np.quantile(errs, 0.9)) if errs.size else float("nan"),
        coverage_iid=float(
            np.mean([r["alpha_ci"][0] <= r["alpha"] <= r["alpha_ci"][1] for r in nul if r["noise"] == "iid"])
        ),
        coverage_ar=float(
            np.mean([r["alpha_ci"][0] <= r["alpha"] <= r["alpha_ci"][1] for r in nul if r["noise"] == "ar"])
        ),
        exp_err_nofloor=float(np.median([abs(r["alpha_hat"] - r["alpha"]) for r in nul if not r["floor"]])),
        exp_err_floor=float(np.median([abs(r["alpha_hat"] - r["alpha"]) for r in nul if r["floor"]])),
        t_knee_mean=float(np.mean([r["t_knee"] for r in rows])),
        t_power_mean=float(np.mean([r["t_power"] for r in nul])),
    )
    return out


def detect_and_fit(c) -> None:
    """What the per-run stage computes, as separate calls: knee + the three fits."""
    detect_knee(c.steps, c.loss)
    fit_power_law(c.steps, c.loss)
    fit_exponential(c.steps, c.loss)
    fit_two_power_law(c.steps, c.loss)


def time_full(n_curves: int, seed: int, n_steps: int = 20_000) -> dict:
    """Detection + all fits on 20k-point curves (separate calls and analyze_curve)."""
    rng = np.random.default_rng(seed)
    sep, ana = [], []
    for i in range(n_curves):
        spec = sample_spec(
            rng, knee=bool(i % 2), floor=bool((i // 2) % 2), noise=("iid", "ar")[(i // 4) % 2], n_steps=n_steps
        )
        c = make_curve(spec, seed=i)
        t0 = time.perf_counter()
        detect_and_fit(c)
        sep.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        analyze_curve(c.steps, c.loss, steps_per_epoch=391)
        ana.append(time.perf_counter() - t0)
    return dict(
        separate_median=float(np.median(sep)),
        separate_max=float(np.max(sep)),
        analyze_median=float(np.median(ana)),
        analyze_max=float(np.max(ana)),
        n=n_curves,
    )


def time_scan(n_points: int = 20_000, n_sm: int = 200, seed: int = 0) -> dict:
    """O(n) hinge scan vs a loop of statsmodels OLS fits over the candidates."""
    import statsmodels.api as sm

    c = make_curve(CurveSpec(n_steps=n_points, alpha=0.6, noise_sigma=0.1, ar_phi=0.95, ar_sigma=0.05), seed=seed)
    x = np.log(c.steps + 1.0)
    y = np.log(c.loss)
    hinge_scan(x, y)
    reps = []
    for _ in range(30):
        t0 = time.perf_counter()
        sc = hinge_scan(x, y)
        reps.append(time.perf_counter() - t0)
    t_scan = float(np.median(reps))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(sc.candidates.size, size=min(n_sm, sc.candidates.size), replace=False))
    idx = np.unique(np.concatenate((idx, [0, sc.best, sc.candidates.size - 1])))
    max_gap = 0.0
    t0 = time.perf_counter()
    for j in idx:
        k = sc.candidates[j]
        X = np.column_stack((np.ones_like(x), x, np.maximum(x - x[k], 0.0)))
        aic = sm.OLS(y, X).fit().aic
        max_gap = max(max_gap, abs(aic - sc.aic[j]))
    t_sm_each = (time.perf_counter() - t0) / idx.size
    t_sm_all = t_sm_each * sc.candidates.size
    return dict(
        n_points=n_points,
        n_candidates=int(sc.candidates.size),
        t_scan=t_scan,
        t_statsmodels_per_fit=t_sm_each,
        t_statsmodels_all=t_sm_all,
        ratio=t_sm_all / t_scan,
        max_aic_gap=max_gap,
        n_checked=int(idx.size),
    )


def time_pwlf(sizes=(2_000, 20_000), n_curves: int = 3, seed: int = 0) -> list[dict]:
    """Two-segment fit in log-log: pwlf (differential evolution over the break)
    vs the O(n) exact scan and vs detect_knee + all fits, on the same curves."""
    import pwlf

    out = []
    for n in sizes:
        t_pw, t_scan, t_full, gaps = [], [], [], []
        for i in range(n_curves):
            c = make_curve(
                CurveSpec(n_steps=n, alpha=0.3, noise_sigma=0.1, knee_step=n**0.5, alpha_after=0.8), seed=seed + i
            )
            x, y = np.log(c.steps + 1.0), np.log(c.loss)
            t0 = time.perf_counter()
            m = pwlf.PiecewiseLinFit(x, y, seed=i)
            m.fit(2)
            t_pw.append(time.perf_counter() - t0)
            hinge_scan(x, y)  # warm
            reps = []
            for _ in range(5):
                t0 = time.perf_counter()
                sc = hinge_scan(x, y)
                reps.append(time.perf_counter() - t0)
            t_scan.append(min(reps))
            t0 = time.perf_counter()
            detect_and_fit(c)
            t_full.append(time.perf_counter() - t0)
            gaps.append(float(sc.rss[sc.best] - m.ssr) / float(m.ssr))
        out.append(
            dict(
                n=n,
                curves=n_curves,
                pwlf=float(np.median(t_pw)),
                scan=float(np.median(t_scan)),
                full=float(np.median(t_full)),
                rss_gap=float(np.max(gaps)),
            )
        )
    return out


def _rate(rate: float, n: int) -> str:
    """``rate [low, high]`` with the Wilson 95 % interval of ``rate * n`` successes in ``n``."""
    lo, hi = wilson_interval(round(rate * n), n)
    return f"{rate:.3f} [{lo:.2f}, {hi:.2f}]"


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def report(summary: dict, timing: dict, scan: dict, meta: dict, pw: list[dict] | None = None) -> str:
    T = TARGETS
    L = []
    L.append(
        f"# loss_slope.analysis benchmark ({meta['mode']}, seed {meta['seed']}, {meta['n_curves']} curves, "
        f"{meta['lengths']})"
    )
    L.append("")
    L.append(
        f"Default knee detector: `broken_power_lrt`, threshold {LRT_THRESHOLD:g}.  One BLAS thread.  "
        "Rates are given with their Wilson 95 % interval [low, high] over the curves of the class."
    )
    L.append("")
    L.append("## Knee-free curves: false positives, exponent error, 95 % CI coverage")
    L.append("")
    L.append("| class | n | FPR (default) | FPR (hinge ΔAIC>2) | exponent err median | p90 | CI coverage |")
    L.append("|---|---|---|---|---|---|---|")
    for key, v in summary["null"].items():
        L.append(
            f"| {key} | {v['n']} | {_rate(v['fpr'], v['n'])} {_ok(v['fpr'] <= T['fpr'])} | {v['fpr_hinge']:.3f} | "
            f"{v['exp_err_median']:.4f} | {v['exp_err_p90']:.4f} | {v['coverage']:.3f} |"
        )
    L.append("")
    L.append("## Curves with a knee: detection and location error (decades)")
    L.append("")
    L.append("| class | n | detection | error median | error p90 | knee CI coverage |")
    L.append("|---|---|---|---|---|---|")
    for key, v in summary["knee"].items():
        L.append(
            f"| {key} | {v['n']} | {_rate(v['detection'], v['n'])} | {v['err_median']:.4f} | {v['err_p90']:.4f} | "
            f"{v['ci_coverage']:.3f} |"
        )
    p = summary["pooled"]
    L.append("")
    L.append("## Against the targets")
    L.append("")
    L.append("| quantity | measured | target | |")
    L.append("|---|---|---|---|")
    worst_fpr = max(v["fpr"] for v in summary["null"].values())
    L.append(f"| worst-class false-positive rate | {worst_fpr:.3f} | ≤ {T['fpr']} | {_ok(worst_fpr <= T['fpr'])} |")
    L.append(
        f"| detection (pooled) | {p['detection']:.3f} | ≥ {T['detection']} | {_ok(p['detection'] >= T['detection'])} |"
    )
    worst_det = min(v["detection"] for v in summary["knee"].values())
    # the issue's detection target is over all knee curves (only the FPR target is per class);
    # the worst class is shown so that a weak class is not hidden in the pooled figure
    L.append(
        f"| detection (worst class; for information, the target is pooled) | {worst_det:.3f} | — | "
        f"{'≥ 0.9' if worst_det >= T['detection'] else 'below 0.9'} |"
    )
    L.append(
        f"| knee error median (decades) | {p['err_median']:.4f} | ≤ {T['knee_err_median']} | "
        f"{_ok(p['err_median'] <= T['knee_err_median'])} |"
    )
    L.append(
        f"| knee error p90 (decades) | {p['err_p90']:.4f} | ≤ {T['knee_err_p90']} | "
        f"{_ok(p['err_p90'] <= T['knee_err_p90'])} |"
    )
    L.append(
        f"| exponent error median, no floor | {p['exp_err_nofloor']:.4f} | ≤ {T['exp_err_nofloor']} | "
        f"{_ok(p['exp_err_nofloor'] <= T['exp_err_nofloor'])} |"
    )
    L.append(
        f"| exponent error median, floor | {p['exp_err_floor']:.4f} | ≤ {T['exp_err_floor']} | "
        f"{_ok(p['exp_err_floor'] <= T['exp_err_floor'])} |"
    )
    lo, hi = T["coverage_iid"]
    L.append(f"| 95 % CI coverage, iid | {p['coverage_iid']:.3f} | {lo}–{hi} | {_ok(lo <= p['coverage_iid'] <= hi)} |")
    L.append(
        f"| 95 % CI coverage, AR | {p['coverage_ar']:.3f} | ≥ {T['coverage_ar']} | "
        f"{_ok(p['coverage_ar'] >= T['coverage_ar'])} |"
    )
    L.append(
        f"| detect + all fits, 20k points (separate calls), median / max s | {timing['separate_median']:.3f} / "
        f"{timing['separate_max']:.3f} | ≤ {T['time_curve']} | {_ok(timing['separate_max'] <= T['time_curve'])} |"
    )
    L.append(
        f"| `analyze_curve`, 20k points, median / max s | {timing['analyze_median']:.3f} / "
        f"{timing['analyze_max']:.3f} | ≤ {T['time_curve']} | {_ok(timing['analyze_max'] <= T['time_curve'])} |"
    )
    L.append(
        f"| O(n) hinge scan, {scan['n_points']} points, s | {scan['t_scan'] * 1e3:.2f} ms | ≤ 5 ms | "
        f"{_ok(scan['t_scan'] <= T['time_scan'])} |"
    )
    L.append(
        f"| statsmodels loop over {scan['n_candidates']} breaks (extrapolated from {scan['n_checked']}) | "
        f"{scan['t_statsmodels_all']:.1f} s | ratio {scan['ratio']:.0f}× | |"
    )
    L.append(
        f"| max \\|AIC(scan) − AIC(statsmodels)\\| | {scan['max_aic_gap']:.2e} | ≤ 1e-6 | "
        f"{_ok(scan['max_aic_gap'] <= 1e-6)} |"
    )
    if pw:
        L += [
            "",
            "## Against pwlf (two-segment log-log fit, differential evolution)",
            "",
            "| points | pwlf `fit(2)` s | O(n) scan s | ratio pwlf / scan | detect + all fits s | ratio pwlf / "
            "(detect + all fits) | RSS(scan) − RSS(pwlf), relative |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in pw:
            L.append(
                f"| {r['n']} | {r['pwlf']:.3f} | {r['scan'] * 1e3:.2f} ms | {r['pwlf'] / r['scan']:.0f}× | "
                f"{r['full']:.3f} | {r['pwlf'] / r['full']:.1f}× | {r['rss_gap']:+.1e} |"
            )
        L.append("")
        L.append(
            "Medians over the curves; the scan's break is restricted to data points (exact over them), "
            "pwlf's is continuous, so a relative RSS gap of order 1e-5 is expected either way."
        )
    L.append("")
    L.append(
        f"Mean time per curve over the whole set: detect_knee {p['t_knee_mean'] * 1e3:.0f} ms, fit_power_law "
        f"{p['t_power_mean'] * 1e3:.0f} ms."
    )
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--seed", type=int, default=20240611)
    # 100 per class: a rate near 0.9 is then known to about ±0.06 (Wilson 95 %); 30 gave ±0.12
    ap.add_argument("--n-null", type=int, default=100, help="knee-free curves per class (4 classes)")
    ap.add_argument("--n-knee", type=int, default=100, help="curves with a knee per class (4 classes)")
    ap.add_argument("--markdown", type=Path, help="write the table to this file")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.quick:
        n_null, n_knee, n_steps, n_time = 6, 4, 3000, 2
    else:
        n_null, n_knee, n_steps, n_time = args.n_null, args.n_knee, None, 12
    t0 = time.time()
    log("curves ...")
    rows = run_curves(n_null, n_knee, args.seed, n_steps, log)
    summary = summarise(rows)
    log("timing 20k-point curves ...")
    timing = time_full(n_time, args.seed + 1)
    log("O(n) scan vs statsmodels ...")
    scan = time_scan(n_sm=50 if args.quick else 200, seed=args.seed)
    log("pwlf comparison ...")
    pw = time_pwlf(n_curves=1 if args.quick else 3, sizes=(2_000,) if args.quick else (2_000, 20_000), seed=args.seed)
    meta = dict(
        mode="quick" if args.quick else "full",
        seed=args.seed,
        n_curves=len(rows),
        lengths="3000 points" if n_steps else "2k-20k points (log-uniform)",
    )
    text = report(summary, timing, scan, meta, pw)
    print(text)
    log(f"done in {time.time() - t0:.0f} s")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
