"""Which device a run trains on, and a fail-fast check for a GPU job without CUDA.

``trainer.accelerator``: ``cpu`` (honoured everywhere), ``cuda`` or its
Lightning spelling ``gpu`` (CUDA required), ``auto`` (CUDA when available).
Inside a SLURM GPU allocation (``SLURM_JOB_GPUS`` or ``CUDA_VISIBLE_DEVICES``
set) anything but an explicit ``cpu`` requires CUDA: a driver mismatch or a
bad node must fail in seconds, not train on the CPU while holding a GPU.
"""

from __future__ import annotations

import os

_ALIASES = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "auto": "auto"}


class NoGPUError(RuntimeError):
    """A GPU was asked for (or allocated) and CUDA is not available."""


def normalize_accelerator(value) -> str:
    key = str(value or "auto").lower()
    if key not in _ALIASES:
        raise ValueError(f"trainer.accelerator={value!r}: allowed values are cpu, cuda, gpu (= cuda), auto")
    return _ALIASES[key]


def gpu_allocation(environ=os.environ) -> str | None:
    """The GPU allocation this process runs in (a description), or None."""
    for var in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        val = environ.get(var)
        if val not in (None, "") and val != "-1":
            return f"{var}={val}"
    return None


def resolve_accelerator(value, *, cuda_available=None, environ=os.environ) -> str:
    """``cuda`` or ``cpu`` for ``trainer.accelerator``.

    Raises :class:`NoGPUError` when CUDA must be there and is not.
    """
    accel = normalize_accelerator(value)
    if accel == "cpu":
        return "cpu"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return "cuda"
    alloc = gpu_allocation(environ)
    if accel == "cuda":
        raise NoGPUError(
            f"trainer.accelerator={value} but CUDA is not available"
            f"{f' ({alloc})' if alloc else ''}: not training on the CPU"
        )
    if alloc:
        raise NoGPUError(
            f"this process runs in a GPU allocation ({alloc}) but CUDA is not available "
            "(driver or node problem?): refusing to train on the CPU; "
            "pass trainer.accelerator=cpu to train on the CPU on purpose"
        )
    return "cpu"
