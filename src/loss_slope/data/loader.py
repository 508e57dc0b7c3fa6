"""A device-resident, resumable batch iterator.

The whole dataset lives on the training device (CIFAR-10 is 150 MB as uint8),
so there are no DataLoader workers to starve a GPU shared by several runs.
The batch order and the augmentation are pure functions of (seed, epoch,
global step): a run resumed from a checkpoint at step ``s`` gets exactly the
batches an uninterrupted run would have seen from step ``s`` on, with no RNG
state to save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from loss_slope.data.augment import AugmentConfig, random_resized_crop_flip
from loss_slope.train.val_schedule import steps_per_epoch

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates (seed, counter) pairs


def _stream_seed(seed: int, stream: int, counter: int) -> int:
    return ((seed * 1_000_003 + stream) * _MIX + counter) % (2**63 - 1)


class DeviceBatches:
    """Training batches from tensors already on the device.

    Parameters
    ----------
    images : Tensor (N, C, H, W), uint8 or float
        Training images on the target device.
    labels : Tensor (N,), int64
    batch_size : int
    seed : int
        Drives the per-epoch permutation and the per-step augmentation.
    normalize : callable
        Maps a uint8/float batch to normalised float32 (on device).
    augment : AugmentConfig or None
    drop_last : bool
        Drop the final partial batch of an epoch.
    step_source : callable returning int, optional
        Global optimizer steps already taken (set by the training module to
        ``trainer.global_step``). Iteration starts at that position inside its
        epoch, which is how a mid-epoch resume continues exactly.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        augment: AugmentConfig | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        if batch_size < 1 or batch_size > len(images):
            raise ValueError(f"batch_size must be in [1, {len(images)}], got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.normalize, self.augment, self.drop_last = normalize, augment, drop_last
        self.step_source: Callable[[], int] = lambda: 0
        self._gen = torch.Generator(device=images.device)

    def __len__(self) -> int:
        return steps_per_epoch(len(self.images), self.batch_size, self.drop_last)

    def permutation(self, epoch: int) -> torch.Tensor:
        self._gen.manual_seed(_stream_seed(self.seed, 1, epoch))
        return torch.randperm(len(self.images), generator=self._gen, device=self.images.device)

    def batch(self, global_step: int, perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch consumed by optimizer step ``global_step``."""
        spe = len(self)
        epoch, pos = divmod(global_step, spe)
        if perm is None:
            perm = self.permutation(epoch)
        idx = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        x = self.normalize(self.images[idx])
        if self.augment is not None:
            self._gen.manual_seed(_stream_seed(self.seed, 2, global_step))
            x = random_resized_crop_flip(x, self.augment, self._gen)
        return x, self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spe = len(self)
        start = int(self.step_source())
        epoch, pos = divmod(start, spe)
        perm = self.permutation(epoch)
        for p in range(pos, spe):
            yield self.batch(epoch * spe + p, perm)


class EvalBatches:
    """Fixed-order, unaugmented batches (validation)."""

    def __init__(self, images, labels, *, batch_size: int, normalize) -> None:
        self.images, self.labels, self.batch_size, self.normalize = images, labels, batch_size, normalize

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.images), self.batch_size):
            yield self.normalize(self.images[i : i + self.batch_size]), self.labels[i : i + self.batch_size]
