"""Box formats and pairwise overlap: the geometry every other qdetr module agrees on.

Leaf module (imports only torch and :mod:`slimkit.errors`). Three formats meet in qdetr:

* ``cxcywh``: normalized centre / size in ``[0, 1]``, what DETR predicts (``pred_boxes``) and what
  its loss and matcher see;
* ``xyxy``: corners, what IoU and GIoU are defined on (and what detections are reported in);
* ``xywh``: COCO's absolute top-left corner plus size, what annotation files hold.

All functions take ``[..., 4]`` tensors and keep the dtype. The formulas are written out once here
(``x0 = cx - 0.5 * w``, ...) because :mod:`qdetr.reference` and the Triton kernel in
:mod:`qdetr.kernels` repeat the same float operations in the same order, which is what lets the
kernel match the reference bit for bit.

Degenerate boxes never produce NaN or infinity: a width or height below zero counts as zero (an
inverted box is an empty box), an IoU whose union is zero is 0, and the GIoU penalty term whose
enclosing box has zero area is 0. So :func:`pairwise_giou` is finite and in ``[-1, 1]`` for every
finite input, and ``giou(b, b) == 1`` exactly for every box of positive area (a zero-area box has
nothing to overlap: ``giou(b, b) == 0``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from slimkit.errors import BadInputError

__all__ = [
    "box_area",
    "check_boxes",
    "cxcywh_to_xyxy",
    "pairwise_giou",
    "pairwise_iou",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def check_boxes(b: Tensor, what: str = "boxes", pairwise: bool = False) -> None:
    """One-line :class:`BadInputError` unless ``b`` is a float ``[..., 4]`` tensor (``[N, 4]`` when ``pairwise``)."""
    if not isinstance(b, Tensor) or not b.is_floating_point():
        raise BadInputError(f"{what} must be a floating-point tensor, got {getattr(b, 'dtype', type(b).__name__)}")
    if pairwise and b.dim() != 2:
        raise BadInputError(f"{what} must be [N, 4], got shape {tuple(b.shape)}")
    if b.dim() < 1 or b.shape[-1] != 4:
        raise BadInputError(f"{what} must have 4 coordinates in the last dimension, got shape {tuple(b.shape)}")


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``."""
    check_boxes(b)
    cx, cy, w, h = b.unbind(-1)
    hw, hh = 0.5 * w, 0.5 * h
    return torch.stack((cx - hw, cy - hh, cx + hw, cy + hh), dim=-1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    """``(x0, y0, x1, y1)`` -> ``((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0)`` (the inverse of :func:`cxcywh_to_xyxy`)."""
    check_boxes(b)
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack((0.5 * (x0 + x1), 0.5 * (y0 + y1), x1 - x0, y1 - y0), dim=-1)


def xywh_to_xyxy(b: Tensor) -> Tensor:
    """COCO ``(x, y, w, h)`` -> ``(x, y, x + w, y + h)``."""
    check_boxes(b)
    x, y, w, h = b.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(b: Tensor) -> Tensor:
    """``(x0, y0, x1, y1)`` -> COCO ``(x0, y0, x1 - x0, y1 - y0)`` (the inverse of :func:`xywh_to_xyxy`)."""
    check_boxes(b)
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def box_area(b: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes ``[..., 4]`` -> ``[...]``; a negative width or height counts as 0 (empty box)."""
    check_boxes(b)
    w = (b[..., 2] - b[..., 0]).clamp(min=0)
    h = (b[..., 3] - b[..., 1]).clamp(min=0)
    return w * h


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0: the one guard that keeps degenerate boxes finite."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, 1.0), 0.0)  # the inner where keeps gradients finite


def _columns(a: Tensor, b: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The four coordinates of ``a`` as ``[N, 1]`` columns and of ``b`` as ``[1, M]`` rows.

    Pairwise terms built from these broadcast straight to ``[N, M]``; slicing ``[N, M, 2]`` tensors
    instead made strided copies and took most of the time (same operations, same bits).
    """
    return tuple(a[:, i, None] for i in range(4)), tuple(b[None, :, i] for i in range(4))


def pairwise_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union area of every pair of ``xyxy`` boxes: ``a [N, 4]``, ``b [M, 4]`` -> ``([N, M], [N, M])``.

    The union is returned too because GIoU needs it. An empty union (two empty boxes) gives IoU 0.
    """
    check_boxes(a, "a", pairwise=True)
    check_boxes(b, "b", pairwise=True)
    area_a, area_b = box_area(a), box_area(b)
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _columns(a, b)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0) * (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    union = area_a[:, None] + area_b[None, :] - inter
    return _safe_ratio(inter, union), union


def pairwise_giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalized IoU of every pair of ``xyxy`` boxes, ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]`` in ``[-1, 1]``.

    ``GIoU = IoU - (C - union) / C`` with ``C`` the area of the smallest box enclosing both
    (Rezatofighi et al. 2019): unlike IoU it still ranks disjoint boxes by how far apart they are,
    which is why DETR's matcher and Q-DETR's query matching use it. ``C = 0`` (both boxes
    collapse onto one line or point) gives a penalty of 0. ``GIoU <= IoU`` holds exactly.
    """
    iou, union = pairwise_iou(a, b)
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _columns(a, b)
    enclosing = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)).clamp(min=0) * (torch.maximum(ay1, by1) - torch.minimum(ay0, by0)).clamp(min=0)
    # C >= union in exact arithmetic; rounding can make C - union a hair negative for nested boxes,
    # and clamping it keeps GIoU <= IoU <= 1 exactly.
    return iou - _safe_ratio((enclosing - union).clamp(min=0), enclosing)
