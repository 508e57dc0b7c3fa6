"""CIFAR ResNet-18 (3×3 stem, no max-pool) with a width multiplier and optional BatchNorm."""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        bias = not batchnorm  # without BN the conv needs its own bias
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = _norm(cout, batchnorm)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = _norm(cout, batchnorm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), _norm(cout, batchnorm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for small images.

    Parameters
    ----------
    num_classes, in_channels : int
    base_width : int
        Channels of the first stage (64 in the standard net).
    width_mult : float
        Multiplies every stage width (S-narrow uses 0.5).
    batchnorm : bool
        False replaces every BatchNorm by identity (S-bn-off).
    blocks : tuple of int
        Blocks per stage; (2, 2, 2, 2) is ResNet-18.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        base_width: int = 64,
        width_mult: float = 1.0,
        batchnorm: bool = True,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        w = max(1, round(base_width * width_mult))
        widths = [w * 2**i for i in range(len(blocks))]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=not batchnorm), _norm(w, batchnorm), nn.ReLU(inplace=True)
        )
        layers, cin = [], w
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, batchnorm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
