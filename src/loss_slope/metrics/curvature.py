"""Curvature of the training loss: top Hessian eigenvalue and Hessian trace.

Both quantities are taken of the mean loss over a *fixed* list of held-out
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
    """Top Hessian eigenvalue by power iteration.

    Attributes
    ----------
    value : float
        Rayleigh quotient ``v·Hv`` of the last unit iterate, in loss units per
        (parameter unit)². Power iteration finds the eigenvalue of largest
        *magnitude*; for trained nets that is the top positive one.
    iterations : int
        Power iterations (one Hessian-vector product each).
    converged : bool
        True when the relative change of the Rayleigh quotient fell below
        ``tol`` before ``iters`` ran out.
    seconds : float
        Wall time of the measurement.
    matvecs : int
        Hessian-vector products computed for it: ``iterations``, or one fewer
        when started from Hutch++'s top Ritz vector, whose product ``H u`` is
        already known (:func:`curvature`). -1 when not recorded.
    """

    value: float
    iterations: int
    converged: bool
    seconds: float
    matvecs: int = -1


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
    with evaluation_mode(model), affine_batchnorm(model), torch.enable_grad(), torch.autocast(
        device.type, enabled=False
    ):
        yield model


def _power_iteration(
    op: _HessianOperator,
    init: Tensor,
    *,
    iters: int,
    tol: float,
    min_iters: int,
    init_product: Tensor | None = None,
) -> tuple[float, int, bool]:
    """Power iteration from ``init``; ``init_product = H init`` (if known) saves the first product.

    Returns (Rayleigh quotient, iterations, converged). Iterations count ``init_product``
    as one; ``op.matvecs`` counts only the products actually computed.
    """
    if iters < 1:
        raise CurvatureError(f"iters must be >= 1, got {iters}")
    norm0 = init.norm()
    v = init / norm0
    value, previous, converged, it = 0.0, math.nan, False, 0
    for it in range(1, iters + 1):
        if it == 1 and init_product is not None:
            w = init_product / norm0  # H is linear: H (init/‖init‖) = (H init)/‖init‖
        else:
            w = op.matmat(v.unsqueeze(0))[0]
        value = float(torch.dot(v, w))
        norm = w.norm()
        if float(norm) == 0.0:  # H v = 0 exactly: v is in the null space and H may be zero
            converged = True
            break
        if it >= min_iters and abs(value - previous) < tol * abs(value):
            converged = True
            break
        v, previous = w / norm, value
    return value, it, converged


def _hutchpp(
    op: _HessianOperator, *, matvecs: int, generator: torch.Generator | None
) -> tuple[float, float, float, Tensor, Tensor]:
    """Return (trace, std_error, top Ritz value, top Ritz vector u, H u).

    ``H u = (HQ)ᵀ e`` comes from the products already made for ``tr(QᵀHQ)``, so power
    iteration started at ``u`` gets its first product for free.
    """
    if matvecs < 3:
        raise CurvatureError(f"Hutch++ needs at least 3 matvecs, got {matvecs}")
    m = matvecs // 3
    n_resid = matvecs - 2 * m
    sketch = op.matmat(_rademacher((m, op.dim), op, generator))
    q, _ = torch.linalg.qr(sketch.T)  # (dim, min(dim, m)), orthonormal columns
    qt = q.T.contiguous()
    hq = op.matmat(qt)
    t = qt @ hq.T
    t = (t + t.T) / 2
    top_trace = torch.trace(t)
    evals, evecs = torch.linalg.eigh(t)
    ritz_vector = q @ evecs[:, -1]
    ritz_product = hq.T @ evecs[:, -1]  # H (Q e) = Σᵢ eᵢ H qᵢ
    g = _rademacher((n_resid, op.dim), op, generator)
    g -= (g @ q) @ qt  # project onto the complement of span(Q)
    z = (g * op.matmat(g)).sum(dim=1)
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
    """Largest Hessian eigenvalue of the mean loss over ``batches`` by power iteration.

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
        Maximum number of iterations (= Hessian-vector products).
    tol : float
        Stop when ``|λ_i − λ_{i−1}| < tol·|λ_i|``, checked from ``min_iters`` on.
    min_iters : int
        Iterations always run before the convergence check may stop the loop.
    generator : torch.Generator, optional
        Source of the random start vector (Rademacher, normalised).
    init : Tensor, optional
        Start vector of length ``n_params`` (flattened ``model.parameters()``
        with ``requires_grad``); overrides the random start.
    keep_graphs : bool
        Build each batch's gradient graph once and reuse it for every product.
    matvec_block : int
        Hessian-vector products per vmapped backward pass (Hutch++ stages only;
        power iteration is sequential). 1 = one product per backward.

    Returns
    -------
    LambdaMax
    """
    start = time.perf_counter()
    with _probe(model) as net:
        op = _HessianOperator(net, loss_fn, batches, _trainable(net), keep_graphs=keep_graphs, block=matvec_block)
        try:
            v0 = _rademacher((op.dim,), op, generator) if init is None else init.to(op.device, op.dtype)
            value, it, converged = _power_iteration(op, v0, iters=iters, tol=tol, min_iters=min_iters)
        finally:
            op.close()
    return LambdaMax(
        value=value, iterations=it, converged=converged, seconds=time.perf_counter() - start, matvecs=op.matvecs
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
    """Hutch++ trace, then power iteration started from the top Ritz vector of Hutch++.

    One Hessian operator serves both, so the gradient graphs are built once, and
    the Ritz start usually lets power iteration converge in ``min_iters``
    iterations. The first iteration's product ``H u`` of the Ritz vector ``u``
    is a combination of Hutch++'s ``H Q`` products, so it costs nothing:
    power iteration uses ``iterations − 1`` products. Parameters as in
    :func:`lambda_max` and :func:`hutch_trace`.
    """
    start = time.perf_counter()
    with _probe(model) as net:
        op = _HessianOperator(net, loss_fn, batches, _trainable(net), keep_graphs=keep_graphs, block=matvec_block)
        try:
            t0 = time.perf_counter()
            value, se, ritz, ritz_vector, ritz_product = _hutchpp(op, matvecs=matvecs, generator=generator)
            trace = HutchTrace(value, op.matvecs, time.perf_counter() - t0, se, se * se, ritz)
            t0, before = time.perf_counter(), op.matvecs
            lam, it, converged = _power_iteration(
                op, ritz_vector, iters=iters, tol=tol, min_iters=min_iters, init_product=ritz_product
            )
            top = LambdaMax(lam, it, converged, time.perf_counter() - t0, matvecs=op.matvecs - before)
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
