"""The public dispatching functions: :func:`voxelize_mean` and :func:`rotated_roi_sample`.

CPU tensors go to :mod:`kd3d.reference` directly (also under ``TRITON_INTERPRET=1``: the tests call the
launchers themselves). For CUDA tensors with Triton the kernels of :mod:`kd3d.kernels` run: the voxel means always
(no gradient flows to raw points), the RoI sampling only when no gradient is needed (the teacher's side
of RDD; the student's side keeps ``grid_sample``'s autograd).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kd3d.kernels import roi_sample_triton, segment_mean_triton
from kd3d.reference import (
    decode_keys,
    first_per_sample,
    rotated_roi_sample_reference,
    voxel_keys,
    voxelize_mean_reference,
)
from slimkit.errors import BadInputError
from slimkit.kernels import use_triton

__all__ = ["check_points", "rotated_roi_sample", "voxelize_mean"]


def check_points(points: Tensor, point_features: int) -> None:
    """Points must be ``[N, 1 + point_features]`` floats, batch index first."""
    if points.dim() != 2 or points.shape[1] != 1 + point_features:
        raise BadInputError(f"points must be [N, {1 + point_features}] (batch index, x, y, z, ...), "
                            f"got {list(points.shape)}")  # fmt: skip
    if not points.is_floating_point():
        raise BadInputError(f"points must be floating point, got {points.dtype}")


def voxelize_mean(
    points: Tensor, point_range: list[float], voxel_size: list[float], max_voxels: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(features [V, F], coords [V, 4] int32 (batch, z, y, x))``, see :func:`kd3d.reference.voxelize_mean_reference`."""
    if not points.is_cuda or not use_triton(points):
        return voxelize_mean_reference(points, point_range, voxel_size, max_voxels)
    grid = [round((point_range[i + 3] - point_range[i]) / voxel_size[i]) for i in range(3)]
    keys, inside = voxel_keys(points, point_range, voxel_size)
    keys, feats = keys[inside], points[inside, 1:]
    order = torch.argsort(keys, stable=True)
    keys, feats = keys[order], feats[order]
    uniq, counts = torch.unique_consecutive(keys, return_counts=True)
    starts = torch.zeros(uniq.numel() + 1, dtype=torch.int64, device=points.device)
    starts[1:] = torch.cumsum(counts, 0)
    means = segment_mean_triton(feats, starts)
    coords = decode_keys(uniq, grid)
    if max_voxels is not None and uniq.numel() > max_voxels:
        keep = first_per_sample(coords[:, 0], max_voxels)
        means, coords = means[keep], coords[keep]
    return means, coords


def rotated_roi_sample(features: Tensor, rois: Tensor, size: int) -> Tensor:
    """``[K, C, S, S]`` bilinear samples inside rotated BEV boxes ``rois [K, 6]`` (batch, cx, cy, l, w, yaw in cells)."""
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 6:
        raise BadInputError(f"expected features [B, C, H, W] and rois [K, 6], got {list(features.shape)} and {list(rois.shape)}")
    needs_grad = torch.is_grad_enabled() and features.requires_grad
    if features.is_cuda and not needs_grad and use_triton(features, rois):
        return roi_sample_triton(features, rois, size)
    return rotated_roi_sample_reference(features, rois, size)
