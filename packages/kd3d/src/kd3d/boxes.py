"""Rotated boxes ``[x, y, z, l, w, h, yaw]`` (LiDAR frame, metres; ``z`` the centre, ``l`` along the heading):
BEV corners, rotated BEV / 3D IoU by convex polygon clipping (Sutherland-Hodgman, numpy, CPU) and rotated NMS.

OpenPCDet's rotated IoU is a CUDA kernel; this one runs anywhere and is exact for convex quadrilaterals.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["bev_corners", "convex_intersection_area", "limit_period", "rotated_iou_3d", "rotated_iou_bev", "rotated_nms"]

Array = NDArray[np.float64]


def limit_period(angle: Array | float, period: float = 2 * np.pi) -> Array:
    """``angle`` wrapped into ``[-period / 2, period / 2)``."""
    a = np.asarray(angle, dtype=np.float64)
    return np.asarray(a - np.floor(a / period + 0.5) * period)


def bev_corners(boxes: Array) -> Array:
    """``[N, 4, 2]`` BEV corners, counter-clockwise (front-left, rear-left, rear-right, front-right turned)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    half = np.stack([b[:, 3] / 2, b[:, 4] / 2], axis=1)
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    local = signs[None] * half[:, None, :]
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s + b[:, None, 0]
    y = local[..., 0] * s + local[..., 1] * c + b[:, None, 1]
    return np.stack([x, y], axis=-1)


def _area(poly: Array) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _ccw(poly: Array) -> Array:
    x, y = poly[:, 0], poly[:, 1]
    signed = np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))
    return poly if signed >= 0 else poly[::-1]


def convex_intersection_area(p: Array, q: Array) -> float:
    """Area of the intersection of two convex polygons (Sutherland-Hodgman clipping of ``p`` by ``q``)."""
    out = [tuple(v) for v in _ccw(np.asarray(p, dtype=np.float64))]
    clip = _ccw(np.asarray(q, dtype=np.float64))
    for i in range(len(clip)):
        if not out:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        ex, ey = b[0] - a[0], b[1] - a[1]

        def side(v: tuple[float, float], a: Array = a, ex: float = ex, ey: float = ey) -> float:
            return ex * (v[1] - a[1]) - ey * (v[0] - a[0])

        src, out = out, []
        for j in range(len(src)):
            cur, prev = src[j], src[j - 1]
            sc, sp = side(cur), side(prev)
            if sc >= 0:
                if sp < 0:
                    t = sp / (sp - sc)
                    out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
                out.append(cur)
            elif sp >= 0:
                t = sp / (sp - sc)
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
    return _area(np.asarray(out, dtype=np.float64)) if len(out) >= 3 else 0.0


def _pairwise(a: Array, b: Array, three_d: bool) -> Array:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 7)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 7)
    out = np.zeros((len(a), len(b)))
    if len(a) == 0 or len(b) == 0:
        return out
    ca, cb = bev_corners(a), bev_corners(b)
    ra = np.hypot(a[:, 3], a[:, 4]) / 2
    rb = np.hypot(b[:, 3], b[:, 4]) / 2
    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    near = dist < ra[:, None] + rb[None, :]
    for i, j in zip(*np.nonzero(near), strict=True):
        inter = convex_intersection_area(ca[i], cb[j])
        if inter <= 0:
            continue
        va, vb = a[i, 3] * a[i, 4], b[j, 3] * b[j, 4]
        if three_d:
            lo = max(a[i, 2] - a[i, 5] / 2, b[j, 2] - b[j, 5] / 2)
            hi = min(a[i, 2] + a[i, 5] / 2, b[j, 2] + b[j, 5] / 2)
            inter *= max(0.0, hi - lo)
            va, vb = va * a[i, 5], vb * b[j, 5]
        union = va + vb - inter
        out[i, j] = inter / union if union > 0 else 0.0
    return out


def rotated_iou_bev(a: Array, b: Array) -> Array:
    """``[Na, Nb]`` IoU of the BEV footprints."""
    return _pairwise(a, b, three_d=False)


def rotated_iou_3d(a: Array, b: Array) -> Array:
    """``[Na, Nb]`` 3D IoU: BEV intersection times the z overlap over the union of volumes."""
    return _pairwise(a, b, three_d=True)


def rotated_nms(boxes: Array, scores: Array, iou_threshold: float) -> NDArray[np.int64]:
    """Indices kept by greedy NMS on rotated BEV IoU, highest score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    iou = rotated_iou_bev(boxes, boxes)
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)
