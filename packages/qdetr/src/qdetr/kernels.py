"""Triton kernels for :mod:`qdetr.reference`'s two computations (built lazily, on first use, and cached).

Why kernels at all: the FQM score is an ``[N, M]`` matrix of ~40 float operations per pair, which
eager PyTorch spreads over a dozen ``[N, M]`` temporaries; the DA + LSQ+ quantizer is a row
reduction followed by an element-wise chain, one read and one write of the query in a fused kernel
instead of about ten passes. Triton is imported only inside the builders (:func:`slimkit.kernels.lazy_kernel`),
so importing this module never imports Triton.

* ``match_score``: program ``(i, j)`` computes a ``[BLOCK_N, BLOCK_M]`` tile of
  ``mu_giou * GIoU - mu_l1 * L1`` from ``cxcywh`` boxes. Fixed 32 x 32 tiles, no autotuning: the
  number of kept student queries changes every batch, and each new shape would be re-benchmarked.
* ``aligned_quantize``: one program per row of ``D`` features (the whole row in registers, ``D <=``
  :data:`MAX_ALIGNED_D`): mean, variance, standardize, ``gamma`` / ``beta``, LSQ+ fake-quant.

Both compute in float32 with the reference's operations in the reference's order, divisions and the
square root IEEE (``div_rn``, ``sqrt_rn``) and FMA contraction off (``enable_fp_fusion=False``), so
given the same inputs they match :mod:`qdetr.reference` bit for bit: ``match_score`` always, and
``aligned_quantize`` whenever the row sums are exact (otherwise the summation order differs, a few
ulps in the mean / variance, and a value within those ulps of a rounding boundary can land one
step away). Round half to even is built from ``floor`` (libdevice's ``rint`` has no interpreter
implementation): exact for the clamped codes, which are far below ``2**22``.

The built kernels are reachable as ``_match_score_kernel()`` and ``_aligned_quantize_kernel()``
(the ahead-of-time compile test uses them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.kernels import lazy_kernel, require_triton

__all__ = ["FLOAT_DTYPES", "MAX_ALIGNED_D", "aligned_quantize_triton", "match_score_triton"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_ALIGNED_D = 16384  # one row per program, held in registers: beyond this the reference is used
MATCH_BLOCK = 32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# --------------------------------------------------------------------------- FQM pairing score


@lazy_kernel
def _match_score_kernel() -> Any:
    """Build the tiled ``mu_giou * GIoU - mu_l1 * L1`` kernel (called once, on first use)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        s_ptr, t_ptr, out_ptr,
        N, M, stride_s, stride_t, stride_o,
        mu_giou, mu_l1,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        n_ok = rn < N
        m_ok = rm < M
        sp = s_ptr + rn.to(tl.int64) * stride_s
        tp = t_ptr + rm.to(tl.int64) * stride_t
        scx = tl.load(sp, mask=n_ok, other=0.0).to(tl.float32)
        scy = tl.load(sp + 1, mask=n_ok, other=0.0).to(tl.float32)
        sw = tl.load(sp + 2, mask=n_ok, other=0.0).to(tl.float32)
        sh = tl.load(sp + 3, mask=n_ok, other=0.0).to(tl.float32)
        tcx = tl.load(tp, mask=m_ok, other=0.0).to(tl.float32)
        tcy = tl.load(tp + 1, mask=m_ok, other=0.0).to(tl.float32)
        tw = tl.load(tp + 2, mask=m_ok, other=0.0).to(tl.float32)
        th = tl.load(tp + 3, mask=m_ok, other=0.0).to(tl.float32)
        # corners, as boxes.cxcywh_to_xyxy
        shw = 0.5 * sw
        shh = 0.5 * sh
        sx0 = scx - shw
        sy0 = scy - shh
        sx1 = scx + shw
        sy1 = scy + shh
        thw = 0.5 * tw
        thh = 0.5 * th
        tx0 = tcx - thw
        ty0 = tcy - thh
        tx1 = tcx + thw
        ty1 = tcy + thh
        # areas, as boxes.box_area (an inverted box is empty)
        s_area = tl.maximum(sx1 - sx0, 0.0) * tl.maximum(sy1 - sy0, 0.0)
        t_area = tl.maximum(tx1 - tx0, 0.0) * tl.maximum(ty1 - ty0, 0.0)
        # intersection and union, as boxes.pairwise_iou
        iw = tl.maximum(tl.minimum(sx1[:, None], tx1[None, :]) - tl.maximum(sx0[:, None], tx0[None, :]), 0.0)
        ih = tl.maximum(tl.minimum(sy1[:, None], ty1[None, :]) - tl.maximum(sy0[:, None], ty0[None, :]), 0.0)
        inter = iw * ih
        union = s_area[:, None] + t_area[None, :] - inter
        u_ok = union > 0
        iou = tl.where(u_ok, tl.div_rn(inter, tl.where(u_ok, union, 1.0)), 0.0)
        # enclosing box, as boxes.pairwise_giou
        cw = tl.maximum(tl.maximum(sx1[:, None], tx1[None, :]) - tl.minimum(sx0[:, None], tx0[None, :]), 0.0)
        ch = tl.maximum(tl.maximum(sy1[:, None], ty1[None, :]) - tl.minimum(sy0[:, None], ty0[None, :]), 0.0)
        enclosing = cw * ch
        e_ok = enclosing > 0
        giou = iou - tl.where(e_ok, tl.div_rn(tl.maximum(enclosing - union, 0.0), tl.where(e_ok, enclosing, 1.0)), 0.0)
        # L1 on cxcywh, summed left to right as the reference
        l1 = (
            tl.abs(scx[:, None] - tcx[None, :])
            + tl.abs(scy[:, None] - tcy[None, :])
            + tl.abs(sw[:, None] - tw[None, :])
            + tl.abs(sh[:, None] - th[None, :])
        )
        score = mu_giou * giou - mu_l1 * l1
        o_ok = n_ok[:, None] & m_ok[None, :]
        tl.store(out_ptr + rn.to(tl.int64)[:, None] * stride_o + rm[None, :], score, mask=o_ok)

    return kernel


def match_score_triton(student: Tensor, teacher: Tensor, mu_giou: float, mu_l1: float) -> Tensor:
    """Triton launcher for ``match_score``: ``student [N, 4]``, ``teacher [M, 4]`` cxcywh -> float32 ``[N, M]``.

    Inputs may be float32, float16 or bfloat16 (each read and widened to float32 in registers).
    """
    require_triton("match_score_triton")
    for t in (student, teacher):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"match_score_triton: unsupported dtype {t.dtype}")
    s = student.detach().contiguous()
    t = teacher.detach().contiguous()
    n, m = s.shape[0], t.shape[0]
    out = torch.empty(n, m, dtype=torch.float32, device=s.device)
    if n == 0 or m == 0:
        return out
    grid = (_cdiv(n, MATCH_BLOCK), _cdiv(m, MATCH_BLOCK))
    _match_score_kernel()[grid](
        s, t, out, n, m, s.stride(0), t.stride(0), out.stride(0), float(mu_giou), float(mu_l1),
        BLOCK_N=MATCH_BLOCK, BLOCK_M=MATCH_BLOCK, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------- DA + LSQ+ fake quant


@lazy_kernel
def _aligned_quantize_kernel() -> Any:
    """Build the fused per-row standardize -> ``gamma`` / ``beta`` -> LSQ+ fake-quant kernel."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        x_ptr, gamma_ptr, beta_ptr, step_ptr, offset_ptr, y_ptr,
        D, d_float, den, eps, qmin, qmax,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        base = tl.program_id(0).to(tl.int64) * D
        cols = tl.arange(0, BLOCK_D)
        ok = cols < D
        x = tl.load(x_ptr + base + cols, mask=ok, other=0.0).to(tl.float32)
        # two passes over the row in registers: mean = sum / D, var = sum((x - mean)^2) / (D - unbiased);
        # the counts come as floats (an int argument equal to 1 would be specialized to a constant)
        mean = tl.div_rn(tl.sum(x, axis=0), d_float)
        c = tl.where(ok, x - mean, 0.0)
        var = tl.div_rn(tl.sum(c * c, axis=0), den)
        gamma = tl.load(gamma_ptr + cols, mask=ok, other=1.0)
        beta = tl.load(beta_ptr + cols, mask=ok, other=0.0)
        step = tl.load(step_ptr + cols, mask=ok, other=1.0)
        offset = tl.load(offset_ptr + cols, mask=ok, other=0.0)
        y = tl.div_rn(c, tl.sqrt_rn(var + eps)) * gamma + beta
        # LSQ+ forward, as slimkit.quant.lsq_fake_quant: multiply by the reciprocal, clamp, round half to even
        a = (y - offset) * tl.div_rn(tl.full([BLOCK_D], 1.0, tl.float32), step)
        a = tl.minimum(tl.maximum(a, qmin), qmax)
        f = tl.floor(a)
        frac = a - f
        to_even = f + (f - 2.0 * tl.floor(0.5 * f))  # a tie goes to f if f is even, else to f + 1
        k = tl.where(frac > 0.5, f + 1.0, tl.where(frac < 0.5, f, to_even))
        out = k * step + offset
        tl.store(y_ptr + base + cols, out.to(y_ptr.dtype.element_ty), mask=ok)

    return kernel


def _feature_vector(p: Tensor | float, d: int, device: torch.device) -> Tensor:
    """A per-feature parameter (``[D]``, a 0-d tensor or a number) as a contiguous float32 ``[D]``."""
    if isinstance(p, Tensor):
        v = p.detach().to(device=device, dtype=torch.float32)
        return v.reshape(1).expand(d).contiguous() if v.dim() == 0 else v.contiguous()
    return torch.full((d,), float(p), dtype=torch.float32, device=device)


def aligned_quantize_triton(
    q: Tensor,
    gamma: Tensor,
    beta: Tensor,
    step: Tensor | float,
    offset: Tensor | float,
    qmin: int,
    qmax: int,
    eps: float,
    unbiased: bool,
) -> Tensor:
    """Triton launcher for ``aligned_quantize``: ``q [..., D]`` (fp32/fp16/bf16, ``D <= MAX_ALIGNED_D``), same shape and dtype out.

    ``gamma`` / ``beta`` are ``[D]``; ``step`` / ``offset`` ``[D]``, 0-d or numbers (read as float32).
    """
    require_triton("aligned_quantize_triton")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"aligned_quantize_triton: unsupported dtype {q.dtype}")
    d = q.shape[-1]
    if not 1 <= d <= MAX_ALIGNED_D:
        raise ValueError(f"aligned_quantize_triton: last dimension {d} outside 1..{MAX_ALIGNED_D}")
    x = q.detach().contiguous()
    y = torch.empty_like(x)
    rows = x.numel() // d
    if rows == 0:
        return y
    vec = [_feature_vector(p, d, x.device) for p in (gamma, beta, step, offset)]
    block = _next_pow2(d)
    warps = 1 if block <= 256 else (4 if block <= 4096 else 8)
    _aligned_quantize_kernel()[(rows,)](
        x, *vec, y, d, float(d), float(d - int(bool(unbiased))), float(eps), float(qmin), float(qmax),
        BLOCK_D=block, num_warps=warps, enable_fp_fusion=False,
    )  # fmt: skip
    return y
