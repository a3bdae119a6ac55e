"""RDD's losses (arXiv 2308.10308, Eqs. 2-10), detector-agnostic: BEV feature maps, heatmaps and rotated boxes in.

- Region pairs (Sec. 3.2): every teacher proposal and every student proposal is one box; both BEV maps are
  sampled inside it (RoI Align ``phi`` = :func:`kd3d.ops.rotated_roi_sample`), giving M + N pairs.
- Patches are softmax-normalised over channels at temperature ``tau`` (Eq. 2).
- Disparity weights (Eqs. 4-6): the paper's inner problem ``min_m sum m_i I_i + lambda |m|_1`` with
  ``m in [0, 1]`` is read as "distil the high-disparity pairs" (its prose; literally minimised it gives
  ``m = 0``): ``m_i = 1[d_i > lambda]`` (``"hard"``) or ``clip(d_i - lambda, 0, 1)`` (``"soft"``) with ``d_i``
  the normalised disparity, computed without gradient (fixed in the outer step). ``lambda = 0`` distils
  every pair equally.
- ``L_feat = 1/(M+N) sum m_i ||R_S_i - R_T_i||_2`` (Eq. 8) and ``L_logit = 1/(M+N) sum m_i |p_S_i - p_T_i|_1``
  on the sigmoid heatmaps inside the same boxes (Eq. 9; no regression term for a centre-based head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from kd3d.config import DetectorConfig, RDDConfig
from kd3d.ops import rotated_roi_sample
from kd3d.targets import peaks

__all__ = ["RDDParts", "channel_softmax", "disparity_weights", "gaussian_mi", "pair_distance", "proposal_rois", "rdd_loss"]


def channel_softmax(patches: Tensor, tau: float) -> Tensor:
    """Softmax over the channel axis (dim 1) of ``[K, C, S, S]`` patches at temperature ``tau`` (Eq. 2)."""
    return torch.softmax(patches / tau, dim=1)


def pair_distance(a: Tensor, b: Tensor) -> Tensor:
    """``[K]`` L2 distances of flattened pairs; exactly 0 (with a zero gradient) for equal pairs."""
    sq = (a - b).flatten(1).pow(2).sum(dim=1)
    positive = sq > 0
    return torch.where(positive, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq))


def gaussian_mi(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """``[K]`` mutual information ``-1/2 log(1 - rho^2)`` of two jointly Gaussian variables with the Pearson
    correlation ``rho`` of each flattened pair (a closed-form MI proxy; ``mi_estimator="gaussian"``)."""
    x = a.flatten(1) - a.flatten(1).mean(dim=1, keepdim=True)
    y = b.flatten(1) - b.flatten(1).mean(dim=1, keepdim=True)
    rho = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(eps)
    return -0.5 * torch.log((1 - rho.pow(2)).clamp_min(eps))


def disparity_weights(disparity: Tensor, lam: float, weighting: str = "hard", normalise: str = "max") -> Tensor:
    """``[K]`` weights ``m`` in [0, 1] of pairs with raw ``disparity >= 0`` (see the module docstring)."""
    d = disparity.detach().float()
    if d.numel() == 0 or weighting == "none":
        return torch.ones_like(d)
    if normalise == "minmax":
        span = (d.max() - d.min()).clamp_min(1e-12)
        dn = (d - d.min()) / span
    else:
        dn = d / d.max().clamp_min(1e-12)
    if weighting == "soft":
        return (dn - lam).clamp(0.0, 1.0)
    if lam == 0:
        return torch.ones_like(d)
    return (dn > lam).float()


def proposal_rois(
    heatmap: Tensor, regression: Tensor, det: DetectorConfig, k: int, score_threshold: float, scale: float = 1.0,
    min_cells: float = 1.0,
) -> Tensor:  # fmt: skip
    """``[P, 6]`` rotated BEV boxes (batch, cx, cy, length, width, yaw; BEV cell units) of the top-``k`` heatmap
    peaks per sample, decoded from the regression maps (no gradient), sides scaled by ``scale`` and kept
    within ``[min_cells, map size]``."""
    p = peaks(heatmap, k, score_threshold)
    reg = regression.detach().float()[p.batch, :, p.row, p.col]
    cell_x, cell_y = det.bev_cell
    h, w = heatmap.shape[-2:]
    top = float(max(h, w))
    length = (torch.exp(reg[:, 3].clamp(max=10.0)) / cell_x * scale).clamp(min_cells, top)
    width = (torch.exp(reg[:, 4].clamp(max=10.0)) / cell_y * scale).clamp(min_cells, top)
    cx = p.col.float() + reg[:, 0].clamp(0.0, 1.0)
    cy = p.row.float() + reg[:, 1].clamp(0.0, 1.0)
    yaw = torch.atan2(reg[:, 7], reg[:, 6])
    return torch.stack([p.batch.float(), cx, cy, length, width, yaw], dim=1)


@dataclass
class RDDParts:
    """The pieces of one RDD loss: ``feat`` (L_feat), ``logit`` (L_logit), the weights ``m`` and pair count."""

    feat: Tensor
    logit: Tensor
    weights: Tensor
    disparity: Tensor
    pairs: int

    @property
    def selected(self) -> int:
        return int((self.weights > 0).sum().item())


def rdd_loss(
    student_feat: Tensor, teacher_feat: Tensor, student_heatmap: Tensor, teacher_heatmap: Tensor, rois: Tensor,
    config: RDDConfig,
) -> RDDParts:  # fmt: skip
    """L_feat and L_logit over the pairs ``rois`` (already adapted student features ``[B, C_T, H, W]``)."""
    if rois.shape[0] == 0:
        zero = student_feat.sum() * 0.0 + student_heatmap.sum() * 0.0
        empty = student_feat.new_zeros(0)
        return RDDParts(feat=zero, logit=zero, weights=empty, disparity=empty, pairs=0)
    s = channel_softmax(rotated_roi_sample(student_feat, rois, config.roi_size), config.tau)
    t = channel_softmax(rotated_roi_sample(teacher_feat.detach(), rois, config.roi_size), config.tau)
    dist = pair_distance(s, t)
    with torch.no_grad():
        if config.mi_estimator == "gaussian":
            mi = gaussian_mi(s, t)
            disparity = 1.0 - mi / mi.max().clamp_min(1e-12)
        else:
            disparity = dist.detach()
        m = disparity_weights(disparity, config.lam, config.weighting, config.normalise)
    pairs = rois.shape[0]
    feat = (m * dist).sum() / pairs
    s_prob = rotated_roi_sample(torch.sigmoid(student_heatmap), rois, config.roi_size)
    t_prob = rotated_roi_sample(torch.sigmoid(teacher_heatmap.detach()), rois, config.roi_size)
    l1 = F.l1_loss(s_prob, t_prob, reduction="none").flatten(1)
    l1 = l1.sum(dim=1) if config.logit_reduction == "sum" else l1.mean(dim=1)
    logit = (m * l1).sum() / pairs
    return RDDParts(feat=feat, logit=logit, weights=m, disparity=disparity, pairs=pairs)
