"""Triton kernels (only): N:M mask selection, Bi-Mask permutation scoring, compressed N:M matmul.

Each kernel is built lazily on first use and cached (:func:`slimkit.kernels.lazy_kernel`), so
importing this module needs no Triton and compiles nothing. The launchers (``*_triton``) run on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests compare them with
:mod:`nm_sparse.reference`). The custom ops and the public dispatching functions
(``nm_mask``, ``permutation_scores``, ``nm_matmul``) are in :mod:`nm_sparse.ops`.

Conventions (shared with the references):

* groups are ``m`` consecutive entries along the **last** dimension of a 2-D tensor;
* a mask keeps the ``n`` entries of largest ``|w|`` per group; ties go to the lower index,
  so the CPU and Triton paths agree bit for bit;
* ``m`` may be any integer in ``[1, 32]`` (not only powers of two): the kernels pad each
  group to the next power of two and mask the padding lanes out.

The built kernels are reachable as ``_nm_mask_kernel()``, ``_perm_scores_kernel()`` and
``_nm_matmul_kernel()`` (ahead-of-time compile tests use them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nm_sparse.reference import (  # noqa: F401  (compress/decompress/references: 0.1 names, kept importable here)
    MAX_M,
    SCORERS,
    compress,
    decompress,
    nm_mask_reference,
    nm_matmul_reference,
    permutation_scores_reference,
)
from slimkit.kernels import autotune_configs, lazy_kernel, require_triton

__all__ = ["nm_mask_triton", "nm_matmul_triton", "permutation_scores_triton"]


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _build_nm_mask_kernel() -> Any:
    """Build the top-n per group by pairwise ranking kernel (called once, on first use)."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_G": 64}, num_warps=4),
                triton.Config({"BLOCK_G": 128}, num_warps=4),
                triton.Config({"BLOCK_G": 32}, num_warps=2),
            ]
        ),
        key=["M_PAD"],
    )
    @triton.jit
    def kernel(
        w_ptr,
        out_ptr,
        num_groups,
        N: tl.constexpr,
        M: tl.constexpr,
        M_PAD: tl.constexpr,
        BLOCK_G: tl.constexpr,
    ):
        # A tile of BLOCK_G groups (rows of a [num_groups, M] view); rank by pairwise comparison.
        pid = tl.program_id(0)
        g = pid * BLOCK_G + tl.arange(0, BLOCK_G)
        j = tl.arange(0, M_PAD)
        valid = (g[:, None] < num_groups) & (j[None, :] < M)
        offs = g[:, None] * M + j[None, :]
        a = tl.abs(tl.load(w_ptr + offs, mask=valid, other=0.0).to(tl.float32))
        ai = a[:, :, None]  # competitor i
        aj = a[:, None, :]  # candidate j
        ii = j[None, :, None]
        jj = j[None, None, :]
        beats = ((ai > aj) | ((ai == aj) & (ii < jj))) & (ii < M)
        rank = tl.sum(beats.to(tl.int32), axis=1)
        keep = (rank < N) & valid
        tl.store(out_ptr + offs, keep.to(tl.int8), mask=valid)

    return kernel


def _build_perm_scores_kernel() -> Any:
    """Build the Bi-Mask permutation scores, all candidates in one launch kernel (called once, on first use)."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_I": 64}, num_warps=4),
                triton.Config({"BLOCK_I": 128}, num_warps=4),
                triton.Config({"BLOCK_I": 32}, num_warps=2),
            ]
        ),
        key=["M_PAD", "SCORER"],
    )
    @triton.jit
    def kernel(
        a_ptr,
        perm_ptr,
        part_ptr,
        out_rows,
        in_cols,
        N: tl.constexpr,
        M: tl.constexpr,
        M_PAD: tl.constexpr,
        SCORER: tl.constexpr,
        BLOCK_I: tl.constexpr,
    ):
        # Program (k, b): candidate k, a BLOCK_I-wide slice of columns; loops over row groups.
        # Output: one partial score per (candidate, column), summed on the host.
        k = tl.program_id(0)
        b = tl.program_id(1)
        cols = b * BLOCK_I + tl.arange(0, BLOCK_I)
        j = tl.arange(0, M_PAD)
        col_ok = cols < in_cols
        acc = tl.zeros([BLOCK_I], dtype=tl.float32)
        for g in range(0, out_rows // M):
            lane_ok = j < M
            rows = tl.load(perm_ptr + k * out_rows + g * M + j, mask=lane_ok, other=0)
            ok = lane_ok[:, None] & col_ok[None, :]
            a = tl.load(a_ptr + rows[:, None] * in_cols + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            nz = (a > 0) & ok
            if SCORER < 2:
                # Non-zeros outrank zeros, so the backward mask keeps min(n, nnz) forward-kept
                # weights per block: no ranking needed for "kept" and "eligible".
                cnt = tl.sum(nz.to(tl.int32), axis=0)
                if SCORER == 0:
                    acc += tl.minimum(cnt, N).to(tl.float32)
                else:
                    acc += ((cnt <= N) & col_ok).to(tl.float32)
            else:
                ai = a[:, None, :]
                aj = a[None, :, :]
                ii = j[:, None, None]
                jj = j[None, :, None]
                beats = ((ai > aj) | ((ai == aj) & (ii < jj))) & (ii < M)
                rank = tl.sum(beats.to(tl.int32), axis=0)
                keep = (rank < N) & nz
                acc += tl.sum(tl.where(keep, a, 0.0), axis=0)
        # per-column partial scores: every config overwrites every entry, so autotuning is safe
        tl.store(part_ptr + k * in_cols + cols, acc, mask=col_ok)

    return kernel


def _build_nm_matmul_kernel() -> Any:
    """Build the x @ W^T from the compressed (values, indices) format kernel (called once, on first use)."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_B": 32, "BLOCK_R": 64, "BLOCK_G": 16}, num_warps=4),
                triton.Config({"BLOCK_B": 64, "BLOCK_R": 64, "BLOCK_G": 16}, num_warps=4),
                triton.Config({"BLOCK_B": 16, "BLOCK_R": 64, "BLOCK_G": 32}, num_warps=4),
                triton.Config({"BLOCK_B": 128, "BLOCK_R": 128, "BLOCK_G": 8}, num_warps=8),
            ]
        ),
        key=["B", "R", "G", "N", "M_PAD"],
    )
    @triton.jit
    def kernel(
        x_ptr,
        v_ptr,
        idx_ptr,
        y_ptr,
        B,
        R,
        G,
        stride_xb,
        stride_yb,
        N: tl.constexpr,
        M: tl.constexpr,
        M_PAD: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_G: tl.constexpr,
    ):
        # y[b, r] = sum_k x[b, k] W[r, k]; W tiles are rebuilt in registers from (value, index)
        # pairs by one-hot expansion, then fed to a dense tl.dot. Reads n/m of the weight bytes.
        pid_b = tl.program_id(0)
        pid_r = tl.program_id(1)
        rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        j = tl.arange(0, M_PAD)
        acc = tl.zeros([BLOCK_B, BLOCK_R], dtype=tl.float32)
        for g0 in range(0, G, BLOCK_G):
            gg = g0 + tl.arange(0, BLOCK_G)
            # rebuild the weight tile [BLOCK_R, BLOCK_G, M_PAD] one kept slot at a time
            w_ok = (rr[:, None] < R) & (gg[None, :] < G)
            w_off = rr[:, None] * (G * N) + gg[None, :] * N
            w = tl.zeros([BLOCK_R, BLOCK_G, M_PAD], dtype=tl.float32)
            for s in tl.static_range(N):
                v = tl.load(v_ptr + w_off + s, mask=w_ok, other=0.0).to(tl.float32)
                ix = tl.load(idx_ptr + w_off + s, mask=w_ok, other=0).to(tl.int32)
                w += tl.where(ix[:, :, None] == j[None, None, :], v[:, :, None], 0.0)
            w = tl.reshape(w, [BLOCK_R, BLOCK_G * M_PAD])
            # activation tile [BLOCK_B, BLOCK_G, M_PAD] (padding lanes read as zero)
            x_ok = (rb[:, None, None] < B) & (gg[None, :, None] < G) & (j[None, None, :] < M)
            x_off = rb[:, None, None] * stride_xb + gg[None, :, None] * M + j[None, None, :]
            xt = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
            xt = tl.reshape(xt, [BLOCK_B, BLOCK_G * M_PAD])
            if IEEE:
                acc += tl.dot(xt, tl.trans(w).to(xt.dtype), input_precision="ieee")
            else:
                acc += tl.dot(xt, tl.trans(w).to(xt.dtype))
        y_ok = (rb[:, None] < B) & (rr[None, :] < R)
        tl.store(y_ptr + rb[:, None] * stride_yb + rr[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_ok)

    return kernel


_nm_mask_kernel = lazy_kernel(_build_nm_mask_kernel)
_perm_scores_kernel = lazy_kernel(_build_perm_scores_kernel)
_nm_matmul_kernel = lazy_kernel(_build_nm_matmul_kernel)


def nm_mask_triton(w2d: Tensor, n: int, m: int) -> Tensor:
    """Triton launcher for :func:`nm_mask` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``)."""
    require_triton("nm_mask_triton")
    w = w2d.detach().contiguous()
    out = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    num_groups = w.numel() // m
    if num_groups:

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (_cdiv(num_groups, meta["BLOCK_G"]),)

        _nm_mask_kernel()[grid](w, out, num_groups, N=n, M=m, M_PAD=_next_pow2(m))
    return out.view(torch.bool)


def permutation_scores_triton(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str = "kept") -> Tensor:
    """Triton launcher for :func:`permutation_scores`: all candidates in one launch."""
    require_triton("permutation_scores_triton")
    a = w_abs_masked.detach().contiguous()
    p = perms.detach().to(torch.int64).contiguous()
    out_rows, in_cols = a.shape
    num_k = p.shape[0]
    part = torch.zeros(num_k, in_cols, dtype=torch.float32, device=a.device)
    if num_k and in_cols:

        def grid(meta: dict[str, Any]) -> tuple[int, int]:
            return (num_k, _cdiv(in_cols, meta["BLOCK_I"]))

        _perm_scores_kernel()[grid](
            a, p, part, out_rows, in_cols, N=n, M=m, M_PAD=_next_pow2(m), SCORER=SCORERS.index(scorer)
        )
    return part.sum(dim=1)


def nm_matmul_triton(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """Triton launcher for :func:`nm_matmul` (decompress in registers, then ``tl.dot``)."""
    require_triton("nm_matmul_triton")
    xc = x.contiguous()
    v = values.contiguous()
    ix = indices.contiguous()
    batch = xc.shape[0]
    rows = v.shape[0]
    groups = v.shape[1] // n
    y = torch.empty(batch, rows, dtype=x.dtype, device=x.device)
    if batch and rows:

        def grid(meta: dict[str, Any]) -> tuple[int, int]:
            return (_cdiv(batch, meta["BLOCK_B"]), _cdiv(rows, meta["BLOCK_R"]))

        _nm_matmul_kernel()[grid](
            xc, v, ix, y, batch, rows, groups, xc.stride(0), y.stride(0),
            N=n, M=m, M_PAD=_next_pow2(m), IEEE=x.dtype == torch.float32,
        )  # fmt: skip
    return y
