"""Small models with an exactly computable Hessian, shared by the monitor tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from loss_slope.metrics.curvature import evaluation_mode

loss_fn = nn.functional.cross_entropy


def mlp(seed: int, *, d_in: int = 6, hidden: int = 10, classes: int = 4) -> nn.Module:
    """6→10→4 tanh MLP, 114 parameters, float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def clustered_data(seed: int, *, n: int = 96, d_in: int = 6, classes: int = 4, batches: int = 2):
    """Gaussian class clusters: cross-entropy Hessians get a few outlying eigenvalues, as real nets do."""
    g = torch.Generator().manual_seed(1000 + seed)
    centres = 2.0 * torch.randn(classes, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, d_in, generator=g, dtype=torch.float64)
    return [(xb, yb) for xb, yb in zip(x.chunk(batches), y.chunk(batches))]


class TinyBNNet(nn.Module):
    """conv(1→3, 3×3) → BN → ReLU → conv(3→3) → BN → ReLU → avg-pool → linear(3→3); 183 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def bn_net(seed: int, *, dtype: torch.dtype = torch.float64):
    """A TinyBNNet with non-trivial running statistics and BN affine parameters, plus image batches."""
    torch.manual_seed(seed)
    net = TinyBNNet().to(dtype)
    g = torch.Generator().manual_seed(2000 + seed)
    x = (1.5 + 2.0 * torch.randn(64, 1, 6, 6, generator=g)).to(dtype)
    y = torch.randint(0, 3, (64,), generator=g)
    with torch.no_grad():  # move running stats away from (0, 1) and make the affine params non-trivial
        net.train()
        for xb in x.chunk(4):
            net(xb)
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    net.train()
    return net, [(x[:32], y[:32]), (x[32:], y[32:])]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def exact_hessian(model: nn.Module, batches) -> torch.Tensor:
    """Dense Hessian of the sample-weighted mean loss in eval mode, parameters flattened in order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    total = sum(len(x) for x, _ in batches)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return sum(loss_fn(functional_call(model, params, (x,)), y) * (len(x) / total) for x, y in batches)

    with evaluation_mode(model):
        return torch.autograd.functional.hessian(loss, flat_params(model))
