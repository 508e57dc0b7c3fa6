"""Build the train/validation iterators for a dataset config, on a device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loss_slope.data.augment import AugmentConfig
from loss_slope.data.loader import DeviceBatches, EvalBatches


@dataclass
class DataBundle:
    train: DeviceBatches
    val: EvalBatches
    in_channels: int
    num_classes: int
    image_size: int

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train)


def _normalizer(mean, std, device, scale: float):
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x.float() * scale - m) / s

    return normalize


def build_data(cfg, *, seed: int, device: torch.device) -> DataBundle:
    """``cfg`` is the Hydra ``data`` node (name, batch_size, augment, ...)."""
    aug_cfg = cfg.augment
    augment = AugmentConfig(
        crop=bool(aug_cfg.crop),
        scale=tuple(aug_cfg.scale),
        ratio=tuple(aug_cfg.ratio),
        flip_p=float(aug_cfg.flip_p),
    )
    if cfg.name == "digits":
        from loss_slope.data.digits import load_digits_tensors

        t = load_digits_tensors(size=int(cfg.image_size))
        tx, ty, vx, vy = (t[k].to(device) for k in ("train_x", "train_y", "val_x", "val_y"))
        mean, std, scale, channels, classes = (float(tx.mean()),), (float(tx.std()),), 1.0, 1, 10
    elif cfg.name == "cifar10":
        from loss_slope.data.cifar10 import MEAN, STD, read_cifar10

        a = read_cifar10(cfg.root)
        tx, ty, vx, vy = (torch.from_numpy(a[k]).to(device) for k in ("train_x", "train_y", "val_x", "val_y"))
        mean, std, scale, channels, classes = MEAN, STD, 1 / 255.0, 3, 10
    else:
        raise ValueError(f"data.name: unknown dataset {cfg.name!r}; allowed: digits, cifar10")
    normalize = _normalizer(mean, std, device, scale)
    train = DeviceBatches(
        tx,
        ty,
        batch_size=int(cfg.batch_size),
        seed=seed,
        normalize=normalize,
        augment=augment,
        drop_last=bool(cfg.drop_last),
    )
    val = EvalBatches(vx, vy, batch_size=int(cfg.eval_batch_size), normalize=normalize)
    return DataBundle(train=train, val=val, in_channels=channels, num_classes=classes, image_size=int(tx.shape[-1]))
