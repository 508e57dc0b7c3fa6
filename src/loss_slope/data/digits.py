"""The offline demo dataset: scikit-learn's handwritten digits (ships with sklearn).

1,797 grayscale 8×8 images (pixel values 0–16), upsampled to 16×16. A fixed
split (independent of the run seed) keeps 1,408 images for training (44 steps
per epoch at batch 32, divisible by 4 for exact quarter-epoch validation) and
389 for validation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

N_TRAIN = 1408
SPLIT_SEED = 20240607  # fixed: the split must not depend on the run seed


def load_digits_tensors(size: int = 16) -> dict[str, torch.Tensor]:
    """Return ``{"train_x", "train_y", "val_x", "val_y"}`` as float32 in [0, 1] (N, 1, size, size)."""
    from sklearn.datasets import load_digits  # local: keeps `import loss_slope.data` light

    ds = load_digits()
    x = torch.from_numpy(ds.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(ds.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(y)))
    tr, va = perm[:N_TRAIN], perm[N_TRAIN:]
    return {"train_x": x[tr].contiguous(), "train_y": y[tr], "val_x": x[va].contiguous(), "val_y": y[va]}
