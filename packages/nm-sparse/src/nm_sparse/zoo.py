"""The model zoo: a small ResNet for the bundled digits, and any timm / torchvision model by name.

``SmallResNet`` is a CIFAR-style ResNet shrunk to 8x8 (or upsampled) digit images. Its 3x3
convs are each followed by a BatchNorm, so SpRe has something to re-parameterize, and its
channel counts are multiples of 16, so every pattern up to 1:16 fits the input-channel
layout. The stem conv (1 input channel) and the classifier are the layers the configs keep
dense by default (``keep_first_dense``/``keep_last_dense``). Other names go to
:func:`slimkit.models.create_model` (random weights, never a download).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import BadInputError
from slimkit.models import create_model

__all__ = ["BUILTIN_MODELS", "BasicBlock", "SmallResNet", "load_model"]

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
