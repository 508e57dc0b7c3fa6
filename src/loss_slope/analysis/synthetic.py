"""Known-truth loss curves for tests, benchmarks and threshold calibration.

The generator mimics batch-level SGD training loss as logged per optimizer step::

    tau      = step + shift                       # shift > 0 creates the initial plateau
    L_true   = floor + A * g(tau)                 # g: (broken) power law in tau
    log L    = log L_true + e_white + e_ar        # multiplicative noise
    e_white  ~ iid N(0, noise_sigma^2)
    e_ar     = AR(1) with coefficient ar_phi and *stationary* s.d. ar_sigma

``g(tau) = tau^-alpha`` for a knee-free curve.  With a knee at step ``k`` the
exponent changes from ``alpha`` to ``alpha_after`` at ``tau_k = k + shift`` (so the
knee is at optimizer step ``k``); ``knee_width > 0`` rounds the corner (a softplus of
that width in ln(tau) units), ``0`` makes it sharp.  ``A`` is chosen so that the
noise-free loss at step 0 equals ``initial_loss``.

Everything is in nats.  Steps are 0-based, as logged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import signal

__all__ = [
    "CurveSpec",
    "SyntheticCurve",
    "make_curve",
    "true_loss",
    "sample_spec",
    "NOISE_CLASSES",
    "sample_demo_spec",
]

#: Noise classes used by tests, the benchmark and the calibration.
NOISE_CLASSES = ("iid", "ar")


@dataclass(frozen=True)
class CurveSpec:
    """Parameters of one synthetic curve (all losses in nats, times in optimizer steps).

    Attributes
    ----------
    n_steps : int
        Number of logged steps (0 .. n_steps-1).
    alpha : float
        Power-law exponent (before the knee, if any).
    initial_loss : float
        Noise-free loss at step 0, nats (ln 10 for a 10-class problem).
    floor : float
        Irreducible loss ``c`` added to the power law, nats (>= 0).
    shift : float
        Transient shift ``t0`` in steps (> 0).  Large values give an initial plateau.
    knee_step : float or None
        Optimizer step of the knee; ``None`` for a knee-free curve.
    alpha_after : float or None
        Exponent after the knee (required when ``knee_step`` is set).
    knee_width : float
        Rounding of the knee in ln(tau) units (0 = sharp corner).
    noise_sigma : float
        s.d. of iid multiplicative noise (log units).
    ar_phi : float
        AR(1) coefficient of the slow multiplicative wander (0 = none).
    ar_sigma : float
        Stationary s.d. of the AR(1) wander (log units).
    noise_loss_power : float
        Heteroscedastic noise: both noise parts are multiplied at step ``i`` by
        ``(clean_i / initial_loss) ** -noise_loss_power`` (so the white s.d. is
        ``noise_sigma`` times that), the factor capped so that neither s.d.
        exceeds ``noise_sigma_max`` (0 = constant s.d.).  Batch log loss of a classifier
        scatters more as the loss falls (on the demo runs, from ~0.005 on the
        plateau to ~1 at the end).
    noise_sigma_max : float
        Cap of the heteroscedastic s.d.s.
    knee2_step : float or None
        Optimizer step of a second break (after ``knee_step``); ``None`` for none.
    alpha_after2 : float or None
        Exponent after the second break (required with ``knee2_step``).
    noise_growth : float
        Both noise parts grow geometrically along the run, by this factor from the
        first to the last step (1 = constant; on top of ``noise_loss_power``).
    """

    n_steps: int = 20_000
    alpha: float = 0.6
    initial_loss: float = math.log(10.0)
    floor: float = 0.0
    shift: float = 1.0
    knee_step: float | None = None
    alpha_after: float | None = None
    knee_width: float = 0.0
    noise_sigma: float = 0.05
    ar_phi: float = 0.0
    ar_sigma: float = 0.0
    noise_loss_power: float = 0.0
    noise_sigma_max: float = 1.5
    knee2_step: float | None = None
    alpha_after2: float | None = None
    noise_growth: float = 1.0

    def __post_init__(self) -> None:
        if self.n_steps < 2:
            raise ValueError("n_steps must be >= 2")
        if self.shift <= 0:
            raise ValueError("shift must be > 0 (tau = step + shift must be positive)")
        if self.floor < 0:
            raise ValueError("floor must be >= 0")
        if self.floor >= self.initial_loss:
            raise ValueError("floor must be below initial_loss")
        if (self.knee_step is None) != (self.alpha_after is None):
            raise ValueError("knee_step and alpha_after go together")
        if self.knee_step is not None and self.knee_step <= 0:
            raise ValueError("knee_step must be > 0")
        if (self.knee2_step is None) != (self.alpha_after2 is None):
            raise ValueError("knee2_step and alpha_after2 go together")
        if self.knee2_step is not None and (self.knee_step is None or self.knee2_step <= self.knee_step):
            raise ValueError("knee2_step needs a knee_step before it")
        if self.noise_growth <= 0:
            raise ValueError("noise_growth must be > 0")
        if not 0 <= self.ar_phi < 1:
            raise ValueError("ar_phi must be in [0, 1)")
        if self.noise_sigma < 0 or self.ar_sigma < 0:
            raise ValueError("noise levels must be >= 0")

    @property
    def has_knee(self) -> bool:
        """Whether the curve has a true knee."""
        return self.knee_step is not None

    @property
    def noise_class(self) -> str:
        """``"ar"`` when an AR(1) wander is present, else ``"iid"``."""
        return "ar" if (self.ar_phi > 0 and self.ar_sigma > 0) else "iid"


@dataclass(frozen=True)
class SyntheticCurve:
    """A generated curve and its truth.

    Attributes
    ----------
    steps : ndarray, shape (n,)
        0-based optimizer steps (float64).
    loss : ndarray, shape (n,)
        Noisy loss, nats.
    clean : ndarray, shape (n,)
        Noise-free loss, nats.
    spec : CurveSpec
        The parameters.
    seed : int
        Seed that produced the noise.
    """

    steps: np.ndarray
    loss: np.ndarray
    clean: np.ndarray
    spec: CurveSpec
    seed: int


def _log_g(tau: np.ndarray, spec: CurveSpec) -> np.ndarray:
    """log of the unit-amplitude (broken) power law at tau."""
    x = np.log(tau)
    out = -spec.alpha * x
    breaks = [(spec.knee_step, spec.alpha_after - spec.alpha if spec.knee_step is not None else 0.0)]
    if spec.knee2_step is not None:
        breaks.append((spec.knee2_step, spec.alpha_after2 - spec.alpha_after))
    for step, d in breaks:
        if step is None:
            continue
        xk = math.log(step + spec.shift)
        if spec.knee_width > 0:
            w = spec.knee_width
            # softplus centred so that g is continuous with the sharp version far away
            hinge = w * np.logaddexp(0.0, (x - xk) / w)
        else:
            hinge = np.maximum(x - xk, 0.0)
        out = out - d * hinge
    return out


def true_loss(steps: np.ndarray, spec: CurveSpec) -> np.ndarray:
    """Noise-free loss at the given steps.

    Parameters
    ----------
    steps : array_like, shape (n,)
        0-based optimizer steps.
    spec : CurveSpec

    Returns
    -------
    ndarray, shape (n,)
        Loss in nats.
    """
    steps = np.asarray(steps, dtype=float)
    tau = steps + spec.shift
    lg = _log_g(tau, spec)
    lg0 = _log_g(np.array([spec.shift]), spec)[0]
    amp = spec.initial_loss - spec.floor
    return spec.floor + amp * np.exp(lg - lg0)


def make_curve(spec: CurveSpec, *, seed: int) -> SyntheticCurve:
    """Generate one noisy curve.

    Parameters
    ----------
    spec : CurveSpec
        Shape and noise parameters.
    seed : int
        Seed for the noise (``numpy.random.default_rng``).

    Returns
    -------
    SyntheticCurve
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(spec.n_steps, dtype=float)
    clean = true_loss(steps, spec)
    fac = 1.0  # heteroscedastic scale factor (applies to the white and the AR part)
    if spec.noise_loss_power > 0:
        fac = (clean / spec.initial_loss) ** -spec.noise_loss_power
        top = max(spec.noise_sigma, spec.ar_sigma)
        if top > 0:
            fac = np.minimum(fac, spec.noise_sigma_max / top)
    if spec.noise_growth != 1.0:
        fac = fac * spec.noise_growth ** (steps / max(steps[-1], 1.0))
    noise = spec.noise_sigma * fac * rng.standard_normal(spec.n_steps)
    if spec.ar_phi > 0 and spec.ar_sigma > 0:
        innov_sd = spec.ar_sigma * math.sqrt(1.0 - spec.ar_phi**2)
        e = innov_sd * rng.standard_normal(spec.n_steps)
        e[0] = spec.ar_sigma * rng.standard_normal()  # start in the stationary law
        ar, _ = signal.lfilter([1.0], [1.0, -spec.ar_phi], e, zi=[0.0])
        noise = noise + fac * ar
    loss = clean * np.exp(noise)
    return SyntheticCurve(steps=steps, loss=loss, clean=clean, spec=spec, seed=int(seed))


def sample_spec(
    rng: np.random.Generator,
    *,
    knee: bool,
    floor: bool,
    noise: str,
    plateau: bool | None = None,
    n_steps: int | None = None,
) -> CurveSpec:
    """Draw a realistic random curve specification.

    The ranges are those used by the benchmark and the calibration (see
    ``docs/analysis.md``): 2k-20k steps, exponents 0.3-1.2, floors that make up
    15-60 % of the final loss, plateaus of 20-400 steps, iid log-noise s.d.
    0.02-0.15 and AR(1) wander with phi 0.9-0.995 and s.d. 0.02-0.08.

    Parameters
    ----------
    rng : numpy.random.Generator
    knee : bool
        Whether the curve has a knee (exponent change of 0.3-0.8, either direction).
    floor : bool
        Whether a loss floor is present.
    noise : {"iid", "ar"}
        Noise class.
    plateau : bool, optional
        Force an initial plateau on or off; random (50 %) when ``None``.
    n_steps : int, optional
        Curve length; log-uniform in [2000, 20000] when ``None``.

    Returns
    -------
    CurveSpec
    """
    if noise not in NOISE_CLASSES:
        raise ValueError(f"noise must be one of {NOISE_CLASSES}")
    if n_steps is None:
        n_steps = int(round(math.exp(rng.uniform(math.log(2000), math.log(20000)))))
    if plateau is None:
        plateau = bool(rng.random() < 0.5)
    shift = float(math.exp(rng.uniform(math.log(20), math.log(400)))) if plateau else 1.0
    if knee:
        shift = min(shift, n_steps / 20.0)  # leave room for a knee after the plateau
    alpha = float(rng.uniform(0.3, 1.2))
    knee_step = alpha_after = None
    if knee:
        lo = max(20.0, 3.0 * shift, n_steps / 100.0)
        hi = n_steps / 5.0
        knee_step = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        change = float(rng.uniform(0.3, 0.8))
        if rng.random() < 0.5:  # steepening: slow start, fast tail
            alpha = float(rng.uniform(0.1, 0.5))
            alpha_after = alpha + change
        else:  # flattening
            alpha = float(rng.uniform(0.9, 1.4))
            alpha_after = max(alpha - change, 0.2)
    sigma = float(rng.uniform(0.02, 0.15))
    phi = ar_sigma = 0.0
    if noise == "ar":
        phi = float(rng.uniform(0.9, 0.995))
        ar_sigma = float(rng.uniform(0.02, 0.08))
        sigma = float(rng.uniform(0.02, 0.10))
    spec = CurveSpec(
        n_steps=n_steps,
        alpha=alpha,
        shift=shift,
        knee_step=knee_step,
        alpha_after=alpha_after,
        noise_sigma=sigma,
        ar_phi=phi,
        ar_sigma=ar_sigma,
    )
    if floor:
        end = true_loss(np.array([n_steps - 1.0]), spec)[0]
        share = float(rng.uniform(0.15, 0.6))  # floor's share of the final loss
        c = share / (1.0 - share) * end
        spec = dataclasses.replace(spec, floor=min(c, 0.5 * spec.initial_loss))
    return spec


def sample_demo_spec(rng: np.random.Generator, *, knee: bool, n_steps: int = 1320) -> CurveSpec:
    """A curve like the offline demo's BN-off runs (~1,300 per-step points).

    With ``knee=True``: a flat plateau at ``initial_loss`` (exponent 0) until the knee
    at step 30-120, then a power law with exponent 0.8-1.6 (corner rounded by a
    softplus 0.1 wide in ln tau); the answer is that knee.  With ``knee=False``: a
    single power law with a transient shift of 30-120 steps (a smooth plateau, which
    the default detector's null model contains), exponent 0.8-1.6; no knee.  Both
    have strongly heteroscedastic multiplicative noise: log-noise s.d. 0.005-0.02 on
    the plateau growing as ``loss ** -(1.0-1.8)`` up to 1.5, plus on half of them a
    mild AR(1) wander (phi 0.9-0.98, s.d. 0.02-0.05 on the plateau) scaled by the
    same factor.

    Parameters
    ----------
    rng : numpy.random.Generator
    knee : bool
    n_steps : int

    Returns
    -------
    CurveSpec
    """
    t = float(math.exp(rng.uniform(math.log(30), math.log(120))))
    alpha = float(rng.uniform(0.8, 1.6))
    sigma = float(rng.uniform(0.005, 0.02))
    power = float(rng.uniform(1.0, 1.8))
    phi = ar_sigma = 0.0
    if rng.random() < 0.5:
        phi = float(rng.uniform(0.9, 0.98))
        ar_sigma = float(rng.uniform(0.02, 0.05))
    common = dict(n_steps=n_steps, noise_sigma=sigma, noise_loss_power=power, ar_phi=phi, ar_sigma=ar_sigma)
    if knee:
        return CurveSpec(alpha=0.0, shift=1.0, knee_step=t, alpha_after=alpha, knee_width=0.1, **common)
    return CurveSpec(alpha=alpha, shift=t, **common)


def iter_suite(
    n: int, *, seed: int, knee: bool, floor: bool, noise: str, plateau: bool | None = None
) -> Iterator[SyntheticCurve]:
    """Yield ``n`` reproducible curves of one class (used by the benchmark and tests)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        spec = sample_spec(rng, knee=knee, floor=floor, noise=noise, plateau=plateau)
        yield make_curve(spec, seed=int(rng.integers(2**31)) + i)
