"""CPU timings: spconv vs a dense ``conv3d`` encoder, the voxelization reference vs a naive loop, one training step.

:func:`dense_encoder_forward` runs a :class:`kd3d.detector.SparseEncoder` with dense ``conv3d`` layers (each
sparse conv by :func:`kd3d.sparse.dense_reference`, BatchNorm in eval mode on the active sites): the
same numbers as spconv (tested), at dense cost; it is the reference the benchmark compares spconv with.
"""

from __future__ import annotations

from typing import Any

import torch
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn

from kd3d.config import DetectorConfig
from kd3d.detector import SparseEncoder, build_detector
from kd3d.reference import voxelize_mean_reference, voxelize_naive
from kd3d.sparse import SparseConvTensor, dense_reference
from kd3d.targets import build_targets, detection_loss
from slimkit.bench import env_header, time_fn

__all__ = ["bench_all", "dense_encoder_forward"]


class _DenseSites:
    """A dense tensor with its active-site mask, shaped like a SparseConvTensor for :func:`dense_reference`."""

    def __init__(self, dense: Tensor, active: Tensor) -> None:
        self._dense, self.active = dense, active
        self.batch_size = dense.shape[0]
        self.spatial_shape = list(dense.shape[2:])
        self.indices = torch.nonzero(active[:, 0]).int()

    def dense(self) -> Tensor:
        return self._dense


def dense_encoder_forward(encoder: SparseEncoder, features: Tensor, coords: Tensor, batch_size: int) -> Tensor:
    """``[B, C, D, H, W]``: the encoder computed densely (eval-mode BatchNorm), equal to ``encoder(...).dense()``."""
    x = SparseConvTensor(features, coords, encoder.sparse_shape, batch_size)
    dense = x.dense()
    active = torch.zeros(batch_size, 1, *encoder.sparse_shape, dtype=dense.dtype)
    idx = coords.long()
    active[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]] = 1
    sites = _DenseSites(dense, active)
    for module in encoder.modules():
        if isinstance(module, SparseConvolution):
            out = dense_reference(module, sites)
            act = sites.active if module.subm else _strided_active(module, sites.active)
            sites = _DenseSites(out, act)
        elif isinstance(module, nn.BatchNorm1d):
            assert module.running_var is not None and module.running_mean is not None and module.weight is not None
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            shift = module.bias - module.running_mean * scale
            y = (sites.dense() * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)) * sites.active
            sites = _DenseSites(y, sites.active)
        elif isinstance(module, nn.ReLU):
            sites = _DenseSites(torch.relu(sites.dense()), sites.active)
    return sites.dense()


def _strided_active(layer: Any, active: Tensor) -> Tensor:
    ones = torch.ones(1, 1, *layer.kernel_size, dtype=active.dtype)
    return (torch.nn.functional.conv3d(active, ones, None, layer.stride, layer.padding, layer.dilation) > 0).to(active.dtype)


def bench_all(config: DetectorConfig, student: DetectorConfig, points: Tensor, boxes: list[Tensor], labels: list[Tensor],
              repeats: int = 3) -> dict[str, Any]:  # fmt: skip
    """The README's CPU timings on one batch of ``points`` (batch index first)."""
    rows: dict[str, Any] = {"env": env_header()}
    feats, coords = voxelize_mean_reference(points, config.point_range, config.voxel_size, config.max_voxels)
    batch = int(points[:, 0].max().item()) + 1
    encoder = build_detector(config, seed=0).encoder.eval()
    with torch.no_grad():
        sparse_t = time_fn(lambda: encoder(feats, coords, batch).dense(), warmup=1, repeats=repeats)
        dense_t = time_fn(lambda: dense_encoder_forward(encoder, feats, coords, batch), warmup=1, repeats=repeats)
    rows["encoder"] = {"voxels": int(coords.shape[0]), "grid": encoder.sparse_shape, "spconv_s": sparse_t.median_s,
                       "dense_s": dense_t.median_s, "speedup": dense_t.median_s / sparse_t.median_s}  # fmt: skip
    vox_ref = time_fn(lambda: voxelize_mean_reference(points, config.point_range, config.voxel_size), warmup=1, repeats=repeats)
    vox_naive = time_fn(lambda: voxelize_naive(points, config.point_range, config.voxel_size), warmup=0, repeats=1)
    rows["voxelize"] = {"points": int(points.shape[0]), "reference_s": vox_ref.median_s, "naive_s": vox_naive.median_s,
                        "speedup": vox_naive.median_s / vox_ref.median_s}  # fmt: skip
    for name, cfg in (("teacher", config), ("student", student)):
        model = build_detector(cfg, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        targets = build_targets(boxes, labels, cfg)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt, cfg: DetectorConfig = cfg,
                 targets: Any = targets) -> None:  # fmt: skip
            with torch.inference_mode(False):  # time_fn times under inference_mode; a train step needs autograd
                loss, _ = detection_loss(model(points, batch), targets, cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()

        t = time_fn(step, warmup=1, repeats=repeats)
        rows[f"train_step_{name}"] = {"preset": cfg.preset, "median_s": t.median_s, "batch": batch}
    return rows
