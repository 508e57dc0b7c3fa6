"""Column definitions of the per-run metric tables (one table per cadence).

Shared by the training recorder (CSV), the Parquet converter and the
validator, so the three can never disagree on names or dtypes.
"""

from __future__ import annotations

import math

import pyarrow as pa

LN2 = math.log(2.0)

#: The columns that identify a run in every per-run record (fit rows, ``runs.csv``,
#: rule params): its coordinates in the study, from the config. A
#: :class:`loss_slope.study.runs.RunSpec` has one field per column (``RunSpec.identity``).
RUN_IDENTITY = ("variant", "run", "experiment", "optimizer", "lr", "weight_decay", "seed")

# every optimizer step: step 0..N-1, once each
STEPS = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),  # step / steps_per_epoch (at the start of the step)
        pa.field("time", pa.float64(), nullable=False),  # Unix time (s) when the step was recorded on the host
        pa.field("lr", pa.float64(), nullable=False),  # LR used by this step
        pa.field("wd", pa.float64(), nullable=False),  # weight decay used by this step
        pa.field("loss_train_nats", pa.float64(), nullable=False),  # mean CE of the mini-batch (nats)
        pa.field("loss_train_bits", pa.float64(), nullable=False),  # = nats / ln 2
        pa.field("acc_train", pa.float64(), nullable=False),  # mini-batch accuracy in [0, 1]
    ]
)

# val_per_epoch times per epoch (4 in the study); step = optimizer steps done
VAL = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("loss_val_nats", pa.float64(), nullable=False),
        pa.field("loss_val_bits", pa.float64(), nullable=False),
        pa.field("acc_val", pa.float64(), nullable=False),
        pa.field("grad_norm", pa.float64(), nullable=False),  # L2 norm of the last step's gradient (before clipping)
        pa.field("weight_norm", pa.float64(), nullable=False),  # L2 norm of all trainable parameters
    ]
)

# every trainer.monitors.curvature_every_steps optimizer steps (500 in the study);
# step = optimizer steps done, measured on the weights after `step` updates
# (columns = loss_slope.metrics.monitors.CURVATURE_KEYS; docs/monitors.md §2)
CURVATURE = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),  # step / steps_per_epoch
        pa.field("lambda_max", pa.float64(), nullable=False),  # top (algebraic) Hessian eigenvalue (Lanczos)
        pa.field("hutch_trace", pa.float64(), nullable=False),  # Hessian trace (Hutch++)
        pa.field("lambda_iters", pa.int64(), nullable=False),  # Lanczos vectors used
        pa.field("hutch_matvecs", pa.int64(), nullable=False),  # Hessian-vector products of Hutch++
        pa.field("seconds", pa.float64(), nullable=False),  # wall time of the measurement
        pa.field("lambda_converged", pa.bool_(), nullable=False),
        pa.field("hutch_trace_se", pa.float64(), nullable=False),  # standard error of hutch_trace
        pa.field("lambda_residual", pa.float64(), nullable=False),  # ||Hv - lambda v|| / |lambda|
        pa.field("lambda_min_ritz", pa.float64(), nullable=False),  # smallest Ritz value (Lanczos)
        pa.field("status", pa.string(), nullable=False),  # ok, or why the event wrote NaN
    ]
)

# every trainer.monitors.noise_every_epochs epochs (2 in the study), at the end
# of the epoch; a row at `step` covers per-step rows < step
# (columns = loss_slope.metrics.monitors.NOISE_KEYS; docs/monitors.md §3)
NOISE = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),
        pa.field("psd_tail", pa.float64(), nullable=False),  # NaN while psd_points < psd_min_points
        pa.field("resid_power", pa.float64(), nullable=False),  # NaN while psd_points < psd_min_points
        pa.field("grad_var", pa.float64(), nullable=False),  # NaN when grad_var_steps == 0
        pa.field("psd_points", pa.int64(), nullable=False),  # residuals in the spectrum window
        pa.field("grad_var_steps", pa.int64(), nullable=False),  # optimizer steps in grad_var
    ]
)

# one row per checkpoint file written (measured after the file is on disk);
# step = optimizer steps done when it was taken
CHECKPOINT_KINDS = ("latest", "best", "other")
CHECKPOINTS = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),  # Unix time (s) the file was written
        pa.field("kind", pa.string(), nullable=False),  # latest | best | other
        pa.field("file", pa.string(), nullable=False),  # file name inside checkpoints/{kind}/
        pa.field("checkpoint_size_mb", pa.float64(), nullable=False),  # 10^6 bytes
    ]
)

TABLES: dict[str, pa.Schema] = {
    "steps": STEPS,
    "val": VAL,
    "curvature": CURVATURE,
    "noise": NOISE,
    "checkpoints": CHECKPOINTS,
}

#: The monitor tables (docs/monitors.md): every table but the per-step and validation ones.
MONITOR_TABLES: tuple[str, ...] = tuple(t for t in TABLES if t not in ("steps", "val"))

# Columns that identify a row: no two rows of a table share them.
KEYS: dict[str, tuple[str, ...]] = {
    "steps": ("step",),
    "val": ("step",),
    "curvature": ("step",),
    "noise": ("step",),
    "checkpoints": ("step", "kind"),
}

# Inclusive truncation rule on resume from a checkpoint taken after `s` steps:
# step rows describe steps 0..s-1 (step < s); validation, curvature, noise and
# checkpoint rows at step s were written before (or, for the checkpoint, right
# after) the checkpoint at s was taken (step <= s).
KEEP_ON_RESUME = {
    "steps": lambda step, s: step < s,
    "val": lambda step, s: step <= s,
    "curvature": lambda step, s: step <= s,
    "noise": lambda step, s: step <= s,
    "checkpoints": lambda step, s: step <= s,
}


def columns(table: str) -> list[str]:
    return TABLES[table].names
