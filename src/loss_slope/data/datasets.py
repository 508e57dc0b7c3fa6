"""The data module of a run: train/validation iterators for a dataset config, on a device.

Each dataset config (``src/loss_slope/conf/data/*.yaml``) names its builder by Hydra ``_target_``
(:func:`digits`, :func:`cifar10`); :func:`build_data` instantiates it with the run's seed and
device. ``data.name: simulated`` has no data module: ``python -m loss_slope.train`` runs the
simulated backend for it instead (``loss_slope.simulate``, docs/simulated.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra.utils
import torch

from loss_slope.data.augment import AugmentConfig
from loss_slope.data.cifar10 import MEAN, STD, read_cifar10
from loss_slope.data.digits import load_digits_tensors
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
    """``cfg`` is the Hydra ``data`` node (``_target_``, name, batch_size, augment, ...): its builder's bundle."""
    if not cfg.get("_target_"):
        raise ValueError(
            f"data.name={cfg.get('name')!r}: this data config has no data module (`_target_`); "
            "the simulated data is run by the simulated backend (python -m loss_slope.train data=simulated)"
        )
    return hydra.utils.instantiate(cfg, seed=seed, device=device)


def digits(
    *, image_size, batch_size, eval_batch_size, drop_last, augment, seed, device, name="digits", root=None
) -> DataBundle:
    """scikit-learn's digits (ships with the package; ``root`` is unused), 1 channel, 10 classes."""
    t = load_digits_tensors(size=int(image_size))
    tx, ty, vx, vy = (t[k].to(device) for k in ("train_x", "train_y", "val_x", "val_y"))
    return _bundle(
        tx,
        ty,
        vx,
        vy,
        mean=(float(tx.mean()),),
        std=(float(tx.std()),),
        scale=1.0,
        channels=1,
        classes=10,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        drop_last=drop_last,
        augment=augment,
        seed=seed,
        device=device,
    )


def cifar10(
    *, root, batch_size, eval_batch_size, drop_last, augment, seed, device, name="cifar10", image_size=32
) -> DataBundle:
    """CIFAR-10 from its python archive under ``root`` (uint8 images, scaled on the device), 3 channels."""
    a = read_cifar10(root)
    tx, ty, vx, vy = (torch.from_numpy(a[k]).to(device) for k in ("train_x", "train_y", "val_x", "val_y"))
    return _bundle(
        tx,
        ty,
        vx,
        vy,
        mean=MEAN,
        std=STD,
        scale=1 / 255.0,
        channels=3,
        classes=10,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        drop_last=drop_last,
        augment=augment,
        seed=seed,
        device=device,
    )


def _bundle(
    tx,
    ty,
    vx,
    vy,
    *,
    mean,
    std,
    scale,
    channels,
    classes,
    batch_size,
    eval_batch_size,
    drop_last,
    augment,
    seed,
    device,
) -> DataBundle:
    augment = AugmentConfig(
        crop=bool(augment.crop),
        scale=tuple(augment.scale),
        ratio=tuple(augment.ratio),
        flip_p=float(augment.flip_p),
    )
    normalize = _normalizer(mean, std, device, scale)
    train = DeviceBatches(
        tx,
        ty,
        batch_size=int(batch_size),
        seed=seed,
        normalize=normalize,
        augment=augment,
        drop_last=bool(drop_last),
    )
    val = EvalBatches(vx, vy, batch_size=int(eval_batch_size), normalize=normalize)
    return DataBundle(train=train, val=val, in_channels=channels, num_classes=classes, image_size=int(tx.shape[-1]))
