"""Small CNNs for the bundled and generated offline data sets, and models by name, shared by the method packages.

``SmallResNet`` is a CIFAR-style ResNet shrunk to 8x8 digit images or 32x32 generated sets:
a conv3x3-BN-ReLU stem (``stem``), one :class:`BasicBlock` per stage (``layers``), global
average pooling and a linear head (``fc``). Every 3x3 conv is followed by a BatchNorm (what
SpRe re-parameterizes and MultiQuant switches per bit-width), and channel counts are multiples
of 16 so N:M patterns up to 1:16 fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import BadInputError
from slimkit.models import create_model

__all__ = ["BUILTIN_MODELS", "BasicBlock", "ModelSpec", "SmallResNet", "load_model"]

BUILTIN_MODELS: tuple[str, ...] = ("small_resnet", "small_resnet_wide")


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, one BasicBlock per stage, global average pool, linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: tuple[int, ...] = (16, 32),
    ) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise BadInputError(f"widths must be positive, got {widths}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(prev, width, stride=1 if i == 0 else 2))
            prev = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def load_model(name: str, num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Build a model by name with random weights (no downloads).

    ``small_resnet`` (widths 16, 32) and ``small_resnet_wide`` (32, 64) are built in; any other
    name goes to :func:`slimkit.models.create_model` (``timm/NAME``, ``tv/NAME`` or a bare timm,
    then torchvision, name). Unknown names raise BadInputError.
    """
    if name == "small_resnet":
        return SmallResNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if name == "small_resnet_wide":
        return SmallResNet(num_classes=num_classes, in_chans=in_chans, widths=(32, 64), **kwargs)
    try:
        return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except BadInputError as exc:
        if not str(exc).startswith("unknown model"):
            raise
    raise BadInputError(f"unknown model {name!r}: use {', '.join(BUILTIN_MODELS)}, a timm name or a torchvision name")


@dataclass
class ModelSpec:
    """Enough to rebuild an architecture for a checkpoint: name, classes, input channels, image size
    and the keyword arguments its builder took (a small timm ViT's ``img_size``, ``depth``, ...)."""

    name: str = "small_resnet"
    num_classes: int = 10
    in_chans: int = 1
    image_size: int = 8
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"ModelSpec.kwargs must be a dict, got {type(self.kwargs).__name__}")

    def build(self) -> nn.Module:
        return load_model(self.name, num_classes=self.num_classes, in_chans=self.in_chans, **self.kwargs)
