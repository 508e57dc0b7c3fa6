"""Curvature of the training loss: top Hessian eigenvalue and Hessian trace.

The top eigenvalue comes from Lanczos (algebraically largest, with a residual
certificate), the trace from Hutch++. Both quantities are taken of the mean loss over a *fixed* list of held-out
training batches, so that successive measurements differ only because the
weights changed.  Hessian-vector products use double backprop
(``torch.autograd.grad`` with ``create_graph=True``).

BatchNorm: every measurement runs with the model in eval mode (running
statistics), which makes the loss a deterministic, per-sample function of the
weights and leaves the running statistics untouched; each eval-mode BatchNorm
is then evaluated as the equivalent per-channel affine map (:func:`affine_batchnorm`),
whose double backward is cheaper.  The mode of every
submodule is restored afterwards, and ``.grad`` of the parameters is never
written (``torch.autograd.grad`` returns gradients instead of accumulating
them).  See ``docs/monitors.md`` for the reasoning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from loss_slope.metrics.errors import CurvatureError

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Curvature",
    "HutchTrace",
    "LambdaMax",
    "curvature",
    "affine_batchnorm",
    "evaluation_mode",
    "fixed_batches",
    "hutch_trace",
    "lambda_max",
]


@dataclass(frozen=True)
class LambdaMax:
    """Top (algebraically largest) Hessian eigenvalue by Lanczos.

    Attributes
    ----------
    value : float
        The largest Ritz value of the Lanczos tridiagonal matrix ``T_k``, in loss
        units per (parameter unit)². It is the algebraically largest eigenvalue
        (not the largest in magnitude). A Ritz value never exceeds the true top
        eigenvalue. A negative value means no positive curvature was found in the
        Krylov space searched; started from the Hutch++ sketch (:func:`curvature`),
        that space lies in the range of ``H``, so a zero eigenvalue of a negative
        semidefinite ``H`` is not seen there.
    iterations : int
        Lanczos vectors ``k`` (the size of ``T_k``); each costs one Hessian-vector
        product, except the first when its product is already known (:func:`curvature`).
    converged : bool
        True when the relative residual fell to ``tol`` or below (or the Krylov
        space became invariant) within ``iters`` vectors.
    seconds : float
        Wall time of the measurement.
    matvecs : int
        Hessian-vector products computed for it. -1 when not recorded.
    residual : float
        Convergence certificate ``‖H v − λ v‖ / |λ|`` of the unit Ritz vector ``v``
        of ``value``. Some eigenvalue of ``H`` lies within ``residual·|λ|`` of the
        value (and within ``(residual·λ)²/gap`` when the next eigenvalue of ``H``, not
        the next Ritz value, which overstates the gap, is ``gap`` below).
    bottom : float
        The smallest Ritz value of ``T_k``: an upper bound on the smallest
        eigenvalue (the most negative curvature seen), not certified.
    """

    value: float
    iterations: int
    converged: bool
    seconds: float
    matvecs: int = -1
    residual: float = math.nan
    bottom: float = math.nan


@dataclass(frozen=True)
class HutchTrace:
    """Hessian trace by Hutch++.

    Attributes
    ----------
    value : float
        Trace estimate ``tr(QᵀHQ) + mean_i z_i`` (see ``docs/monitors.md``).
    matvecs : int
        Hessian-vector products used.
    seconds : float
        Wall time of the measurement.
    std_error : float
        Standard error of ``value`` given the sketch ``Q``:
        ``std(z_i, ddof=1) / sqrt(n_z)``. Zero when ``Q`` spans the whole
        parameter space; NaN when there is a single residual probe.
    variance : float
        ``std_error ** 2``.
    top_ritz_value : float
        Largest eigenvalue of ``QᵀHQ`` — a lower bound on ``lambda_max`` that
        comes for free.
    """

    value: float
    matvecs: int
    seconds: float
    std_error: float
    variance: float
    top_ritz_value: float


@dataclass(frozen=True)
class Curvature:
    """Both curvature measurements of one event (shared Hessian graphs)."""

    lambda_max: LambdaMax
    trace: HutchTrace
    seconds: float


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each module's own flag on exit.

    Restoring per module (not ``model.train(flag)``) keeps deliberately frozen
    submodules, e.g. a BatchNorm held in eval inside a training model, as they were.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile does not support double backward; probe the eager module.
    return getattr(model, "_orig_mod", model)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CurvatureError("the model has no parameter with requires_grad=True")
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise CurvatureError(f"parameters have mixed dtypes {sorted(map(str, dtypes))}; cast the model first")
    if not params[0].is_floating_point():
        raise CurvatureError(f"parameters must be floating point, got {params[0].dtype}")
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise CurvatureError(f"parameters live on several devices {sorted(map(str, devices))}")
    return params


class _HessianOperator:
    """``V ↦ H V`` for the sample-weighted mean loss over fixed batches.

    Parameters are flattened in ``model.parameters()`` order. With
    ``keep_graphs`` the first-order gradient graph of every batch is built once
    and reused by every product (fastest; memory grows with the number of
    batches); otherwise it is rebuilt per call and per batch. ``block`` > 1
    computes that many products in one vmapped backward (``is_grads_batched``):
    no faster on CPU, possibly faster on a GPU, with ``block`` × the memory.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Batch],
        params: list[nn.Parameter],
        *,
        keep_graphs: bool,
        block: int = 1,
    ) -> None:
        if block < 1:
            raise CurvatureError(f"matvec_block must be >= 1, got {block}")
        if len(batches) == 0:
            raise CurvatureError("no curvature batches given")
        self.model, self.loss_fn, self.params = model, loss_fn, params
        self.device, self.dtype = params[0].device, params[0].dtype
        self.sizes = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        self.dim = sum(self.sizes)
        self.batches = [self._to_device(x, y) for x, y in batches]
        counts = [int(x.shape[0]) for x, _ in self.batches]
        if min(counts) <= 0:
            raise CurvatureError("a curvature batch is empty")
        self.weights = [c / sum(counts) for c in counts]
        self.keep_graphs, self.block = keep_graphs, block
        self._graphs: dict[int, list[Tensor | None]] = {}
        self.matvecs = 0

    def _to_device(self, x: Tensor, y: Tensor) -> Batch:
        x = x.to(self.device, dtype=self.dtype if x.is_floating_point() else None, non_blocking=True)
        return x, y.to(self.device, non_blocking=True)

    def _gradient_graph(self, i: int) -> list[Tensor | None]:
        if i in self._graphs:
            return self._graphs[i]
        x, y = self.batches[i]
        loss = self.loss_fn(self.model(x), y)
        if loss.ndim != 0:
            raise CurvatureError(f"loss_fn must return a scalar mean loss, got shape {tuple(loss.shape)}")
        grads = list(torch.autograd.grad(loss * self.weights[i], self.params, create_graph=True, allow_unused=True))
        if self.keep_graphs:
            self._graphs[i] = grads
        return grads

    def matmat(self, vectors: Tensor) -> Tensor:
        """Return ``H vᵣ`` for every row ``vᵣ`` of ``vectors`` (shape ``(m, dim)``)."""
        out = torch.zeros_like(vectors)
        for i in range(len(self.batches)):
            grads = self._gradient_graph(i)
            live = [j for j, g in enumerate(grads) if g is not None and g.requires_grad]
            wrt = [j for j, g in enumerate(grads) if g is not None]
            if not live:  # loss is at most linear in the weights: H = 0 on this batch
                continue
            for first in range(0, vectors.shape[0], self.block):
                chunk = vectors[first : first + self.block]
                rows = chunk.shape[0]
                pieces = chunk.split(self.sizes, dim=1)
                hv = torch.autograd.grad(  # vᵀ ∂g/∂θ = (H v)ᵀ, H symmetric
                    [grads[j] for j in live],
                    [self.params[j] for j in wrt],
                    grad_outputs=[
                        pieces[j].reshape(self.shapes[j]) if rows == 1 else pieces[j].reshape(rows, *self.shapes[j])
                        for j in live
                    ],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=rows > 1,
                )
                targets = out[first : first + rows].split(self.sizes, dim=1)
                for j, h in zip(wrt, hv):
                    if h is not None:
                        targets[j].add_(h.reshape(rows, -1))
        self.matvecs += vectors.shape[0]
        return out

    def close(self) -> None:
        self._graphs.clear()


def _rademacher(shape: tuple[int, ...], like: _HessianOperator, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
    return bits.to(like.device, like.dtype).mul_(2).sub_(1)


_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _affine_batchnorm_forward(bn: nn.modules.batchnorm._BatchNorm) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return torch.addcmul(shift.view(shape), x, scale.view(shape))

    return forward


@contextmanager
def affine_batchnorm(model: nn.Module) -> Iterator[int]:
    """Inside the block, every eval-mode BatchNorm with running statistics computes ``x·s + t``.

    ``s = weight / sqrt(running_var + eps)`` and ``t = bias − running_mean·s``: the same
    function of the input *and of the affine parameters* as the native eval-mode BatchNorm
    (equal up to rounding), so the Hessian is the same. Its double backward is a few
    per-channel multiplies instead of the generic ``native_batch_norm_backward`` double
    backward, which makes a Hessian-vector product of ResNet-18 ~6 % cheaper on CPU. Only plain
    ``BatchNorm1d/2d/3d`` (not subclasses, which may override ``forward``) in eval mode are
    changed; their ``forward`` is restored on exit. Yields how many modules were changed.
    """
    changed = []
    for m in model.modules():
        if (
            type(m) in _PLAIN_BATCHNORMS
            and not m.training
            and m.track_running_stats
            and m.running_mean is not None
            and m.running_var is not None
            and "forward" not in m.__dict__
        ):
            m.forward = _affine_batchnorm_forward(m)
            changed.append(m)
    try:
        yield len(changed)
    finally:
        for m in changed:
            del m.forward


@contextmanager
def _probe(model: nn.Module) -> Iterator[nn.Module]:
    if torch.is_inference_mode_enabled():
        raise CurvatureError("curvature needs autograd; it cannot run under torch.inference_mode()")
    model = _unwrap(model)
    device = next(model.parameters()).device
    with (
        evaluation_mode(model),
        affine_batchnorm(model),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        yield model


def _lanczos(
    op: _HessianOperator,
    init: Tensor,
    *,
    iters: int,
    tol: float,
    min_iters: int,
    init_product: Tensor | None = None,
) -> tuple[float, float, float, int, bool]:
    """Lanczos with full reorthogonalisation from ``init``; ``init_product = H init`` saves a product.

    Runs until the top Ritz pair ``(θ, v)`` of ``T_k`` has ``‖H v − θ v‖ ≤ tol·|θ|``
    (checked from ``min_iters`` vectors on), the Krylov space is invariant, or
    ``iters`` vectors are used. The residual is ``β_k |s_k|`` (``s`` the eigenvector of
    ``T_k``), exact because every new vector is orthogonalised twice against all
    earlier ones. Returns (top Ritz value, relative residual, smallest Ritz value,
    vectors k, converged). The vectors are the only memory it keeps (k × n_params).
    """
    if not 1 <= min_iters <= iters:
        raise CurvatureError(f"need 1 <= min_iters <= iters, got min_iters={min_iters}, iters={iters}")
    norm0 = init.norm()
    if not torch.isfinite(norm0) or float(norm0) == 0.0:
        raise CurvatureError("the Lanczos start vector is zero or not finite")
    basis = [init / norm0]
    alphas: list[float] = []
    betas: list[float] = []
    top = bottom = residual = math.nan
    converged = False
    for k in range(1, iters + 1):
        v = basis[-1]
        if k == 1 and init_product is not None:
            w = init_product / norm0  # H is linear: H (init/‖init‖) = (H init)/‖init‖
        else:
            w = op.matmat(v.unsqueeze(0))[0]
        alphas.append(float(torch.dot(v, w)))
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            for b in basis:
                w.sub_(b, alpha=float(torch.dot(b, w)))
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        top, bottom = float(evals[-1]), float(evals[0])
        if not math.isfinite(top) or not math.isfinite(beta):
            raise CurvatureError("non-finite Hessian-vector product")
        scale = abs(top) if top != 0.0 else 1.0
        residual = abs(beta * float(evecs[-1, -1])) / scale
        # invariant Krylov space: T_k holds exact eigenvalues of H
        if beta <= 1e-12 * max(abs(top), abs(bottom), 1e-30):
            converged, residual = True, 0.0
            break
        if k >= min_iters and residual <= tol:
            converged = True
            break
        if k < iters:
            basis.append(w.div_(beta))
            betas.append(beta)
        del w
    basis.clear()
    return top, residual, bottom, k, converged


def _hutchpp(
    op: _HessianOperator, *, matvecs: int, generator: torch.Generator | None
) -> tuple[float, float, float, Tensor, Tensor]:
    """Return (trace, std_error, top Ritz value, top Ritz vector u, H u).

    ``H u = (HQ)ᵀ e`` comes from the products already made for ``tr(QᵀHQ)``, so
    Lanczos started at ``u`` gets its first product for free. Memory: the sketch
    is freed once ``Q`` is formed, and the residual probes are drawn and
    multiplied in chunks of ``max(1, matvec_block)``, so at most ``2m + 2·chunk``
    vectors of ``n_params`` live at once (``m = matvecs // 3``).
    """
    if matvecs < 3:
        raise CurvatureError(f"Hutch++ needs at least 3 matvecs, got {matvecs}")
    m = matvecs // 3
    n_resid = matvecs - 2 * m
    sketch = op.matmat(_rademacher((m, op.dim), op, generator))
    q, _ = torch.linalg.qr(sketch.T)  # (dim, min(dim, m)), orthonormal columns
    del sketch
    qt = q.T.contiguous()
    del q
    hq = op.matmat(qt)
    t = qt @ hq.T
    t = (t + t.T) / 2
    top_trace = torch.trace(t)
    evals, evecs = torch.linalg.eigh(t)
    ritz_vector = evecs[:, -1] @ qt
    ritz_product = evecs[:, -1] @ hq  # H (Q e) = Σᵢ eᵢ H qᵢ
    del hq
    chunk = max(1, getattr(op, "block", 1))
    z = []
    for first in range(0, n_resid, chunk):
        g = _rademacher((min(chunk, n_resid - first), op.dim), op, generator)
        g -= (g @ qt.T) @ qt  # project onto the complement of span(Q)
        z.append((g * op.matmat(g)).sum(dim=1))
        del g
    del qt
    z = torch.cat(z)
    value = float(top_trace + z.mean())
    std_error = float(z.std(correction=1) / math.sqrt(n_resid)) if n_resid > 1 else math.nan
    return value, std_error, float(evals[-1]), ritz_vector, ritz_product


def lambda_max(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    min_iters: int = 5,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    keep_graphs: bool = True,
    matvec_block: int = 1,
) -> LambdaMax:
    """Largest (algebraically) Hessian eigenvalue of the mean loss over ``batches`` by Lanczos.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode; modes are restored and ``.grad`` is not touched.
        A ``torch.compile`` wrapper is unwrapped (no double backward there).
    loss_fn : callable
        ``loss_fn(model(x), y)`` returns the scalar *mean* loss of a batch.
        Batches are weighted by their size, so the loss is the mean over all samples.
    batches : sequence of (x, y)
        Fixed held-out training batches; moved to the parameters' device, and
        floating inputs cast to the parameters' dtype.
    iters : int
        Maximum number of Lanczos vectors (= Hessian-vector products).
    tol : float
        Stop when the top Ritz pair's relative residual ``‖H v − λ v‖ / |λ|`` is at
        most ``tol``, checked from ``min_iters`` vectors on.
    min_iters : int
        Lanczos vectors always built before the convergence check may stop the loop.
    generator : torch.Generator, optional
        Source of the random start vector (Rademacher, normalised).
    init : Tensor, optional
        Start vector of length ``n_params`` (flattened ``model.parameters()``
        with ``requires_grad``); overrides the random start.
    keep_graphs : bool
        Build each batch's gradient graph once and reuse it for every product.
    matvec_block : int
        Hessian-vector products per vmapped backward pass (Hutch++ stages only;
        Lanczos is sequential). 1 = one product per backward.

    Returns
    -------
    LambdaMax
    """
    start = time.perf_counter()
    with _probe(model) as net:
        op = _HessianOperator(net, loss_fn, batches, _trainable(net), keep_graphs=keep_graphs, block=matvec_block)
        try:
            v0 = _rademacher((op.dim,), op, generator) if init is None else init.to(op.device, op.dtype)
            value, residual, bottom, it, converged = _lanczos(op, v0, iters=iters, tol=tol, min_iters=min_iters)
        finally:
            op.close()
    return LambdaMax(
        value=value,
        iterations=it,
        converged=converged,
        seconds=time.perf_counter() - start,
        matvecs=op.matvecs,
        residual=residual,
        bottom=bottom,
    )


def hutch_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    *,
    matvecs: int = 50,
    generator: torch.Generator | None = None,
    keep_graphs: bool = True,
    matvec_block: int = 1,
) -> HutchTrace:
    """Hessian trace of the mean loss over ``batches`` by Hutch++ with Rademacher probes.

    ``matvecs`` products are split as ``m = matvecs // 3`` for the sketch
    ``H S``, ``m`` for ``H Q`` and ``matvecs − 2m`` residual probes
    (Meyer, Musco, Musco & Woodruff 2021). Other parameters as in :func:`lambda_max`.

    Returns
    -------
    HutchTrace
    """
    start = time.perf_counter()
    with _probe(model) as net:
        op = _HessianOperator(net, loss_fn, batches, _trainable(net), keep_graphs=keep_graphs, block=matvec_block)
        try:
            value, se, ritz, _, _ = _hutchpp(op, matvecs=matvecs, generator=generator)
        finally:
            op.close()
    return HutchTrace(
        value=value,
        matvecs=op.matvecs,
        seconds=time.perf_counter() - start,
        std_error=se,
        variance=se * se,
        top_ritz_value=ritz,
    )


def curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    min_iters: int = 5,
    matvecs: int = 50,
    generator: torch.Generator | None = None,
    keep_graphs: bool = True,
    matvec_block: int = 1,
) -> Curvature:
    """Hutch++ trace, then Lanczos started from the top Ritz vector of Hutch++'s sketch.

    One Hessian operator serves both, so the gradient graphs are built once. The
    Lanczos start ``u = Q e`` is the top eigenvector of ``QᵀHQ``, the sketch's best
    guess of the top eigenvector, and ``H u`` is a combination of Hutch++'s ``H Q``
    products, so the first Lanczos vector costs nothing: Lanczos uses
    ``iterations − 1`` products (at most ``iters − 1``). Lanczos gives the
    algebraically largest eigenvalue with a residual certificate, and the smallest
    Ritz value (power iteration would give the largest in magnitude).
    Parameters as in :func:`lambda_max` and :func:`hutch_trace`.
    """
    start = time.perf_counter()
    with _probe(model) as net:
        op = _HessianOperator(net, loss_fn, batches, _trainable(net), keep_graphs=keep_graphs, block=matvec_block)
        try:
            t0 = time.perf_counter()
            value, se, ritz, ritz_vector, ritz_product = _hutchpp(op, matvecs=matvecs, generator=generator)
            trace = HutchTrace(value, op.matvecs, time.perf_counter() - t0, se, se * se, ritz)
            t0, before = time.perf_counter(), op.matvecs
            lam, residual, bottom, it, converged = _lanczos(
                op, ritz_vector, iters=iters, tol=tol, min_iters=min_iters, init_product=ritz_product
            )
            del ritz_vector, ritz_product
            top = LambdaMax(
                lam,
                it,
                converged,
                time.perf_counter() - t0,
                matvecs=op.matvecs - before,
                residual=residual,
                bottom=bottom,
            )
        finally:
            op.close()
    return Curvature(lambda_max=top, trace=trace, seconds=time.perf_counter() - start)


def fixed_batches(inputs: Tensor, targets: Tensor, *, n_batches: int, batch_size: int, seed: int = 0) -> list[Batch]:
    """Pick ``n_batches × batch_size`` distinct samples, fixed by ``seed``, as a list of batches.

    Pass *un-augmented* training samples so every curvature event sees the same loss.
    """
    need = n_batches * batch_size
    if need > inputs.shape[0] or n_batches < 1 or batch_size < 1:
        raise CurvatureError(f"cannot draw {n_batches} × {batch_size} samples from {inputs.shape[0]}")
    order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))[:need]
    idx = order.to(inputs.device).view(n_batches, batch_size)
    return [(inputs[i], targets[i.to(targets.device)]) for i in idx]
