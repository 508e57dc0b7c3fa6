"""Batched RandomResizedCrop + horizontal flip on tensors, on the data's device.

All randomness comes from an explicit ``torch.Generator`` so the training
loader can derive it from (seed, step) and a resumed run sees exactly the same
augmented batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """A random resized crop (scale, ratio) to the input size, then flip with prob ``flip_p``
    (:func:`random_resized_crop_flip`: oversized boxes are cut to the image, not drawn again)."""

    crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5


def random_resized_crop_flip(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch ``x`` of shape (B, C, H, W), float.

    Each image gets its own crop box, drawn with an area fraction uniform in
    ``cfg.scale`` and an aspect ratio log-uniform in ``cfg.ratio``, resized back
    to H×W with bilinear interpolation, and is flipped left-right with
    probability ``cfg.flip_p``. One ``grid_sample`` call, one draw per image.

    Unlike torchvision's RandomResizedCrop, a box wider or taller than the image
    (area × ratio > 1 or area / ratio > 1) is not drawn again: the side that does
    not fit is cut to the image's, so a too-wide crop covers √(area / ratio) of the
    image (a too-tall one √(area × ratio)), less than drawn. The mean covered area
    is 1.2 % below the mean drawn with the CIFAR settings (0.08–1, 3/4–4/3), 1.4 %
    with the digits' (0.7–1, 0.8–1.25).
    """
    b, _, h, w = x.shape
    dev = x.device
    if not cfg.crop and cfg.flip_p <= 0:
        return x
    u = torch.rand((b, 5), generator=generator, device=dev, dtype=torch.float32)
    if cfg.crop:
        area = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[:, 0]
        log_r = math.log(cfg.ratio[0]) + (math.log(cfg.ratio[1]) - math.log(cfg.ratio[0])) * u[:, 1]
        r = torch.exp(log_r)
        # crop width/height as fractions of the image side; clamp keeps the box inside
        cw = torch.sqrt(area * r).clamp(max=1.0)
        ch = torch.sqrt(area / r).clamp(max=1.0)
        cx = (1 - cw) * (2 * u[:, 2] - 1)  # centre in normalised coords [-1, 1]
        cy = (1 - ch) * (2 * u[:, 3] - 1)
    else:
        cw = ch = torch.ones(b, device=dev)
        cx = cy = torch.zeros(b, device=dev)
    sx = torch.where(u[:, 4] < cfg.flip_p, -cw, cw)
    theta = torch.zeros((b, 2, 3), device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
