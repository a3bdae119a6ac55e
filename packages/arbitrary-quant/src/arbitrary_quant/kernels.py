"""Triton kernels (only): packed k-bit weight matmul, XNOR-popcount binary GEMM, fused DFSQ quantizer.

Each kernel is built lazily on first use and cached (:func:`slimkit.kernels.lazy_kernel`), so
importing this module needs no Triton and compiles nothing. The launchers (``*_triton``) run on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests compare them with
:mod:`arbitrary_quant.reference`). The custom ops and the public dispatching functions are in
:mod:`arbitrary_quant.ops`; launchers assume arguments the dispatchers have already checked.

Layouts (those of :mod:`slimkit.packing`, so exported files and kernels agree):

* **k-bit weights** ``w_packed [N, ceil(K / vpw)]`` int32, ``vpw = 32 // k``: code ``i`` of a row in
  word ``i // vpw`` at bits ``[(i % vpw) * k, (i % vpw) * k + k)`` (first code in the least
  significant bits), never straddling words, padding 0. The kernel loads a ``[BLOCK_N, BLOCK_KW]``
  tile of words and expands it in registers to ``[BLOCK_N, BLOCK_KW, VPW_PAD]`` codes
  (``VPW_PAD = next_pow2(vpw)``; lanes ``>= vpw``, i.e. the unused high bits of 3/5/6/7-bit words,
  and codes past K are masked to 0), dequantizes ``(q - zero) * scale`` in float32, rounds once to
  ``x``'s dtype and feeds ``tl.dot``. No dequantized weight is ever written to memory.
* **sign bits** ``[rows, ceil(K / 32)]`` int32, bit 1 = ``+1`` (``x >= 0``, so ``sign(0) = +1``). The
  binary GEMM sums ``K - 2 * popcount(a XOR b)``; bits past K in the last word are masked out, so
  junk padding is harmless. Popcount is the branch-free SWAR sequence on uint32 (exact under the
  interpreter; LLVM turns the idiom into ``popc`` on NVIDIA GPUs).
* **DFSQ**: one program per (sample, channel) row of ``H*W`` contiguous values, three passes over
  the row inside the one kernel (sum -> mean, max|x - mean|, quantize + store), so any row length
  works with a fixed block. Divisions use ``div_rn`` (IEEE, as PyTorch) and the launch disables
  FMA contraction, so every value matches the reference bit for bit given the same statistics.

The built kernels are reachable as ``_packed_matmul_kernel()``, ``_binary_matmul_kernel()`` and
``_dfsq_kernel()`` (the ahead-of-time compile test uses them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.kernels import autotune_configs, lazy_kernel, require_triton

__all__ = ["binary_linear_triton", "binary_matmul_triton", "dfsq_quantize_triton", "packed_matmul_triton"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# --------------------------------------------------------------------------- packed k-bit matmul


@lazy_kernel
def _packed_matmul_kernel() -> Any:
    """Build ``y = x @ ((unpack(w) - zero) * scale).T`` (called once, on first use)."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4),
                triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4),
                triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4),
                triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8),
            ]
        ),
        key=["M", "N", "K", "BITS", "SIGNED", "HAS_ZERO"],
    )
    @triton.jit
    def kernel(
        x_ptr, w_ptr, scale_ptr, zero_ptr, y_ptr,
        M, N, K, KW,
        stride_xm, stride_xk, stride_wn, stride_ym,
        BITS: tl.constexpr, VPW: tl.constexpr, VPW_PAD: tl.constexpr,
        SIGNED: tl.constexpr, HAS_ZERO: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # Program (m, n): a [BLOCK_M, BLOCK_N] output tile; the K loop walks BLOCK_KW words at a time,
        # each expanded to VPW_PAD code lanes (BLOCK_K = BLOCK_KW * VPW_PAD lanes per step).
        BLOCK_KW: tl.constexpr = BLOCK_K // VPW_PAD
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        slot = tl.arange(0, VPW_PAD)
        slot_ok = slot < VPW
        shift = tl.where(slot_ok, slot * BITS, 0)  # never shift by >= 32 (undefined on the GPU)
        scale = tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        if HAS_ZERO:
            zero = tl.load(zero_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for kw0 in range(0, KW, BLOCK_KW):
            kw = kw0 + tl.arange(0, BLOCK_KW)
            # code index of every (word, lane): k = word * VPW + lane
            kk = kw[:, None] * VPW + slot[None, :]  # [BLOCK_KW, VPW_PAD]
            k_ok = slot_ok[None, :] & (kk < K)
            words = tl.load(
                w_ptr + rn[:, None] * stride_wn + kw[None, :], mask=n_ok[:, None] & (kw[None, :] < KW), other=0
            )
            q = (words[:, :, None] >> shift[None, None, :]) & ((1 << BITS) - 1)
            if SIGNED:
                q = tl.where(q >= (1 << (BITS - 1)), q - (1 << BITS), q)
            wf = q.to(tl.float32)
            if HAS_ZERO:
                wf = wf - zero[:, None, None]
            wf = wf * scale[:, None, None]
            wf = tl.where(k_ok[None, :, :], wf, 0.0)
            w = tl.reshape(wf, [BLOCK_N, BLOCK_K]).to(x_ptr.dtype.element_ty)
            x_ok = m_ok[:, None, None] & k_ok[None, :, :]
            xt = tl.load(x_ptr + rm[:, None, None] * stride_xm + kk[None, :, :] * stride_xk, mask=x_ok, other=0.0)
            xt = tl.reshape(xt, [BLOCK_M, BLOCK_K])
            if IEEE:
                acc += tl.dot(xt, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(xt, tl.trans(w))
        y_ok = m_ok[:, None] & n_ok[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_ok)

    return kernel


def packed_matmul_triton(
    x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int, signed: bool = False
) -> Tensor:
    """Triton launcher for ``packed_matmul``: ``x [M, K]`` (fp32/fp16/bf16) times the packed ``[N, K]`` weight."""
    require_triton("packed_matmul_triton")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"packed_matmul_triton: unsupported dtype {x.dtype}")
    m, k = x.shape
    n, kw = w_packed.shape
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    w = w_packed.contiguous()
    s = scale.detach().to(torch.float32).contiguous()
    z = s if zero is None else zero.detach().to(torch.float32).contiguous()
    vpw = 32 // bits

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (_cdiv(m, meta["BLOCK_M"]), _cdiv(n, meta["BLOCK_N"]))

    _packed_matmul_kernel()[grid](
        x, w, s, z, y, m, n, k, kw, x.stride(0), x.stride(1), w.stride(0), y.stride(0),
        BITS=bits, VPW=vpw, VPW_PAD=_next_pow2(vpw), SIGNED=bool(signed), HAS_ZERO=zero is not None,
        IEEE=x.dtype == torch.float32,
    )  # fmt: skip
    return y


# --------------------------------------------------------------------------- binary GEMM


@lazy_kernel
def _binary_matmul_kernel() -> Any:
    """Build the XNOR-popcount GEMM on sign bits (called once, on first use).

    ``A_FLOAT``: ``a`` is a float ``[M, K]`` activation whose sign bits are packed in registers
    (``binary_linear``: no packed copy of ``x`` is written); otherwise ``a`` holds packed words.
    ``HAS_ALPHA``: the integer dot products are scaled per output channel and stored as floats.
    """
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_W": 4}, num_warps=4),
                triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_W": 4}, num_warps=4),
                triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_W": 2}, num_warps=4),
                triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_W": 2}, num_warps=8),
            ]
        ),
        key=["M", "N", "KW", "A_FLOAT", "HAS_ALPHA"],
    )
    @triton.jit
    def kernel(
        a_ptr, b_ptr, alpha_ptr, y_ptr,
        M, N, K, KW,
        stride_am, stride_ak, stride_bn, stride_ym,
        A_FLOAT: tl.constexpr, HAS_ALPHA: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    ):  # fmt: skip
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        bit = tl.arange(0, 32).to(tl.uint32)
        pop = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for w0 in range(0, KW, BLOCK_W):
            ww = w0 + tl.arange(0, BLOCK_W)
            w_ok = ww < KW
            # valid bits of each word: all 32, fewer in the last word, none past it
            nbits = tl.minimum(tl.maximum(K - ww * 32, 0), 32)
            one = tl.full([BLOCK_W], 1, dtype=tl.uint32)
            valid = ((one << tl.minimum(nbits, 31).to(tl.uint32)) - one) | tl.where(nbits >= 32, one << 31, 0)
            if A_FLOAT:
                kk = ww[:, None] * 32 + bit[None, :].to(tl.int32)  # [BLOCK_W, 32]
                xt = tl.load(
                    a_ptr + rm[:, None, None] * stride_am + kk[None, :, :] * stride_ak,
                    mask=m_ok[:, None, None] & (kk < K)[None, :, :],
                    other=-1.0,
                )
                # disjoint bits: the sum is the OR (sign(0) = +1, like slimkit.packing.pack_signs)
                a = tl.sum((xt >= 0).to(tl.uint32) << bit[None, None, :], axis=2)
            else:
                a = tl.load(
                    a_ptr + rm[:, None] * stride_am + ww[None, :] * stride_ak,
                    mask=m_ok[:, None] & w_ok[None, :],
                    other=0,
                ).to(tl.uint32, bitcast=True)
            b = tl.load(b_ptr + rn[:, None] * stride_bn + ww[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0)
            b = b.to(tl.uint32, bitcast=True)
            v = (a[:, None, :] ^ b[None, :, :]) & valid[None, None, :]  # [BLOCK_M, BLOCK_N, BLOCK_W]
            # SWAR popcount (logical shifts on uint32, no overflow anywhere)
            v = v - ((v >> 1) & 0x55555555)
            v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
            v = (v + (v >> 4)) & 0x0F0F0F0F
            v = v + (v >> 8)
            v = v + (v >> 16)
            pop += tl.sum((v & 0x3F).to(tl.int32), axis=2)
        dots = K - 2 * pop
        y_ok = m_ok[:, None] & n_ok[None, :]
        y_off = y_ptr + rm[:, None] * stride_ym + rn[None, :]
        if HAS_ALPHA:
            alpha = tl.load(alpha_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
            tl.store(y_off, (dots.to(tl.float32) * alpha[None, :]).to(y_ptr.dtype.element_ty), mask=y_ok)
        else:
            tl.store(y_off, dots.to(y_ptr.dtype.element_ty), mask=y_ok)

    return kernel


def _launch_binary(a: Tensor, b: Tensor, alpha: Tensor | None, y: Tensor, k: int, a_float: bool) -> Tensor:
    m, n = y.shape
    if m == 0 or n == 0:
        return y
    kw = b.shape[1]
    if kw == 0:  # K = 0: empty sums
        return y.zero_()
    al = b if alpha is None else alpha

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (_cdiv(m, meta["BLOCK_M"]), _cdiv(n, meta["BLOCK_N"]))

    _binary_matmul_kernel()[grid](
        a, b, al, y, m, n, k, kw, a.stride(0), a.stride(1), b.stride(0), y.stride(0),
        A_FLOAT=a_float, HAS_ALPHA=alpha is not None,
    )  # fmt: skip
    return y


def binary_matmul_triton(a_packed: Tensor, b_packed: Tensor, k: int) -> Tensor:
    """Triton launcher for ``binary_matmul``: int32 ``[M, N]`` of ``K - 2 * popcount(a XOR b)``."""
    require_triton("binary_matmul_triton")
    b = b_packed.contiguous()
    y = torch.empty(a_packed.shape[0], b.shape[0], dtype=torch.int32, device=b.device)
    return _launch_binary(a_packed, b, None, y, k, a_float=False)


def binary_linear_triton(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> Tensor:
    """Triton launcher for ``binary_linear``: ``sign(x)`` packed in registers, XNOR-popcount, ``* alpha``."""
    require_triton("binary_linear_triton")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"binary_linear_triton: unsupported dtype {x.dtype}")
    b = w_packed.contiguous()
    y = torch.empty(x.shape[0], b.shape[0], dtype=x.dtype, device=x.device)
    # alpha None: the int dot products converted to x's dtype (alpha = 1 would round the same way)
    al = torch.ones(b.shape[0], dtype=torch.float32, device=b.device) if alpha is None else alpha
    return _launch_binary(x.detach(), b, al.detach().to(torch.float32).contiguous(), y, k, a_float=True)


# --------------------------------------------------------------------------- DFSQ quantizer


@lazy_kernel
def _dfsq_kernel() -> Any:
    """Build the fused per-(sample, channel) DFSQ normalize -> nearest point -> de-normalize kernel."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        x_ptr, pts_ptr, y_ptr,
        HW, C, P,
        POST_RELU: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)  # = n * C + c
        c = row % C
        base = row.to(tl.int64) * HW
        offs0 = tl.arange(0, BLOCK)
        # pass 1: the mean (float32 sum / HW, as torch's mean = sum().div_(numel) on CPU)
        if POST_RELU:
            mean = 0.0
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for s in range(0, HW, BLOCK):
                offs = s + offs0
                acc += tl.load(x_ptr + base + offs, mask=offs < HW, other=0.0).to(tl.float32)
            mean = tl.math.div_rn(tl.sum(acc, axis=0), HW.to(tl.float32))
        # pass 2: scale = max|x - mean| (exact in any order); a zero scale becomes 1
        mx = tl.zeros([BLOCK], dtype=tl.float32)
        for s in range(0, HW, BLOCK):
            offs = s + offs0
            xv = tl.load(x_ptr + base + offs, mask=offs < HW, other=0.0).to(tl.float32)
            mx = tl.maximum(mx, tl.where(offs < HW, tl.abs(xv - mean), 0.0))
        scale = tl.max(mx, axis=0)
        scale = tl.where(scale > 0, scale, 1.0)
        # pass 3: nearest point (a value equal to a midpoint goes low), de-normalize, STE forward value
        p_base = pts_ptr + c * P
        p0 = tl.load(p_base)
        for s in range(0, HW, BLOCK):
            offs = s + offs0
            ok = offs < HW
            xin = tl.load(x_ptr + base + offs, mask=ok, other=0.0)
            xv = xin.to(tl.float32)
            xn = tl.math.div_rn(xv - mean, scale)
            q = tl.zeros([BLOCK], dtype=tl.float32) + p0
            lo = p0
            for j in range(1, P):
                hi = tl.load(p_base + j)
                mid = (lo + hi) * 0.5
                # not (mid >= xn): strictly past the midpoint (NaN goes to the top, as searchsorted)
                q = tl.where(mid >= xn, q, hi)
                lo = hi
            xh = (q * scale + mean).to(y_ptr.dtype.element_ty)  # fusion disabled at launch: mul, then add
            # reference forward: x + (x_hat - x), each op rounded to the input dtype
            d = (xh.to(tl.float32) - xv).to(y_ptr.dtype.element_ty)
            out = (xv + d.to(tl.float32)).to(y_ptr.dtype.element_ty)
            tl.store(y_ptr + base + offs, out, mask=ok)

    return kernel


def dfsq_quantize_triton(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    """Triton launcher for ``dfsq_quantize`` (forward value only): ``x [N, C, H, W]`` fp32/fp16/bf16.

    ``points`` is ``[C, P]`` (rows sorted ascending) or a shared ``[P]`` set.
    """
    require_triton("dfsq_quantize_triton")
    import triton

    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"dfsq_quantize_triton: unsupported dtype {x.dtype}")
    xc = x.detach().contiguous()
    n, c, h, w = xc.shape
    pts = points.detach().to(device=xc.device, dtype=torch.float32)
    if pts.dim() == 1:
        pts = pts.unsqueeze(0).expand(c, -1)
    pts = pts.contiguous()
    y = torch.empty_like(xc)
    hw = h * w
    if n * c == 0 or hw == 0:
        return y
    block = min(1024, max(16, triton.next_power_of_2(hw)))
    _dfsq_kernel()[(n * c,)](
        xc, pts, y, hw, c, pts.shape[1],
        POST_RELU=bool(post_relu), BLOCK=block, num_warps=4 if block >= 256 else 1, enable_fp_fusion=False,
    )  # fmt: skip
    return y
