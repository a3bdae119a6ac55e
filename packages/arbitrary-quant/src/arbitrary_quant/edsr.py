"""EDSR-baseline (Lim et al., 2017), the super-resolution network DFSQ is evaluated on.

Layout as in the reference EDSR, so module names follow it: ``head`` (3x3 conv), ``body`` =
``n_resblocks`` x :class:`ResBlock` (``conv -> ReLU -> conv``, times ``res_scale``, plus the input)
followed by one 3x3 conv, a global skip around the body, ``tail`` = :class:`Upsampler` (3x3 conv
to ``r^2`` times the features + ``PixelShuffle(r)``, once for x3, ``log2(scale)`` times for x2/x4)
and a 3x3 conv back to RGB. The DIV2K mean shift is a fixed buffer here (the reference uses a
frozen 1x1 conv), so the only convs in the model are the 3x3 ones above.

Defaults are tiny (2 blocks, 16 features) so tests run in milliseconds; the paper's EDSR-baseline
is ``n_resblocks=16, n_feats=64, res_scale=1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from slimkit.errors import BadInputError

__all__ = ["DIV2K_RGB_MEAN", "EDSR", "ResBlock", "Upsampler", "edsr_baseline"]

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SCALES = (2, 3, 4)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResBlock(nn.Module):
    """``x + res_scale * conv(relu(conv(x)))``; ``body.0`` and ``body.2`` are DFSQ's quantized convs."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(inplace=True), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        res: Tensor = self.body(x)
        return x + res * self.res_scale if self.res_scale != 1 else x + res


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling by ``scale`` (2, 3 or 4): conv + PixelShuffle, repeated for powers of two."""

    def __init__(self, scale: int, n_feats: int) -> None:
        if scale not in SCALES:
            raise BadInputError(f"EDSR scale must be one of {SCALES}, got {scale!r}")
        layers: list[nn.Module] = []
        factors = [3] if scale == 3 else [2] * int(math.log2(scale))
        for r in factors:
            layers += [_conv(n_feats, r * r * n_feats), nn.PixelShuffle(r)]
        super().__init__(*layers)


class EDSR(nn.Module):
    """EDSR: LR image ``[N, C, H, W]`` in ``[0, rgb_range]`` -> SR image ``[N, C, scale*H, scale*W]``."""

    def __init__(
        self,
        scale: int = 2,
        n_resblocks: int = 2,
        n_feats: int = 16,
        res_scale: float = 1.0,
        n_colors: int = 3,
        rgb_range: float = 1.0,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        for name, value in (("n_resblocks", n_resblocks), ("n_feats", n_feats), ("n_colors", n_colors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInputError(f"{name} must be a positive integer, got {value!r}")
        if len(rgb_mean) != n_colors:
            raise BadInputError(f"rgb_mean has {len(rgb_mean)} values for {n_colors} colour channels")
        self.scale = scale
        mean = torch.tensor(rgb_mean, dtype=torch.float32).reshape(1, n_colors, 1, 1) * rgb_range
        self.register_buffer("rgb_mean", mean)
        self.head = _conv(n_colors, n_feats)
        blocks: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, _conv(n_feats, n_feats))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, n_colors))

    def forward(self, x: Tensor) -> Tensor:
        mean = self.rgb_mean
        assert isinstance(mean, Tensor)
        x = self.head(x - mean)
        x = x + self.body(x)
        out: Tensor = self.tail(x)
        return out + mean


def edsr_baseline(scale: int = 2) -> EDSR:
    """The paper's EDSR-baseline: 16 blocks, 64 features, no residual scaling."""
    return EDSR(scale=scale, n_resblocks=16, n_feats=64, res_scale=1.0)
