"""CenterPoint-Voxel on spconv 2.x: mean-feature voxels, sparse 3D encoder, height compression, BEV backbone and
neck, CenterHead. Built from a :class:`kd3d.config.DetectorConfig` (widths and depths configurable).

``model(points)`` takes points ``[N, 1 + F]`` (batch index, x, y, z, intensity, ...) and returns a
:class:`DetectorOutput`: the heatmap logits (``.logits``), the regression maps and the neck feature map
that RDD distils. Voxelization runs inside the model (no parameters), so a detector is one module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kd3d.config import REG_CHANNELS, DetectorConfig, encoder_depth_out
from kd3d.ops import check_points, voxelize_mean
from kd3d.sparse import SparseConvTensor, spconv_torch

__all__ = ["BEVBackbone", "CenterHead", "CenterPointVoxel", "DetectorOutput", "SparseEncoder", "build_detector"]

HM_BIAS = -2.19  # CenterNet's heatmap bias: sigmoid(-2.19) = 0.1 at start


@dataclass
class DetectorOutput:
    """What the detector returns: ``heatmap`` logits ``[B, K, H, W]``, ``regression`` ``[B, 8, H, W]`` (offset x / y,
    z, log l / w / h, cos, sin yaw), ``neck`` ``[B, C, H, W]`` and the voxel count of the batch."""

    heatmap: Tensor
    regression: Tensor
    neck: Tensor
    num_voxels: int = 0

    @property
    def logits(self) -> Tensor:
        """The heatmap logits (the name every slimkit package reads outputs by)."""
        return self.heatmap


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def _subm(cin: int, cout: int, key: str) -> nn.Module:
    return spconv_torch.SparseSequential(
        spconv_torch.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key), _bn1d(cout), nn.ReLU()
    )


def _down(cin: int, cout: int, key: str, kernel: int | tuple[int, int, int], stride: int | tuple[int, int, int],
          padding: int | tuple[int, int, int]) -> nn.Module:  # fmt: skip
    return spconv_torch.SparseSequential(
        spconv_torch.SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False, indice_key=key),
        _bn1d(cout), nn.ReLU(),
    )  # fmt: skip


class SparseEncoder(nn.Module):
    """OpenPCDet's VoxelBackBone8x layout: SubM input conv, stage 1 (SubM), stages 2-4 (a stride-2 sparse conv,
    then SubM convs), ``conv_out`` (k (3, 1, 1), stride (2, 1, 1)): x / y stride 8, the z axis nearly flat.
    No bias in the sparse convs (spconv's CPU path refuses a fused bias + activation)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        ch, n = config.encoder_channels, config.encoder_layers
        nx, ny, nz = config.grid_size
        self.sparse_shape = [nz + 1, ny, nx]
        stages: list[nn.Module] = []
        first = [_subm(config.point_features, ch[0], "subm1")] + [_subm(ch[0], ch[0], "subm1") for _ in range(n[0] - 1)]
        stages.append(spconv_torch.SparseSequential(*first))
        stages.append(spconv_torch.SparseSequential(*[_subm(ch[0] if i == 0 else ch[1], ch[1], "subm1") for i in range(n[1])]))
        for s, pad in ((2, 1), (3, 1), (4, (0, 1, 1))):
            layers = [_down(ch[s - 1], ch[s], f"spconv{s}", 3, 2, pad)]
            layers += [_subm(ch[s], ch[s], f"subm{s}") for _ in range(n[s] - 1)]
            stages.append(spconv_torch.SparseSequential(*layers))
        out = [_down(ch[4], ch[5], "spconv_out", (3, 1, 1), (2, 1, 1), 0)]
        out += [_subm(ch[5], ch[5], "subm_out") for _ in range(n[5] - 1)]
        stages.append(spconv_torch.SparseSequential(*out))
        self.stages = nn.ModuleList(stages)
        self.out_depth = encoder_depth_out(nz)

    def forward(self, features: Tensor, coords: Tensor, batch_size: int) -> SparseConvTensor:
        x = SparseConvTensor(features, coords, self.sparse_shape, batch_size)
        for stage in self.stages:
            x = stage(x)
        return x


def height_compression(x: SparseConvTensor) -> Tensor:
    """The sparse output densified and its height folded into channels: ``[B, C * D, H, W]``."""
    dense = x.dense()
    b, c, d, h, w = dense.shape
    return dense.reshape(b, c * d, h, w)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _bn2d(cout), nn.ReLU()]


class BEVBackbone(nn.Module):
    """Two conv blocks (strides 1 and 2, ``1 + bev_layers[i]`` 3x3 convs) and deblocks back to the first block's
    stride (1x1 conv / 2x2 transposed conv); the neck output is their concatenation."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        cin = config.bev_in_channels
        c, up = config.bev_channels, config.up_channels
        self.blocks = nn.ModuleList()
        for i in range(2):
            layers = _conv_bn_relu(cin if i == 0 else c[0], c[i], stride=1 if i == 0 else 2)
            for _ in range(config.bev_layers[i]):
                layers += _conv_bn_relu(c[i], c[i])
            self.blocks.append(nn.Sequential(*layers))
        self.deblocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c[0], up[0], 1, bias=False), _bn2d(up[0]), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(c[1], up[1], 2, stride=2, bias=False), _bn2d(up[1]), nn.ReLU()),
        ])  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for block, deblock in zip(self.blocks, self.deblocks, strict=True):
            x = block(x)
            outs.append(deblock(x))
        return torch.cat(outs, dim=1)


class CenterHead(nn.Module):
    """A shared 3x3 conv, then separate heads (3x3 conv + BN + ReLU, 3x3 conv): ``hm`` (one channel per class,
    bias -2.19), ``center`` (2), ``center_z`` (1), ``dim`` (3, log sizes), ``rot`` (2, cos / sin)."""

    HEADS = (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2))

    def __init__(self, in_channels: int, config: DetectorConfig) -> None:
        super().__init__()
        hc = config.head_channels
        self.shared = nn.Sequential(nn.Conv2d(in_channels, hc, 3, padding=1, bias=True), _bn2d(hc), nn.ReLU())
        self.heads = nn.ModuleDict()
        for name, out in (("hm", config.num_classes), *self.HEADS):
            self.heads[name] = nn.Sequential(*_conv_bn_relu(hc, hc), nn.Conv2d(hc, out, 3, padding=1, bias=True))
        hm_head = self.heads["hm"]
        assert isinstance(hm_head, nn.Sequential)
        final = hm_head[-1]
        assert isinstance(final, nn.Conv2d) and final.bias is not None
        nn.init.constant_(final.bias, HM_BIAS)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shared = self.shared(x)
        reg = torch.cat([self.heads[name](shared) for name, _ in self.HEADS], dim=1)
        return self.heads["hm"](shared), reg


class CenterPointVoxel(nn.Module):
    """The whole detector; ``config`` is kept as ``self.config`` (saved with the weights)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SparseEncoder(config)
        self.backbone = BEVBackbone(config)
        self.head = CenterHead(config.neck_channels, config)
        assert sum(n for _, n in CenterHead.HEADS) == REG_CHANNELS

    def forward(self, points: Tensor, batch_size: int | None = None) -> DetectorOutput:
        check_points(points, self.config.point_features)
        if batch_size is None:
            batch_size = int(points[:, 0].max().item()) + 1 if points.shape[0] else 1
        feats, coords = voxelize_mean(points, self.config.point_range, self.config.voxel_size, self.config.max_voxels)
        encoded = self.encoder(feats, coords, batch_size)
        bev = height_compression(encoded)
        neck = self.backbone(bev)
        heatmap, regression = self.head(neck)
        return DetectorOutput(heatmap=heatmap, regression=regression, neck=neck, num_voxels=int(coords.shape[0]))

    def example_input(self, num_points: int = 600, seed: int = 0) -> Tensor:
        """A fixed random two-sample point batch inside the grid (the package contract's input)."""
        g = torch.Generator().manual_seed(seed)
        r = torch.tensor(self.config.point_range)
        xyz = r[:3] + torch.rand(num_points, 3, generator=g) * (r[3:] - r[:3]) * 0.999
        extra = torch.rand(num_points, self.config.point_features - 3, generator=g)
        batch = (torch.arange(num_points) % 2).float()[:, None]
        return torch.cat([batch, xyz, extra], dim=1)


def build_detector(config: DetectorConfig, seed: int | None = None) -> CenterPointVoxel:
    """A freshly initialised detector (seeded without touching the global RNG when ``seed`` is given)."""
    if seed is None:
        return CenterPointVoxel(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CenterPointVoxel(config)
