"""Column definitions of the per-run metric tables (one table per cadence).

Shared by the training recorder (CSV), the Parquet converter and the
validator, so the three can never disagree on names or dtypes.
"""

from __future__ import annotations

import math

import pyarrow as pa

LN2 = math.log(2.0)

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

TABLES: dict[str, pa.Schema] = {"steps": STEPS, "val": VAL}

# Inclusive truncation rule on resume from a checkpoint taken after `s` steps:
# step rows describe steps 0..s-1 (step < s); a validation row at step s was
# written before the checkpoint (step <= s).
KEEP_ON_RESUME = {"steps": lambda step, s: step < s, "val": lambda step, s: step <= s}


def columns(table: str) -> list[str]:
    return TABLES[table].names
