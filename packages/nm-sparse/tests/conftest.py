"""Shared fixtures for nm-sparse tests: seeds and tiny conv-BN models."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn


class TinyBlock(nn.Module):
    """torchvision-style BasicBlock: conv1/bn1, conv2/bn2, optional downsample Sequential."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10, kernel: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = TinyBlock(width, width, kernel=kernel)
        self.layer2 = TinyBlock(width, 2 * width, stride=2, kernel=kernel)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.pool(x).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_resnet() -> TinyResNet:
    return TinyResNet()


@pytest.fixture
def make_resnet() -> type[TinyResNet]:
    """Factory: ``make_resnet(width=8, classes=10, kernel=3)``."""
    return TinyResNet


@pytest.fixture
def random_bn() -> object:
    """``random_bn(model, seed=0)`` randomises every BatchNorm's parameters and statistics."""
    return randomize_bn


def _topn_valid(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> None:
    """Exactly n kept per group, and every kept |w| >= every dropped |w| in its group."""
    a = w.float().abs().reshape(w.shape[0], -1, m)
    keep = mask.reshape(a.shape)
    assert torch.equal(keep.sum(-1), torch.full(keep.shape[:2], n))
    kept_min = torch.where(keep, a, torch.inf).amin(-1)
    dropped_max = torch.where(keep, -torch.inf, a).amax(-1)
    assert (kept_min >= dropped_max).all()


@pytest.fixture
def topn_valid() -> Callable[[Tensor, Tensor, int, int], None]:
    """The N:M mask property check shared by the reference and kernel tests."""
    return _topn_valid
