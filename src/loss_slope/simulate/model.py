"""Known-truth curves of a simulated study, deterministic in (study seed, cell, run seed).

A *cell* is (variant, lr, weight decay); its runs differ by seed. Per run the
clean training loss is::

    tau(s)   = (1 - w) * (s + 1) + w * sum_{i <= s} f(i)     # progress; f = the LR schedule's factor
    log g    = -alpha * soft(log tau - log tau_knee)           # plateau, then the power law
               - delta * soft(log tau - log tau_break)           # an optional second break
    L(s)     = floor + (L0 - floor) * g                         # soft = softplus of width knee_width

so the plateau, the knee, the exponent(s) and the floor are known, and the
schedule shapes the curve through the progress ``tau`` (``w`` =
``schedule_effect``: 1 = progress is the cumulative LR, 0 = the step count).
The logged loss is ``L * exp(e_white + e_ar)`` with a white part and an AR(1)
wander whose s.d. grows linearly along the run. The validation loss falls to
the run's best CE: ``val(v) = best_ce + gap * (L(v - 1) - L(end))`` (times a
small white noise). A chosen share of runs diverges: from a step on, the loss
grows exponentially until the divergence guard stops the run.

The post-knee exponent ``alpha`` and the best CE each have a cell part and a
within-cell part (normal); corr(cell parts) = ``h2.rho_cell`` and
corr(within parts) = ``h2.rho_within``, so α_early vs best CE has a chosen
pooled and within-cell relation. The truth of every run (parameters, knee,
whether the curve is a single power law after its knee, α_early and the best
CE of the clean curves) is returned by :func:`run_truth`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from loss_slope.study.runs import exact_str
from loss_slope.train.schedule import Schedule

#: every key of ``data.simulation`` and its default (conf/data/simulated.yaml repeats them, documented)
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "pace_s_per_chunk": 0.0,
    "fsync": False,
    "seconds_per_step": 0.05,
    "clock_start": 1.8e9,
    "initial_loss": math.log(10.0),
    "knee_epochs": [0.5, 3.0],
    "knee_jitter_decades": 0.03,
    "knee_width": 0.1,
    "alpha": {"mean": 0.6, "cell_sd": 0.12, "within_sd": 0.04},
    "floor_share": [0.05, 0.15],
    "second_break_share": 0.15,
    "second_break_epochs": [15.0, 30.0],
    "second_break_change": 0.8,
    "schedule_effect": 1.0,
    "noise": {"sigma_start": 0.01, "sigma_end": 0.03, "ar_phi": 0.95, "ar_sigma": 0.01},
    "val": {"gap": 1.2, "sigma": 0.005},
    "best_ce": {"mean": 0.45, "cell_sd": 0.06, "within_sd": 0.02},
    "h2": {"rho_cell": -0.9, "rho_within": -0.8},
    "diverge_share": 0.03,
    "diverge_epochs": [10.0, 40.0],
    "diverge_rate": 0.03,
    "early_window": [5.0, 15.0],
}


def settings(sim: Mapping[str, Any] | None) -> dict:
    """``data.simulation`` merged over :data:`DEFAULTS` (nested dicts merged key by key); unknown keys raise."""
    out = copy.deepcopy(DEFAULTS)
    for key, value in dict(sim or {}).items():
        if key not in out:
            raise ValueError(f"data.simulation.{key}: unknown key; allowed: {', '.join(sorted(out))}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"data.simulation.{key}: {value!r} must be a mapping of {', '.join(sorted(out[key]))}")
            for k, v in value.items():
                if k not in out[key]:
                    raise ValueError(f"data.simulation.{key}.{k}: unknown key; allowed: {', '.join(sorted(out[key]))}")
                out[key][k] = _shaped(f"{key}.{k}", out[key][k], v)
        else:
            out[key] = _shaped(key, out[key], value)
    nz = out["noise"]
    # key: (value, whether it is valid, the rule), checked in this order
    rules = {f"h2.{k}": (r, -1 <= float(r) <= 1, "in [-1, 1]") for k, r in out["h2"].items()}
    for key in ("second_break_share", "diverge_share", "schedule_effect"):
        rules[key] = (out[key], 0 <= float(out[key]) <= 1, "in [0, 1]")
    rules |= {
        "initial_loss": (out["initial_loss"], float(out["initial_loss"]) > 0, "> 0"),
        "noise.sigma_start": (nz["sigma_start"], float(nz["sigma_start"]) > 0, "> 0 (the noise grows from it)"),
        "noise.sigma_end": (nz["sigma_end"], float(nz["sigma_end"]) >= 0, ">= 0"),
        "noise.ar_phi": (nz["ar_phi"], 0 <= float(nz["ar_phi"]) < 1, "in [0, 1)"),
        "noise.ar_sigma": (nz["ar_sigma"], float(nz["ar_sigma"]) >= 0, ">= 0"),
        "val.gap": (out["val"]["gap"], float(out["val"]["gap"]) >= 0, ">= 0"),
        "val.sigma": (out["val"]["sigma"], float(out["val"]["sigma"]) >= 0, ">= 0"),
    }
    ranges = {  # [lo, hi] rules: the knee is drawn log-uniform (lo > 0), the floor is a share below 1
        "knee_epochs": (lambda lo, hi: 0 < lo <= hi, "0 < lo <= hi"),
        "second_break_epochs": (lambda lo, hi: 0 <= lo <= hi, "0 <= lo <= hi"),
        "diverge_epochs": (lambda lo, hi: 0 <= lo <= hi, "0 <= lo <= hi"),
        "early_window": (lambda lo, hi: 0 <= lo < hi, "0 <= lo < hi"),
        "floor_share": (lambda lo, hi: 0 <= lo <= hi < 1, "0 <= lo <= hi < 1"),
    }
    for key, (check, rule) in ranges.items():
        lo, hi = (float(v) for v in out[key])
        rules[key] = (out[key], check(lo, hi), f"[lo, hi] with {rule}")
    for key, (value, ok, rule) in rules.items():
        if not ok:
            raise ValueError(f"data.simulation.{key}: {value} must be {rule}")
    return out


def _shaped(key: str, default: Any, value: Any) -> Any:
    """``value`` if it has the shape of its key's ``default`` (a number, a flag or a [lo, hi] pair),
    as a list for a pair; else a ``ValueError`` that names the key."""

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if isinstance(default, bool):
        ok, shape = isinstance(value, bool), "true or false"
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(number(v) for v in value)
        shape = "a pair of numbers [lo, hi]"
    else:
        ok, shape = number(value), "a number"
    if not ok:
        raise ValueError(f"data.simulation.{key}: {value!r} must be {shape}")
    return list(value) if isinstance(value, (list, tuple)) else value


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by a stable hash of ``keys`` (never Python's randomized ``hash``)."""
    digest = hashlib.sha256(repr(tuple(keys)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest[:16], dtype=np.uint32))))


def cell_of(variant: str, lr: float, weight_decay: float) -> str:
    """The cell's key (its draws' seed): the values as the run names write them, so distinct
    grid values are distinct cells (``exact_str``; ``format(x, "g")`` for ordinary values)."""
    return f"{variant}|lr{exact_str(lr)}|wd{exact_str(weight_decay)}"


def _pair(rng: np.random.Generator, rho: float) -> tuple[float, float]:
    a, z = rng.standard_normal(2)
    return float(a), float(rho * a + math.sqrt(max(0.0, 1.0 - rho * rho)) * z)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def progress(schedule: Schedule, n_steps: int, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """(tau, LR factor) per step: tau mixes the step count with the cumulative LR factor."""
    f = np.array([schedule.factor(i) for i in range(n_steps)], dtype=float)
    tau = (1.0 - effect) * np.arange(1.0, n_steps + 1.0) + effect * np.cumsum(f)
    return tau, f


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    if width <= 0:
        return np.maximum(x, 0.0)
    return width * np.logaddexp(0.0, x / width)


def clean_loss(params: Mapping[str, Any], tau: np.ndarray) -> np.ndarray:
    """Noise-free training loss at progress ``tau`` (nats)."""
    x = np.log(tau)
    w = float(params["knee_width"])
    lg = -params["alpha"] * _soft(x - math.log(params["tau_knee"]), w)
    if params["second_break"]:
        lg = lg - params["second_break_change"] * _soft(x - math.log(params["tau_break"]), w)
    x0 = math.log(params["tau0"])  # normalised at step 0, whatever steps ``tau`` covers
    lg0 = -params["alpha"] * _soft(np.array([x0 - math.log(params["tau_knee"])]), w)[0]
    if params["second_break"]:
        lg0 -= params["second_break_change"] * _soft(np.array([x0 - math.log(params["tau_break"])]), w)[0]
    l0, c = params["initial_loss"], params["floor"]
    return c + (l0 - c) * np.exp(lg - lg0)


def ols_alpha(steps: np.ndarray, loss: np.ndarray) -> float:
    """Slope of ``log loss = b - alpha * ln(step + 1)`` (the α_early definition of the analysis)."""
    x = np.log(steps + 1.0)
    y = np.log(loss)
    xc = x - x.mean()
    return float(-(xc @ (y - y.mean())) / (xc @ xc))


def ar1(innov: np.ndarray, phi: float) -> np.ndarray:
    """x[0] = innov[0], x[i] = phi x[i-1] + innov[i] (a plain loop: scipy.signal costs seconds to import)."""
    out = np.empty(len(innov))
    x = 0.0
    for i, v in enumerate(innov.tolist()):
        x = phi * x + v
        out[i] = x
    return out


def run_params(
    sim: Mapping[str, Any],
    *,
    variant: str,
    lr: float,
    weight_decay: float,
    seed: int,
    steps_per_epoch: int,
    epochs: int,
    schedule: Schedule,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """The run's curve parameters, its progress ``tau`` and LR factor per step."""
    spe, total = int(steps_per_epoch), int(steps_per_epoch) * int(epochs)
    cell = cell_of(variant, lr, weight_decay)
    base = int(sim["seed"])
    rc = _rng("cell", base, cell)
    rr = _rng("run", base, cell, int(seed))
    u_alpha, u_ce = _pair(rc, float(sim["h2"]["rho_cell"]))
    w_alpha, w_ce = _pair(rr, float(sim["h2"]["rho_within"]))
    knee_cell = _loguniform(rc, *(float(e) * spe for e in sim["knee_epochs"]))
    a, b = sim["alpha"], sim["best_ce"]
    alpha = max(0.05, a["mean"] + a["cell_sd"] * u_alpha + a["within_sd"] * w_alpha)
    best_ce = max(0.02, b["mean"] + b["cell_sd"] * u_ce + b["within_sd"] * w_ce)
    knee = knee_cell * 10 ** (float(sim["knee_jitter_decades"]) * rr.standard_normal())
    knee = float(min(max(knee, 2.0), total / 4))
    second = bool(rr.random() < float(sim["second_break_share"]))
    break_step = float(rr.uniform(*sim["second_break_epochs"]) * spe)
    floor_share = float(rr.uniform(*sim["floor_share"]))
    diverged = bool(rr.random() < float(sim["diverge_share"]))
    diverge_step = int(rr.uniform(*sim["diverge_epochs"]) * spe)
    # a second break or a divergence drawn past the run's last step does not happen in it
    second = second and break_step < total - 1
    diverged = diverged and diverge_step < total
    tau, f = progress(schedule, total, float(sim["schedule_effect"]))
    p = {
        "cell": cell,
        "initial_loss": float(sim["initial_loss"]),
        "knee_width": float(sim["knee_width"]),
        "tau0": float(tau[0]),
        "alpha": float(alpha),
        "knee_step": knee,
        "tau_knee": float(np.interp(knee, np.arange(total), tau)),
        "second_break": second,
        "second_break_step": break_step if second else None,
        "second_break_change": float(sim["second_break_change"]),
        "tau_break": float(np.interp(break_step, np.arange(total), tau)),
        "floor": 0.0,
        "floor_share": floor_share,
        "best_ce_target": float(best_ce),
        "diverged": diverged,
        "diverge_step": diverge_step if diverged else None,
        "val_gap": float(sim["val"]["gap"]),
        "cell_parts": {"alpha": u_alpha, "best_ce": u_ce},
        "within_parts": {"alpha": w_alpha, "best_ce": w_ce},
    }
    # the floor is a share of the final loss: c = share * L0 g_end / (1 - share + share g_end)
    g_end = clean_loss(p, tau[-1:])[0] / p["initial_loss"]
    p["floor"] = float(floor_share * p["initial_loss"] * g_end / (1.0 - floor_share + floor_share * g_end))
    return p, tau, f


def run_truth(sim: Mapping[str, Any], *, val_steps: np.ndarray, **run: Any) -> dict:
    """Everything known about a run before it is simulated (written to ``truth.json``).

    ``run``: the run's keyword arguments of :func:`run_params` (variant, lr, weight_decay, seed,
    steps_per_epoch, epochs, schedule).
    """
    p, tau, _ = run_params(sim, **run)
    variant, lr, weight_decay, seed = run["variant"], run["lr"], run["weight_decay"], run["seed"]
    steps_per_epoch, epochs = run["steps_per_epoch"], run["epochs"]
    spe = int(steps_per_epoch)
    clean = clean_loss(p, tau)
    val = _clean_val(p, clean, val_steps)
    lo, hi = (float(e) for e in sim["early_window"])
    steps = np.arange(len(clean))
    sel = (steps / spe >= lo) & (steps / spe < hi)
    truth = {k: v for k, v in p.items() if k not in ("tau_knee", "tau_break", "tau0", "val_gap")}
    truth.update(
        variant=variant,
        lr=float(lr),
        weight_decay=float(weight_decay),
        seed=int(seed),
        steps_per_epoch=spe,
        epochs=int(epochs),
        knee_epoch=p["knee_step"] / spe,
        second_break_epoch=(p["second_break_step"] / spe) if p["second_break"] else None,
        h1_single_power_law=None if p["diverged"] else not p["second_break"],
        alpha_early_true=ols_alpha(steps[sel], clean[sel]) if sel.sum() > 2 else None,
        alpha_full_true=ols_alpha(steps[steps >= math.ceil(p["knee_step"])], clean[steps >= math.ceil(p["knee_step"])]),
        configured_rho_cell=float(sim["h2"]["rho_cell"]),
        configured_rho_within=float(sim["h2"]["rho_within"]),
        best_val_ce_true=None if p["diverged"] and p["diverge_step"] < val_steps[-1] else float(val.min()),
        final_train_loss_true=float(clean[-1]),
        diverge_epoch=(p["diverge_step"] / spe) if p["diverged"] else None,
        schedule_effect=float(sim["schedule_effect"]),
    )
    return truth


def _clean_val(p: Mapping[str, Any], clean: np.ndarray, val_steps: np.ndarray) -> np.ndarray:
    gap = p["val_gap"]
    return p["best_ce_target"] + gap * (clean[np.asarray(val_steps) - 1] - clean[-1])


def simulate(
    sim: Mapping[str, Any], *, val_steps: np.ndarray, batch_size: int, n_train: int, **run: Any
) -> dict[str, np.ndarray]:
    """The whole run's logged values (deterministic; a resumed run recomputes and writes the rest).

    ``run``: as for :func:`run_truth`.
    """
    p, tau, f = run_params(sim, **run)
    seed, weight_decay = run["seed"], run["weight_decay"]
    steps_per_epoch, epochs = run["steps_per_epoch"], run["epochs"]
    spe = int(steps_per_epoch)
    n = spe * int(epochs)
    rng = _rng("noise", int(sim["seed"]), p["cell"], int(seed))
    clean = clean_loss(p, tau)
    nz = sim["noise"]
    ramp = np.linspace(0.0, 1.0, n)
    sigma = float(nz["sigma_start"]) + (float(nz["sigma_end"]) - float(nz["sigma_start"])) * ramp
    grow = sigma / max(float(nz["sigma_start"]), 1e-12)
    e = sigma * rng.standard_normal(n)
    phi, ar_sd = float(nz["ar_phi"]), float(nz["ar_sigma"])
    if phi > 0 and ar_sd > 0:
        innov = ar_sd * math.sqrt(1.0 - phi * phi) * rng.standard_normal(n)
        innov[0] = ar_sd * rng.standard_normal()  # start in the stationary law
        e = e + grow * ar1(innov, phi)
    loss = clean * np.exp(e)
    if p["diverged"]:
        d = int(p["diverge_step"])
        k = np.arange(n - d)
        loss[d:] = loss[d:] * np.exp(np.minimum(float(sim["diverge_rate"]) * k, 600.0))
    # batch accuracy from the loss: a smooth map, binomial over the batch
    bsz = np.full(n, int(batch_size))
    last = n_train - (spe - 1) * int(batch_size)
    if 0 < last < batch_size:
        bsz[spe - 1 :: spe] = last
    p_acc = np.clip(1.0 - 0.9 * np.minimum(loss / p["initial_loss"], 1.0) ** 0.8, 0.0, 1.0)
    acc = rng.binomial(bsz, p_acc) / bsz
    vs = np.asarray(val_steps)
    val = _clean_val(p, clean, vs) * np.exp(float(sim["val"]["sigma"]) * rng.standard_normal(len(vs)))
    if p["diverged"]:
        val = np.where(vs - 1 >= p["diverge_step"], loss[vs - 1] * 1.1, val)
    val_acc = np.clip(1.0 - 0.9 * np.minimum(val / p["initial_loss"], 1.0) ** 0.8, 0.0, 1.0)
    grad_norm = np.abs(2.0 * loss[vs - 1] ** 0.5 * np.exp(0.2 * rng.standard_normal(len(vs))))
    weight_norm = 30.0 + 10.0 * np.sqrt(vs / n) * (1.0 - 3 * float(weight_decay)) + 0.1 * rng.random(len(vs))
    return {
        "loss": loss,
        "clean": clean,
        "lr_factor": f,
        "acc": acc,
        "val_loss": val,
        "val_acc": val_acc,
        "grad_norm": grad_norm,
        "weight_norm": weight_norm,
        "params": p,
    }


def curvature_row(
    params: Mapping[str, Any],
    *,
    step: int,
    lr: float,
    seed: int,
    lambda_iters: int,
    lambda_min_iters: int,
    hutch_matvecs: int,
) -> dict:
    """A plausible curvature measurement at ``step`` (edge of stability: lambda_max ~ 2 / lr, noisy)."""
    r = _rng("curv", params["cell"], int(seed), int(step))
    lam = (
        (2.0 / max(lr, 1e-12))
        * (0.5 + 0.5 * math.tanh(step / max(params["knee_step"], 1.0)))
        * math.exp(0.1 * r.standard_normal())
    )
    trace = lam * (20.0 + 5.0 * r.random())
    iters = int(r.integers(lambda_min_iters, lambda_iters + 1))
    residual = 10.0 ** r.uniform(-6.0, -3.0) if iters < lambda_iters else 10.0 ** r.uniform(-3.0, -1.5)
    return {
        "lambda_max": lam,
        "hutch_trace": trace,
        "lambda_iters": iters,
        "hutch_matvecs": int(hutch_matvecs),
        "seconds": 1.0 + 0.1 * r.random(),
        "lambda_converged": iters < lambda_iters,
        "hutch_trace_se": 0.05 * trace * r.random(),
        "lambda_residual": residual,
        "lambda_min_ritz": -lam * (0.05 + 0.2 * r.random()),
        "status": "ok",
    }


def noise_row(
    params: Mapping[str, Any],
    loss: np.ndarray,
    *,
    step: int,
    every: int,
    psd_window: int,
    psd_min_points: int,
    seed: int,
) -> dict:
    """Noise monitors at ``step`` from the logged losses before it: residual power of log loss, spectrum tail."""
    r = _rng("noise-row", params["cell"], int(seed), int(step))
    seg = np.log(loss[max(0, step - psd_window) : step])
    points = int(min(psd_window, max(0, step - 10)))
    if points >= psd_min_points and seg.size > 2:
        resid = np.diff(seg)
        resid_power = float(np.var(resid))
        psd_tail = float(resid_power * (0.5 + r.random()))
    else:
        resid_power = psd_tail = math.nan
    grad_var = float(np.mean(loss[max(0, step - every) : step]) * (1.0 + 0.1 * r.random()))
    return {
        "psd_tail": psd_tail,
        "resid_power": resid_power,
        "grad_var": grad_var,
        "psd_points": points,
        "grad_var_steps": int(every),
    }
