"""Pure-PyTorch definitions of what the kernels compute (the CPU path and the tests' oracle).

- :func:`voxelize_mean_reference`: points -> voxels holding the mean of their points' features, by a
  sort of the linear voxel keys and a segment reduction (``torch.unique`` + ``index_add_``).
- :func:`voxelize_naive`: the same with a Python loop over points (what the benchmark compares against).
- :func:`rotated_roi_sample_reference`: bilinear sampling of an ``S x S`` grid inside rotated BEV boxes
  (RDD's RoI Align ``phi``), zeros outside the map, differentiable in the features.

Imports nothing from kd3d (the kernel-file rule).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "roi_sample_points",
    "rotated_roi_sample_reference",
    "decode_keys",
    "first_per_sample",
    "segment_mean_reference",
    "voxel_keys",
    "voxelize_mean_reference",
    "voxelize_naive",
]


def voxel_keys(points: Tensor, point_range: list[float], voxel_size: list[float]) -> tuple[Tensor, Tensor]:
    """Linear keys ``((b * nz + iz) * ny + iy) * nx + ix`` of points ``[N, 1 + F]`` (batch index first) and the
    mask of points inside ``point_range``; keys of points outside are meaningless."""
    grid = [round((point_range[i + 3] - point_range[i]) / voxel_size[i]) for i in range(3)]
    lo = torch.tensor(point_range[:3], dtype=points.dtype, device=points.device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=points.device)
    cell = torch.floor((points[:, 1:4] - lo) / size).long()
    upper = torch.tensor(grid, device=points.device)
    inside = ((cell >= 0) & (cell < upper)).all(dim=1)
    nx, ny, nz = grid
    b = points[:, 0].long()
    keys = ((b * nz + cell[:, 2]) * ny + cell[:, 1]) * nx + cell[:, 0]
    return keys, inside


def decode_keys(keys: Tensor, grid: list[int]) -> Tensor:
    """Keys of :func:`voxel_keys` back to ``[V, 4]`` int32 (batch, z, y, x)."""
    nx, ny, nz = grid
    ix = keys % nx
    iy = (keys // nx) % ny
    iz = (keys // (nx * ny)) % nz
    b = keys // (nx * ny * nz)
    return torch.stack([b, iz, iy, ix], dim=1).int()


def first_per_sample(batch: Tensor, limit: int) -> Tensor:
    """Mask keeping the first ``limit`` rows of every sample of an ascending ``batch`` column (voxels in key order)."""
    b = batch.long().contiguous()
    first = torch.searchsorted(b, b)  # index of each sample's first row
    return torch.arange(b.numel(), device=b.device) - first < limit


def segment_mean_reference(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """Mean of ``values[i]`` over the rows with the same ``segment[i]`` (every segment non-empty)."""
    acc = torch.promote_types(values.dtype, torch.float32)  # float32 at least, float64 kept
    sums = torch.zeros(num_segments, values.shape[1], dtype=acc, device=values.device)
    sums.index_add_(0, segment, values.to(acc))
    counts = torch.bincount(segment, minlength=num_segments).clamp_min(1).to(sums.dtype)
    return (sums / counts[:, None]).to(values.dtype)


def voxelize_mean_reference(
    points: Tensor, point_range: list[float], voxel_size: list[float], max_voxels: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(features [V, F], coords [V, 4] int32 (batch, z, y, x))``: the mean of the features (every column but
    the batch index) of the points in each occupied voxel, voxels in ascending key order (batch first).

    ``max_voxels`` caps each sample (as OpenPCDet's per-scan voxelization does, so a scan's voxels do not
    depend on the rest of the batch) and keeps its first voxels in that order (OpenPCDet keeps the first
    ones met in the point order; a sorted order makes the choice independent of how the points are shuffled).
    """
    grid = [round((point_range[i + 3] - point_range[i]) / voxel_size[i]) for i in range(3)]
    keys, inside = voxel_keys(points, point_range, voxel_size)
    keys, feats = keys[inside], points[inside, 1:]
    if keys.numel() == 0:
        return feats.new_zeros(0, feats.shape[1]), torch.zeros(0, 4, dtype=torch.int32, device=points.device)
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    means = segment_mean_reference(feats, inverse, uniq.numel())
    coords = decode_keys(uniq, grid)
    if max_voxels is not None and uniq.numel() > max_voxels:
        keep = first_per_sample(coords[:, 0], max_voxels)
        means, coords = means[keep], coords[keep]
    return means, coords


def voxelize_naive(points: Tensor, point_range: list[float], voxel_size: list[float]) -> tuple[Tensor, Tensor]:
    """The same as :func:`voxelize_mean_reference` with a dict and a loop over points (the benchmark's baseline)."""
    grid = [round((point_range[i + 3] - point_range[i]) / voxel_size[i]) for i in range(3)]
    acc: dict[tuple[int, int, int, int], list[float]] = {}
    count: dict[tuple[int, int, int, int], int] = {}
    for row in points.tolist():
        cell = [math.floor((row[1 + i] - point_range[i]) / voxel_size[i]) for i in range(3)]
        if not all(0 <= cell[i] < grid[i] for i in range(3)):
            continue
        key = (int(row[0]), cell[2], cell[1], cell[0])
        if key in acc:
            acc[key] = [a + b for a, b in zip(acc[key], row[1:], strict=True)]
            count[key] += 1
        else:
            acc[key], count[key] = list(row[1:]), 1
    order = sorted(acc)
    feats = torch.tensor([[v / count[k] for v in acc[k]] for k in order], dtype=points.dtype).reshape(len(order), -1)
    coords = torch.tensor(order, dtype=torch.int32).reshape(len(order), 4)
    return feats, coords


def roi_sample_points(rois: Tensor, size: int) -> Tensor:
    """``[K, S, S, 2]`` (x, y) sample positions in BEV cell units of rois ``[K, 6]``
    ``(batch, cx, cy, length, width, yaw)``: an ``S x S`` grid of cell centres of the box, ``length`` along
    the heading (rows of the patch follow the width axis, columns the length axis)."""
    steps = (torch.arange(size, dtype=rois.dtype, device=rois.device) + 0.5) / size - 0.5
    u = steps[None, None, :] * rois[:, 3, None, None]  # along length -> columns
    v = steps[None, :, None] * rois[:, 4, None, None]  # along width -> rows
    cos, sin = torch.cos(rois[:, 5])[:, None, None], torch.sin(rois[:, 5])[:, None, None]
    x = rois[:, 1, None, None] + u * cos - v * sin
    y = rois[:, 2, None, None] + u * sin + v * cos
    return torch.stack([x, y], dim=-1)


def rotated_roi_sample_reference(features: Tensor, rois: Tensor, size: int) -> Tensor:
    """``[K, C, S, S]``: bilinear samples of ``features [B, C, H, W]`` at :func:`roi_sample_points` of ``rois``.

    Cell ``(row r, column c)`` has its centre at ``(x, y) = (c + 0.5, r + 0.5)``; outside the map the
    features are zero (``grid_sample`` with ``align_corners=False``, ``padding_mode="zeros"``).
    """
    k = rois.shape[0]
    _, c, h, w = features.shape
    out = features.new_zeros(k, c, size, size)
    if k == 0:
        return out
    pts = roi_sample_points(rois.to(features.dtype), size)
    grid = torch.stack([pts[..., 0] * (2.0 / w) - 1.0, pts[..., 1] * (2.0 / h) - 1.0], dim=-1)
    batch = rois[:, 0].long()
    pieces = []
    for b in torch.unique(batch).tolist():
        sel = torch.nonzero(batch == b).flatten()
        g = grid[sel].reshape(1, -1, size, 2)  # all of this sample's rois stacked along the rows
        sampled = F.grid_sample(features[b : b + 1], g, mode="bilinear", padding_mode="zeros", align_corners=False)
        pieces.append((sel, sampled.reshape(c, sel.numel(), size, size).permute(1, 0, 2, 3)))
    return torch.cat([p for _, p in pieces])[torch.argsort(torch.cat([s for s, _ in pieces]))]
