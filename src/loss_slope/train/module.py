"""The LightningModule: cross-entropy classification with a per-step LR schedule.

Optimization is manual so that a step can survive running out of GPU memory:
an out-of-memory error during a step (``torch.OutOfMemoryError``, or a cuDNN /
cuBLAS allocation failure, which arrives as a plain ``RuntimeError``, also when
``torch.compile`` wrapped it: :func:`out_of_memory_error`) makes the module
retry the same batch as micro-batches of half the size with gradient
accumulation (``MicroBatcher``). The loss is the sum of the per-micro-batch
losses over the batch size, so the effective batch, the LR schedule and the
step count do not change. Without BatchNorm the gradient
is the whole batch's up to rounding. With BatchNorm it is not: each micro-batch
is normalised with its own statistics (and the running statistics are updated
once per micro-batch), so the step differs from the whole-batch step, as a
smaller batch's would. Without an OOM the step is the plain one (one forward,
one backward on the whole batch). Validation falls back in the same way to
smaller evaluation chunks (sums over the chunks; same loss up to rounding).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch.optim.lr_scheduler import LambdaLR

from loss_slope.train.schedule import Schedule

log = logging.getLogger("loss_slope.train")

OOM_ERRORS = (torch.OutOfMemoryError,)  # torch.cuda.OutOfMemoryError is the same class
# library allocation failures that reach Python as a plain RuntimeError
_ALLOCATION_FAILURES = (
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUSPARSE_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
    "CUDA out of memory",
)


def out_of_memory_error(exc: BaseException | None) -> BaseException | None:
    """The out-of-memory error ``exc`` is or wraps, or None: ``torch.OutOfMemoryError``, or a
    cuDNN / cuBLAS (or other CUDA library) allocation failure, which arrives as a ``RuntimeError``
    with the library's status in the message. ``torch.compile`` wraps an error of its backend
    in ``BackendCompilerFailed`` (kept as ``inner_exception``); ``raise ... from`` keeps it as
    ``__cause__``: both chains are followed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OOM_ERRORS):
            return exc
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _ALLOCATION_FAILURES):
            inner = getattr(exc, "inner_exception", None)  # a wrapper quotes its inner error
            return out_of_memory_error(inner) or exc
        inner = getattr(exc, "inner_exception", None)
        exc = inner if isinstance(inner, BaseException) else exc.__cause__
    return None


def is_out_of_memory(exc: BaseException | None) -> bool:
    """True when ``exc`` is or wraps an out-of-memory error (:func:`out_of_memory_error`)."""
    return out_of_memory_error(exc) is not None


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and hand cached CUDA blocks back. Call it *after* leaving the ``except``
    block of an out-of-memory error: until then the exception's traceback keeps the failed
    computation's tensors alive, and ``empty_cache`` cannot free them."""
    gc.collect()
    if (device is None or torch.device(device).type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _detached_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` with its message but without its traceback (which holds tensors)."""
    try:
        return type(exc)(str(exc))
    except Exception:
        return RuntimeError(str(exc))


def use_channels_last(requested: bool, device: torch.device | str) -> bool:
    """Whether a run on ``device`` uses channels_last (NHWC) activations and weights.

    ``trainer.channels_last`` is a CUDA option. On the CPU it is ignored, with
    one logged line: oneDNN's NHWC backward of a 1x1 stride-2 convolution with
    few input channels (the narrow shortcut of a small-width ResNet) corrupts
    the heap, hangs or returns wrong weight gradients on some x86 CPUs
    (AVX2-only) with torch 2.13, and NHWC gains little on the CPU anyway.
    """
    if not requested:
        return False
    if torch.device(device).type == "cuda":
        return True
    log.info(
        "trainer.channels_last ignored on %s: it is a CUDA option (contiguous NCHW on the CPU)",
        torch.device(device).type,
    )
    return False


UNSUPPORTED_PRECISIONS = ("16-mixed", "16", "16-true")


def check_precision(precision) -> None:
    """fp16 is refused: its ``GradScaler`` reads the inf check on the host every step (a sync per
    step), and a skipped step's inf/NaN gradients would reach the gradient-noise monitor. Use
    ``bf16-mixed`` (same exponent range as fp32: no loss scaling, no skipped steps) or ``32-true``."""
    if str(precision) in UNSUPPORTED_PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision} is not supported: fp16 needs loss scaling (a host sync "
            "per step, and skipped steps whose inf gradients would reach the monitors); use "
            "bf16-mixed or 32-true"
        )


def fused_kwargs(factory, device: torch.device) -> dict:
    """``{"fused": True}`` for AdamW/Adam on CUDA (one fused kernel instead of a foreach loop),
    unless the optimizer config sets ``fused`` or ``foreach`` itself; ``{}`` otherwise."""
    func = getattr(factory, "func", factory)
    keywords = getattr(factory, "keywords", {}) or {}
    if torch.device(device).type != "cuda" or func not in (torch.optim.AdamW, torch.optim.Adam):
        return {}
    if "fused" in keywords or "foreach" in keywords:
        return {}
    return {"fused": True}


class MicroBatchTooSmall(RuntimeError):
    """Out of memory even at the smallest allowed micro-batch: the run fails."""


class MicroBatcher:
    """The micro-batch a step is split into, halved on every out-of-memory error.

    ``size`` is ``None`` while whole batches fit. ``on_change`` receives one dict
    per reduction (step, from, to, accumulation, error): the run records it in
    its attempt log, from which its outcome is summarized.
    """

    def __init__(
        self,
        *,
        min_size: int = 1,
        size: int | None = None,
        on_change: Callable[[dict], None] | None = None,
        floor: str = "trainer.oom.min_micro_batch",
    ) -> None:
        if min_size < 1:
            raise ValueError(f"{floor} must be >= 1, got {min_size}")
        self.min_size, self.size, self.on_change = int(min_size), size, on_change
        self.floor = floor  # what sets min_size, named in the error

    def current(self, batch: int) -> int:
        return batch if self.size is None else min(self.size, batch)

    def shrink(self, *, step: int, batch: int, error: BaseException) -> int:
        old = self.current(batch)
        new = old // 2
        if new < self.min_size:
            raise MicroBatchTooSmall(
                f"CUDA out of memory at step {step} with a micro-batch of {old} (batch {batch}); halving it "
                f"would go below {self.floor}={self.min_size}, so this run does not fit in the "
                f"GPU memory it has: lower packing.runs_per_gpu (or the batch size). Last error: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from error
        self.size = new
        change = {
            "step": int(step),
            "from": old,
            "to": new,
            "accumulation": math.ceil(batch / new),
            "error": (str(error).splitlines() or [type(error).__name__])[0][:300],
        }
        log.warning(
            "CUDA out of memory at step %d: retrying the step as %d micro-batches of %d "
            "(gradient accumulation; effective batch %d unchanged)",
            step,
            change["accumulation"],
            new,
            batch,
        )
        if self.on_change is not None:
            self.on_change(change)
        return new


class CurveModule(LightningModule):
    """Wraps ``net``; ``optimizer`` is a partial (Hydra ``_partial_: true``).

    ``fault`` is the test-only OOM injector (:mod:`loss_slope.train.faults`):
    called as ``fault(step, micro_batch)`` before every forward of a step and
    of a validation chunk.

    ``channels_last`` is the requested ``trainer.channels_last``; it takes effect
    only on CUDA (:func:`use_channels_last`), where the net is converted when
    the fit starts on its device. ``self.channels_last`` is the effective flag.

    ``compile`` (opt-in, ``trainer.compile``): keyword arguments of
    ``torch.compile`` for the training forward only (``None``: eager; ``{}``:
    torch's defaults). ``forward`` (validation,
    the curvature monitor's Hessian-vector products, which need double
    backward) stays eager, and the state dict keys stay those of ``net``.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer,
        schedule: Schedule,
        *,
        channels_last: bool = False,
        gradient_clip_val: float | None = None,
        micro_batcher: MicroBatcher | None = None,
        fault: Callable[[int, int], None] | None = None,
        compile: dict | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self._optimizer_factory = optimizer
        self.schedule = schedule
        self.channels_last_requested = bool(channels_last)
        self.channels_last = False  # decided on the device (on_fit_start)
        self.gradient_clip_val = gradient_clip_val
        self.micro = micro_batcher or MicroBatcher()
        self.fault = fault
        # not an attribute nn.Module registers: the compiled wrapper shares net's parameters
        self.__dict__["_train_forward"] = (
            torch.compile(self.forward, **compile) if compile is not None else self.forward
        )
        self._buffer_copy: list[torch.Tensor] | None = None
        self.val_result: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val_sum = self._val_correct = None
        self._val_n = 0
        self.eval_chunk: int | None = None  # set after an out-of-memory error in validation

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_fit_start(self):
        check_precision(self.trainer.precision)
        self.channels_last = use_channels_last(self.channels_last_requested, self.device)
        self.net.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if self.device.type == "cuda":
            # fixed input shapes (the last, smaller batch of an epoch is a second shape): let cuDNN pick
            # the fastest convolution algorithms once per shape
            torch.backends.cudnn.benchmark = True

    # ---- one optimizer step ---------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        step = self.global_step
        guard = self.device.type == "cuda" or self.fault is not None  # an OOM is possible
        if guard:
            self._save_buffers()
        while True:
            try:
                loss, correct = self._accumulate(opt, x, y, step)
                break
            except Exception as exc:
                oom = out_of_memory_error(exc)
                if oom is None:
                    raise
                error = _detached_error(oom)
                del oom  # its traceback holds the failed try's frames, and so its tensors
            # out of the except block: the failed try's tensors are no longer referenced
            opt.zero_grad(set_to_none=True)
            if guard:
                self._restore_buffers()  # BatchNorm running stats of the failed try
            release_memory(self.device)
            self.micro.shrink(step=step, batch=int(y.shape[0]), error=error)
        opt.step()
        self.lr_schedulers().step()
        return {"loss": loss, "correct": correct}

    def _accumulate(self, opt, x, y, step: int):
        opt.zero_grad(set_to_none=True)
        n = int(y.shape[0])
        micro = self.micro.current(n)
        if micro >= n:  # the plain step
            if self.fault is not None:
                self.fault(step, n)
            logits = self._train_forward(x)
            loss = F.cross_entropy(logits, y)
            self.manual_backward(loss)
            return loss.detach(), (logits.detach().argmax(1) == y).sum()
        loss = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        for xs, ys in zip(x.split(micro), y.split(micro)):
            if self.fault is not None:
                self.fault(step, micro)
            logits = self._train_forward(xs)
            part = F.cross_entropy(logits, ys, reduction="sum") / n  # sums to the batch mean
            self.manual_backward(part)
            loss = loss + part.detach().float()
            correct = correct + (logits.detach().argmax(1) == ys).sum()
        return loss, correct

    def _save_buffers(self) -> None:
        bufs = [b for b in self.net.buffers()]
        if not bufs:
            return
        if self._buffer_copy is None or len(self._buffer_copy) != len(bufs):
            self._buffer_copy = [b.detach().clone() for b in bufs]
        else:
            torch._foreach_copy_(self._buffer_copy, [b.detach() for b in bufs])

    def _restore_buffers(self) -> None:
        if self._buffer_copy is None:
            return
        with torch.no_grad():
            for b, saved in zip(self.net.buffers(), self._buffer_copy):
                b.copy_(saved)

    def on_before_optimizer_step(self, optimizer):
        # after the callbacks' hooks (they see the unclipped gradient, as in automatic optimization)
        # Clipped here, not through Lightning's clip_gradients: that refuses any optimizer that unscales
        # gradients itself (fused AdamW on CUDA) under a mixed precision, bf16 included, although
        # bf16 has no loss scaler (16-mixed, which has one, is refused by the config)
        if self.gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm=float(self.gradient_clip_val))

    # ---- the micro-batch survives a resume ---------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["loss_slope_micro_batch"] = {"size": self.micro.size}

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("loss_slope_micro_batch")
        if saved:
            self.micro.size = saved["size"]

    # ---- validation -----------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_correct = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_n = 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        n = int(y.shape[0])
        while True:
            chunk = n if self.eval_chunk is None else min(self.eval_chunk, n)
            try:
                loss_sum, correct = self._evaluate(x, y, chunk)
                break
            except Exception as exc:
                oom = out_of_memory_error(exc)
                if oom is None:
                    raise
                error = _detached_error(oom)
                del oom  # its traceback holds the failed chunk's frames, and so its tensors
            release_memory(self.device)
            if chunk <= 1:
                raise MicroBatchTooSmall(f"out of memory in validation even one image at a time: {error}") from error
            self.eval_chunk = chunk // 2
            log.warning(
                "out of memory in validation at step %d: evaluating in chunks of %d images from now on",
                self.global_step,
                self.eval_chunk,
            )
        self._val_sum += loss_sum
        self._val_correct += correct
        self._val_n += n

    def _evaluate(self, x, y, chunk: int):
        loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
        correct = torch.zeros((), device=x.device, dtype=torch.float64)
        for xs, ys in zip(x.split(chunk), y.split(chunk)):
            if self.fault is not None:
                self.fault(self.global_step, int(ys.shape[0]))
            logits = self(xs)
            loss_sum += F.cross_entropy(logits.float(), ys, reduction="sum").double()
            correct += (logits.argmax(1) == ys).sum().double()
        return loss_sum, correct

    def on_validation_epoch_end(self):
        loss = self._val_sum / self._val_n
        acc = self._val_correct / self._val_n
        self.val_result = (loss, acc)
        # only this metric goes through self.log: the "best" checkpoint monitors it
        self.log("loss_val_nats", loss.float(), prog_bar=True, logger=False)

    def configure_optimizers(self):
        opt = self._optimizer_factory(self.net.parameters(), **fused_kwargs(self._optimizer_factory, self.device))
        schedule = self.schedule

        def lr_lambda(step: int) -> float:  # a plain function: LambdaLR does not pickle it
            return schedule.factor(step)

        sched = LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
