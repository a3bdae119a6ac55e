"""Triton kernels for :mod:`kd3d.reference` (built lazily on first use; importing this never imports Triton).

* ``segment_mean``: one program per voxel of the key-sorted points; it walks its run of points
  (``starts[v] .. starts[v + 1]``) and writes the mean of their features, a ``BLOCK_F`` vector at a
  time. Deterministic (no atomics): the sort happens in PyTorch, the reduction here.
* ``roi_sample``: one program per (roi, sample point); it computes the rotated sample position and
  bilinearly interpolates ``BLOCK_C`` channels at a time from the four neighbouring cells (zero outside
  the map), the same arithmetic as ``grid_sample(align_corners=False, padding_mode="zeros")``.

Both accumulate in float32. Forward only: :mod:`kd3d.ops` uses them where no gradient is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.kernels import lazy_kernel, require_triton

__all__ = ["roi_sample_triton", "segment_mean_triton"]


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@lazy_kernel
def _segment_mean_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, starts_ptr, out_ptr, F, stride_x, stride_o, BLOCK_F: tl.constexpr):
        v = tl.program_id(0)
        start = tl.load(starts_ptr + v)
        end = tl.load(starts_ptr + v + 1)
        cols = tl.arange(0, BLOCK_F)
        ok = cols < F
        acc = tl.zeros([BLOCK_F], dtype=tl.float32)
        for i in range(start, end):
            acc += tl.load(x_ptr + i * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        n = (end - start).to(tl.float32)
        tl.store(out_ptr + v * stride_o + cols, acc / tl.maximum(n, 1.0), mask=ok)

    return kernel


def segment_mean_triton(sorted_values: Tensor, starts: Tensor) -> Tensor:
    """Means of the runs ``sorted_values[starts[v]:starts[v + 1]]`` (``starts`` int64, length V + 1)."""
    require_triton("segment_mean_triton")
    x = sorted_values.contiguous()
    num = starts.numel() - 1
    out = torch.empty(num, x.shape[1], dtype=torch.float32, device=x.device)
    if num > 0:
        _segment_mean_kernel()[(num,)](x, starts.contiguous(), out, x.shape[1], x.stride(0), out.stride(0),
                                       BLOCK_F=max(2, _next_pow2(x.shape[1])))  # fmt: skip
    return out.to(sorted_values.dtype)


@lazy_kernel
def _roi_sample_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(f_ptr, roi_ptr, out_ptr, C, H, W, S, BLOCK_C: tl.constexpr):
        k = tl.program_id(0)
        p = tl.program_id(1)  # sample index i * S + j (row i along the width, column j along the length)
        i = p // S
        j = p % S
        b = tl.load(roi_ptr + k * 6).to(tl.int64)
        cx = tl.load(roi_ptr + k * 6 + 1)
        cy = tl.load(roi_ptr + k * 6 + 2)
        length = tl.load(roi_ptr + k * 6 + 3)
        width = tl.load(roi_ptr + k * 6 + 4)
        yaw = tl.load(roi_ptr + k * 6 + 5)
        u = ((j.to(tl.float32) + 0.5) / S - 0.5) * length
        v = ((i.to(tl.float32) + 0.5) / S - 0.5) * width
        c = tl.cos(yaw)
        s = tl.sin(yaw)
        x = cx + u * c - v * s - 0.5  # cell-index coordinates (cell centres at integers)
        y = cy + u * s + v * c - 0.5
        x0f = tl.floor(x)
        y0f = tl.floor(y)
        wx = x - x0f
        wy = y - y0f
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
        chans = tl.arange(0, BLOCK_C)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + chans
            cok = cc < C
            base = f_ptr + (b * C + cc.to(tl.int64)) * H * W
            acc = tl.zeros([BLOCK_C], dtype=tl.float32)
            for dy in tl.static_range(2):
                for dx in tl.static_range(2):
                    xx = x0 + dx
                    yy = y0 + dy
                    inside = (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)
                    wgt = (wx if dx == 1 else 1.0 - wx) * (wy if dy == 1 else 1.0 - wy)
                    val = tl.load(base + yy * W + xx, mask=cok & inside, other=0.0).to(tl.float32)
                    acc += val * wgt
            tl.store(out_ptr + (k * C + cc.to(tl.int64)) * S * S + p, acc, mask=cok)

    return kernel


def roi_sample_triton(features: Tensor, rois: Tensor, size: int) -> Tensor:
    """``[K, C, S, S]``: :func:`kd3d.reference.rotated_roi_sample_reference` by the Triton kernel (forward only)."""
    require_triton("roi_sample_triton")
    f = features.detach().contiguous()
    r = rois.detach().to(torch.float32).contiguous()
    _, c, h, w = f.shape
    out = torch.zeros(r.shape[0], c, size, size, dtype=torch.float32, device=f.device)
    if r.shape[0] > 0:
        block = min(64, max(2, _next_pow2(c)))
        _roi_sample_kernel()[(r.shape[0], size * size)](f, r, out, c, h, w, size, BLOCK_C=block)
    return out.to(features.dtype)
