"""Power analysis of the study design for H1 and H2, at the level of per-run tables.

For the configured grid (cells = variants x LRs x weight decays), seeds per cell
and thresholds, it simulates known-truth studies (the model of
:mod:`loss_slope.analysis.synthetic_study`: cell, shared-seed and run components)
and runs the study inference of :func:`loss_slope.analysis.h2_statistics` (the same
two-way cluster bootstrap, interval and verdict rule) and of
:func:`loss_slope.analysis.h1_statistics` (the same design-effect Wilson interval)
on each.  No curve is refitted.

It reports

* P(H2 verdict "supported") as a function of the true |rho| (Spearman, the same at
  the cell, seed and run level, so the pooled and within-cell population values are
  both |rho|), and P(the within-cell interval clears the threshold by the same
  rule) and P(the within-cell interval excludes 0 on the configured side);
* the expected width of the H1 share interval;
* the smallest number of seeds per cell with >= 80 % power at a chosen |rho|.

Command::

    python -m loss_slope.analysis.power --config config/study.yaml
    python -m loss_slope.analysis.power --config config/study.yaml --effect 0.85 --plot power.png

Speed: with the default 200 studies per point and 300 resamples per study (the
interval uses the bootstrap s.d., which 300 resamples estimate to about 4 %), it
runs in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from loss_slope.study.config import load_config
from loss_slope.study.runs import build_runs

from .stats import cluster_share, correlation_core, verdict_rho, wilson_interval
from .synthetic_study import StudyScenario, latent_draws, pair_correlation, pearson_from_spearman

__all__ = ["PowerSettings", "PowerPoint", "PowerResult", "simulate_power", "run_power_analysis", "main"]


@dataclass(frozen=True)
class PowerSettings:
    """Design and decision rule of the simulated studies.

    Attributes
    ----------
    n_cells : int
        Cells (variants x LRs x weight decays).
    n_seeds : int
        Seeds per cell (shared across cells).
    min_abs_rho, max_p : float
        H2 thresholds.
    sign : str
        "negative", "positive" or "either"; effects are simulated with the sign
        the rule looks for (negative for "either").
    confidence : float
    h1_share, h1_icc : float
        True H1 share and its intra-cell correlation.
    h1_target : float
        H1 target share (reported with the interval width).
    share_cell, share_seed : float
        Variance shares of the cell and the shared seed component (run: the rest).
    n_boot : int
        Bootstrap resamples per simulated study.
    """

    n_cells: int = 36
    n_seeds: int = 6
    min_abs_rho: float = 0.7
    max_p: float = 0.01
    sign: str = "negative"
    confidence: float = 0.95
    h1_share: float = 0.9
    h1_icc: float = 0.1
    h1_target: float = 0.8
    share_cell: float = 0.7
    share_seed: float = 0.1
    n_boot: int = 300


@dataclass(frozen=True)
class PowerPoint:
    """Rates over the simulated studies at one (|rho|, seeds) point.

    Attributes
    ----------
    abs_rho : float
        True |Spearman rho| (pooled = within cell).
    n_seeds, n_studies : int
    supported : float
        P(H2 verdict "supported").
    within_supported : float
        P(the within-cell interval clears ``min_abs_rho`` by the verdict rule).
    within_detected : float
        P(the within-cell interval excludes 0 on the configured side).
    h1_width : float
        Mean width of the H1 share interval.
    h1_supported : float
        P(H1 verdict "supported" at the target share).
    """

    abs_rho: float
    n_seeds: int
    n_studies: int
    supported: float
    within_supported: float
    within_detected: float
    h1_width: float
    h1_supported: float


def _scenario(abs_rho: float, s: PowerSettings) -> StudyScenario:
    r = -pearson_from_spearman(abs_rho) if s.sign in ("negative", "either") else pearson_from_spearman(abs_rho)
    m = pair_correlation(r)
    return StudyScenario(
        "power",
        m,
        m.copy(),
        m.copy(),
        share_cell=s.share_cell,
        share_seed=s.share_seed,
        share_run=1.0 - s.share_cell - s.share_seed,
    )


def _one_study(
    abs_rho: float, n_seeds: int, s: PowerSettings, rng: np.random.Generator
) -> tuple[bool, bool, bool, float, bool]:
    z = latent_draws(_scenario(abs_rho, s), s.n_cells, n_seeds, rng)
    x, y = z[..., 0].ravel(), z[..., 1].ravel()
    cell = np.repeat(np.arange(s.n_cells), n_seeds)
    seed = np.tile(np.arange(n_seeds), s.n_cells)
    core = correlation_core(
        x, y, None, cell, seed, None, n_boot=s.n_boot, confidence=s.confidence, rng=rng, level_column=""
    )
    o, w = core.overall, core.within_cell
    sup = verdict_rho(o.spearman_ci, o.spearman_p, s.min_abs_rho, s.max_p, s.sign) == "supported"
    wsup = verdict_rho(w.spearman_ci, w.spearman_p, s.min_abs_rho, s.max_p, s.sign) == "supported"
    lo, hi = w.spearman_ci
    wdet = (hi < 0) if s.sign == "negative" else (lo > 0) if s.sign == "positive" else (hi < 0 or lo > 0)
    if s.h1_icc > 0:
        ab = 1.0 / s.h1_icc - 1.0
        p_cell = rng.beta(s.h1_share * ab, (1 - s.h1_share) * ab, size=s.n_cells)
    else:
        p_cell = np.full(s.n_cells, s.h1_share)
    succ = rng.random(cell.size) < p_cell[cell]
    # clustered as the report clusters H1 (report/summarize.py: cells and shared seeds)
    share = cluster_share(succ, cell, seed, confidence=s.confidence, targets=(s.h1_target,))
    return (
        bool(sup),
        bool(wsup),
        bool(wdet),
        float(share.ci[1] - share.ci[0]),
        share.verdicts[s.h1_target] == "supported",
    )


def _chunk(args) -> list[tuple]:
    abs_rho, n_seeds, s, seeds = args
    return [_one_study(abs_rho, n_seeds, s, np.random.default_rng(sd)) for sd in seeds]


def simulate_power(
    abs_rhos: Sequence[float],
    seeds_per_cell: Sequence[int],
    settings: PowerSettings,
    *,
    n_studies: int = 200,
    seed: int = 0,
    jobs: int = 1,
) -> list[PowerPoint]:
    """Rates at every (|rho|, seeds per cell) combination.

    Parameters
    ----------
    abs_rhos : sequence of float
        True |Spearman rho| values in [0, 1).
    seeds_per_cell : sequence of int
    settings : PowerSettings
    n_studies : int
        Simulated studies per point.
    seed : int
        Base random seed (each study has its own stream).
    jobs : int
        Worker processes.

    Returns
    -------
    list of PowerPoint
        In the order of ``itertools.product(abs_rhos, seeds_per_cell)``.
    """
    tasks, keys = [], []
    n_chunks = max(1, jobs * 2)
    for i, r in enumerate(abs_rhos):
        for j, k in enumerate(seeds_per_cell):
            ss = [seed * 10_000_019 + (i * 1000 + j) * 100_003 + t for t in range(n_studies)]
            for c in range(n_chunks):
                tasks.append((float(r), int(k), settings, ss[c::n_chunks]))
                keys.append((i, j))
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            results = list(ex.map(_chunk, tasks))
    else:
        results = [_chunk(t) for t in tasks]
    agg: dict[tuple[int, int], list] = {}
    for key, res in zip(keys, results):
        agg.setdefault(key, []).extend(res)
    out = []
    for i, r in enumerate(abs_rhos):
        for j, k in enumerate(seeds_per_cell):
            a = np.array(agg[(i, j)], dtype=float)
            out.append(
                PowerPoint(
                    abs_rho=float(r),
                    n_seeds=int(k),
                    n_studies=len(a),
                    supported=float(a[:, 0].mean()),
                    within_supported=float(a[:, 1].mean()),
                    within_detected=float(a[:, 2].mean()),
                    h1_width=float(a[:, 3].mean()),
                    h1_supported=float(a[:, 4].mean()),
                )
            )
    return out


@dataclass(frozen=True)
class PowerResult:
    """Power curve at the configured seeds and the seeds sweep at one effect.

    Attributes
    ----------
    settings : PowerSettings
    curve : tuple of PowerPoint
        Over |rho| at ``settings.n_seeds``.
    seeds : tuple of PowerPoint
        Over seeds per cell at ``effect``.
    effect : float
    min_seeds_80 : int or None
        Smallest seeds per cell in the sweep with P("supported") >= 0.8 (None: none).
    seconds : float
        Wall time.
    cpu_seconds : float
        CPU time of this process and its workers.
    """

    settings: PowerSettings
    curve: tuple[PowerPoint, ...]
    seeds: tuple[PowerPoint, ...]
    effect: float
    min_seeds_80: int | None
    seconds: float
    cpu_seconds: float = float("nan")


def run_power_analysis(
    settings: PowerSettings,
    *,
    abs_rhos: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
    effect: float = 0.85,
    seeds_per_cell: Sequence[int] = (2, 3, 4, 6, 8, 10),
    n_studies: int = 200,
    seed: int = 0,
    jobs: int = 2,
) -> PowerResult:
    """Power curve over |rho| at the configured seeds, and a seeds sweep at ``effect``."""
    t0, c0 = time.perf_counter(), _cpu()
    curve = simulate_power(abs_rhos, [settings.n_seeds], settings, n_studies=n_studies, seed=seed, jobs=jobs)
    sweep = simulate_power([effect], seeds_per_cell, settings, n_studies=n_studies, seed=seed + 1, jobs=jobs)
    ok = [p.n_seeds for p in sweep if p.supported >= 0.8]
    return PowerResult(
        settings,
        tuple(curve),
        tuple(sweep),
        float(effect),
        min(ok) if ok else None,
        time.perf_counter() - t0,
        _cpu() - c0,
    )


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _rate(p: float, n: int) -> str:
    lo, hi = wilson_interval(round(p * n), n)
    return f"{p:6.1%} [{lo:4.0%}, {hi:4.0%}]"


def format_result(res: PowerResult) -> str:
    """The printed tables (markdown)."""
    s = res.settings
    lines = [
        f"Design: {s.n_cells} cells x {s.n_seeds} seeds; H2 rule: |rho| >= {s.min_abs_rho}, p < {s.max_p}, "
        f"sign {s.sign}, {s.confidence:.0%} two-way cluster-bootstrap interval ({s.n_boot} resamples per study); "
        f"variance shares cell {s.share_cell} / seed {s.share_seed} / run {1 - s.share_cell - s.share_seed:.2f}.",
        "",
        f"| true abs(rho) | P(H2 supported) | P(within-cell clears {s.min_abs_rho}) | P(within-cell CI excludes 0) "
        f"| mean H1 CI width | studies |",
        "|---|---|---|---|---|---|",
    ]
    for p in res.curve:
        lines.append(
            f"| {p.abs_rho:.2f} | {_rate(p.supported, p.n_studies)} | {_rate(p.within_supported, p.n_studies)} | "
            f"{_rate(p.within_detected, p.n_studies)} | {p.h1_width:.3f} | {p.n_studies} |"
        )
    lines += [
        "",
        f"Seeds per cell at true abs(rho) = {res.effect:.2f} (H1: true share {s.h1_share}, ICC {s.h1_icc}, "
        f"target {s.h1_target}):",
        "",
        "| seeds per cell | runs | P(H2 supported) | P(within-cell clears) | mean H1 CI width | P(H1 supported) |",
        "|---|---|---|---|---|---|",
    ]
    for p in res.seeds:
        lines.append(
            f"| {p.n_seeds} | {p.n_seeds * s.n_cells} | {_rate(p.supported, p.n_studies)} | "
            f"{_rate(p.within_supported, p.n_studies)} | {p.h1_width:.3f} | {_rate(p.h1_supported, p.n_studies)} |"
        )
    m = res.min_seeds_80
    lines += [
        "",
        f"Smallest seeds per cell with >= 80 % power for H2 at abs(rho) = {res.effect:.2f}: "
        + (str(m) if m is not None else "none in the sweep"),
        f"({res.seconds:.0f} s wall, {res.cpu_seconds:.0f} s CPU)",
    ]
    return "\n".join(lines)


def plot_result(res: PowerResult, path: str) -> None:
    """Two panels: power vs true |rho|, and power vs seeds per cell (PNG)."""
    s = res.settings
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots(1, 2)
    r = [p.abs_rho for p in res.curve]
    ax[0].plot(r, [p.supported for p in res.curve], "o-", label='H2 "supported" (pooled)')
    ax[0].plot(r, [p.within_supported for p in res.curve], "s--", label=f"within-cell clears {s.min_abs_rho}")
    ax[0].plot(r, [p.within_detected for p in res.curve], "^:", label="within-cell CI excludes 0")
    ax[0].axvline(s.min_abs_rho, color="grey", lw=0.8)
    ax[0].axhline(0.8, color="grey", lw=0.8, ls=":")
    ax[0].set_xlabel("true |Spearman ρ|")
    ax[0].set_ylabel("probability")
    ax[0].set_title(f"{s.n_cells} cells × {s.n_seeds} seeds")
    ax[0].legend(fontsize=8)
    k = [p.n_seeds for p in res.seeds]
    ax[1].plot(k, [p.supported for p in res.seeds], "o-", label='H2 "supported"')
    ax[1].plot(k, [p.h1_supported for p in res.seeds], "s--", label=f"H1 supported (target {s.h1_target})")
    ax[1].axhline(0.8, color="grey", lw=0.8, ls=":")
    ax[1].set_xlabel("seeds per cell")
    ax[1].set_title(f"true |ρ| = {res.effect:.2f}; H1 share {s.h1_share}")
    ax[1].set_ylim(-0.02, 1.02)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def settings_from_config(path: str | None, **overrides) -> PowerSettings:
    """Design and thresholds from a study config (``grid``, ``variants``, ``analysis.study``)."""
    kw: dict = {}
    if path:
        cfg = load_config(path)
        # the cells and seeds the pipeline trains (a variant's own grid replaces the study grid)
        runs = build_runs(cfg)
        kw["n_cells"] = len({(r.variant, r.lr, r.weight_decay) for r in runs})
        kw["n_seeds"] = len({r.seed for r in runs})
        st = (cfg.get("analysis", {}) or {}).get("study", {}) or {}
        for key, name in (
            ("h2_min_abs_rho", "min_abs_rho"),
            ("h2_max_p", "max_p"),
            ("h2_sign", "sign"),
            ("confidence", "confidence"),
        ):
            if key in st:
                kw[name] = type(getattr(PowerSettings, name))(st[key])
        if st.get("h1_target_shares"):
            kw["h1_target"] = float(st["h1_target_shares"][0])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return PowerSettings(**kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loss_slope.analysis.power",
        description="Power of the study design for H2 (and the H1 interval width) from simulated per-run tables.",
    )
    ap.add_argument("--config", help="study config (grid, variants, analysis.study thresholds)")
    ap.add_argument("--studies", type=int, default=200, help="simulated studies per point (default 200)")
    ap.add_argument("--effect", type=float, default=0.85, help="true |rho| for the seeds sweep (default 0.85)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[2, 3, 4, 6, 8, 10], help="seeds per cell to sweep")
    ap.add_argument(
        "--rhos", type=float, nargs="*", default=[0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    )
    ap.add_argument("--share-cell", type=float, default=None, help="variance share of the cell effect (0.7)")
    ap.add_argument("--share-seed", type=float, default=None, help="variance share of the shared seed effect (0.1)")
    ap.add_argument("--h1-share", type=float, default=None, help="true H1 share (0.9)")
    ap.add_argument("--h1-icc", type=float, default=None, help="intra-cell correlation of H1 success (0.1)")
    ap.add_argument("--n-boot", type=int, default=None, help="resamples per study (300)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="power_analysis.png", help="PNG path ('' for none)")
    a = ap.parse_args(argv)
    s = settings_from_config(
        a.config,
        share_cell=a.share_cell,
        share_seed=a.share_seed,
        h1_share=a.h1_share,
        h1_icc=a.h1_icc,
        n_boot=a.n_boot,
    )
    res = run_power_analysis(
        s, abs_rhos=a.rhos, effect=a.effect, seeds_per_cell=a.seeds, n_studies=a.studies, seed=a.seed, jobs=a.jobs
    )
    print(format_result(res))
    if a.plot:
        plot_result(res, a.plot)
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
