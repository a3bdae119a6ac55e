"""CenterHead training targets, losses and decoding (the CenterPoint / OpenPCDet recipe).

- Targets: each box's centre in BEV cells ``(x - x0) / cell``; a Gaussian of CornerNet's radius
  (``min_overlap`` 0.1, at least ``min_radius`` cells) drawn by element-wise max into its class channel;
  regression targets at the centre cell: sub-cell offset, z, log sizes, cos / sin yaw.
- Losses: CenterNet focal loss on the clamped sigmoid, normalised by the number of objects; L1 on the
  regression gathered at the centres, per channel ``code_weights``, times ``loc_weight``.
- Decoding: 3x3 max-pool peaks, top-K over classes and cells, score threshold, optional rotated NMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from kd3d.boxes import rotated_nms
from kd3d.config import REG_CHANNELS, DetectorConfig
from kd3d.detector import DetectorOutput

__all__ = ["Peaks", "Targets", "build_targets", "decode", "detection_loss", "focal_loss", "gaussian_radius", "peaks"]


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """CornerNet's radius: the largest corner shift keeping IoU >= ``min_overlap`` (smallest of three cases)."""
    a1, b1, c1 = 1.0, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heatmap: Tensor, row: int, col: int, radius: int) -> None:
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(-radius, radius + 1, dtype=heatmap.dtype)
    g = torch.exp(-(ys[:, None] ** 2 + ys[None, :] ** 2) / (2 * sigma * sigma))
    h, w = heatmap.shape
    top, bottom = min(row, radius), min(h - row, radius + 1)
    left, right = min(col, radius), min(w - col, radius + 1)
    region = heatmap[row - top : row + bottom, col - left : col + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(region, patch, out=region)


@dataclass
class Targets:
    """``heatmap [B, K, H, W]``, ``index [B, M]`` (flat cell), ``mask [B, M]``, ``regression [B, M, 8]``."""

    heatmap: Tensor
    index: Tensor
    mask: Tensor
    regression: Tensor

    @property
    def num_objects(self) -> int:
        return int(self.mask.sum().item())


def build_targets(boxes: list[Tensor], labels: list[Tensor], config: DetectorConfig) -> Targets:
    """Targets of one batch: ``boxes[b]`` ``[n, 7]`` and ``labels[b]`` ``[n]`` (class indices) per sample."""
    h, w = config.bev_shape
    cx_m, cy_m = config.bev_cell
    x0, y0 = config.point_range[0], config.point_range[1]
    b_n, m = len(boxes), config.max_objects
    heat = torch.zeros(b_n, config.num_classes, h, w)
    index = torch.zeros(b_n, m, dtype=torch.long)
    mask = torch.zeros(b_n, m)
    reg = torch.zeros(b_n, m, REG_CHANNELS)
    for b, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        k = 0
        for box, label in zip(bx.tolist(), lb.tolist(), strict=True):
            cx, cy = (box[0] - x0) / cx_m, (box[1] - y0) / cy_m
            col, row = math.floor(cx), math.floor(cy)
            if not (0 <= col < w and 0 <= row < h) or k >= m or min(box[3], box[4], box[5]) <= 0:
                continue
            radius = max(config.min_radius, int(gaussian_radius(box[3] / cx_m, box[4] / cy_m)))
            _draw_gaussian(heat[b, int(label)], row, col, radius)
            index[b, k] = row * w + col
            mask[b, k] = 1.0
            reg[b, k] = torch.tensor([cx - col, cy - row, box[2], math.log(box[3]), math.log(box[4]),
                                      math.log(box[5]), math.cos(box[6]), math.sin(box[6])])  # fmt: skip
            k += 1
    return Targets(heat, index, mask, reg)


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's focal loss (alpha 2, beta 4) on ``sigmoid`` clamped to [1e-4, 1 - 1e-4], over #positives."""
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg
    num_pos = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos.clamp_min(1.0)


def gather_cells(maps: Tensor, index: Tensor) -> Tensor:
    """``[B, M, C]``: the channels of ``maps [B, C, H, W]`` at flat cells ``index [B, M]``."""
    b, c, _, _ = maps.shape
    flat = maps.reshape(b, c, -1).permute(0, 2, 1)
    return flat.gather(1, index[..., None].expand(-1, -1, c))


def detection_loss(output: DetectorOutput, targets: Targets, config: DetectorConfig) -> tuple[Tensor, dict[str, float]]:
    """``focal(heatmap) + loc_weight * sum_c code_weight_c * L1_c`` and its parts."""
    device = output.heatmap.device
    hm = focal_loss(output.heatmap, targets.heatmap.to(device))
    mask = targets.mask.to(device)[..., None]
    pred = gather_cells(output.regression, targets.index.to(device))
    l1 = (torch.abs(pred - targets.regression.to(device)) * mask).sum(dim=(0, 1)) / (mask.sum() + 1e-4)
    weights = torch.tensor(config.code_weights, device=device)
    reg = (l1 * weights).sum()
    total = hm + config.loc_weight * reg
    return total, {"loss_hm": float(hm.detach()), "loss_reg": float(reg.detach())}


@dataclass
class Peaks:
    """Heatmap peaks: ``batch``, ``score``, ``label``, ``row``, ``col`` (each ``[P]``)."""

    batch: Tensor
    score: Tensor
    label: Tensor
    row: Tensor
    col: Tensor


def peaks(heatmap_logits: Tensor, k: int, score_threshold: float = 0.0) -> Peaks:
    """Top-``k`` 3x3 max-pool peaks per sample over classes and cells, scores >= ``score_threshold``."""
    prob = torch.sigmoid(heatmap_logits.detach().float())
    pooled = F.max_pool2d(prob, 3, stride=1, padding=1)
    prob = prob * (prob == pooled)
    b, _, h, w = prob.shape
    flat = prob.reshape(b, -1)
    score, idx = flat.topk(min(k, flat.shape[1]), dim=1)
    batch = torch.arange(b, device=prob.device)[:, None].expand_as(idx)
    keep = score >= score_threshold
    idx, score, batch = idx[keep], score[keep], batch[keep]
    label = idx // (h * w)
    cell = idx % (h * w)
    return Peaks(batch=batch, score=score, label=label, row=cell // w, col=cell % w)


def peak_boxes(regression: Tensor, p: Peaks, config: DetectorConfig) -> Tensor:
    """``[P, 7]`` metric boxes decoded at the peaks."""
    reg = regression.detach().float()[p.batch, :, p.row, p.col]
    cx_m, cy_m = config.bev_cell
    x = (p.col.float() + reg[:, 0]) * cx_m + config.point_range[0]
    y = (p.row.float() + reg[:, 1]) * cy_m + config.point_range[1]
    dims = torch.exp(reg[:, 3:6].clamp(max=5.0))
    yaw = torch.atan2(reg[:, 7], reg[:, 6])
    return torch.cat([x[:, None], y[:, None], reg[:, 2:3], dims, yaw[:, None]], dim=1)


def decode(
    output: DetectorOutput, config: DetectorConfig, top_k: int | None = None, score_threshold: float | None = None,
    nms_iou: float | None = None,
) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Per sample ``{"boxes" [n, 7], "scores" [n], "labels" [n]}`` (numpy), best first."""
    k = config.top_k if top_k is None else top_k
    thr = config.score_threshold if score_threshold is None else score_threshold
    iou = config.nms_iou if nms_iou is None else nms_iou
    p = peaks(output.heatmap, k, thr)
    boxes = peak_boxes(output.regression, p, config).cpu().numpy().astype(np.float64)
    scores, labels, batch = p.score.cpu().numpy(), p.label.cpu().numpy(), p.batch.cpu().numpy()
    results = []
    for b in range(output.heatmap.shape[0]):
        sel = np.nonzero(batch == b)[0]
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        if iou is not None and len(sel):
            kept = []
            for cls in np.unique(labels[sel]):
                these = sel[labels[sel] == cls]
                kept.extend(these[rotated_nms(boxes[these], scores[these], iou)].tolist())
            sel = np.asarray(sorted(kept, key=lambda i: -scores[i]), dtype=np.int64)
        results.append({"boxes": boxes[sel], "scores": scores[sel].astype(np.float64), "labels": labels[sel].astype(np.int64)})
    return results
