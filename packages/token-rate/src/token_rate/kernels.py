"""Triton kernels for DiffRate's merge step, built lazily on first use and cached.

* :func:`best_match_triton` ``(src, dst) -> (sim, idx)``: for every source token, the cosine
  similarity to its most similar destination token and that destination's index. The kernel
  normalizes on the fly and keeps a running max/argmax over destination tiles, so the ``Ns x Nd``
  similarity matrix is never materialized.
* :func:`merge_triton` ``(x, size, src, src_size, idx, mode) -> (x', size')``: every source token
  is folded into its destination ``idx``; ``mode="mean"`` is the official DiffRate unweighted mean,
  ``mode="weighted"`` ToMe's size-weighted average. Sizes add in both modes. The kernel is a
  deterministic segmented reduction (a one-hot ``dst x src`` tile times the source tile), so it
  needs no atomics and gives the same bits run to run.

Triton only: this module holds the kernels (built by :func:`slimkit.kernels.lazy_kernel` on first
use, so importing it never imports Triton) and their launchers, nothing else. The launchers run on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check them against
:mod:`token_rate.reference`). The custom ops and the public dispatching functions are in
:mod:`token_rate.ops`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.kernels import autotune_configs, lazy_kernel, require_triton
from token_rate.reference import NORM_EPS, check_match_shapes, check_merge_args

__all__ = ["best_match_triton", "merge_triton"]


@lazy_kernel
def _best_match_kernel() -> Any:
    """Build the kernel on first use, once (Triton is optional; autotune configs depend on the interpreter)."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_S": 32, "BLOCK_D": 32, "BLOCK_C": 32}, num_warps=4),
                triton.Config({"BLOCK_S": 64, "BLOCK_D": 64, "BLOCK_C": 32}, num_warps=4),
                triton.Config({"BLOCK_S": 64, "BLOCK_D": 32, "BLOCK_C": 64}, num_warps=4),
                triton.Config({"BLOCK_S": 128, "BLOCK_D": 64, "BLOCK_C": 32}, num_warps=8),
            ]
        ),
        key=["NS", "ND", "C"],
    )
    @triton.jit
    def kernel(
        src_ptr, dst_ptr, sim_ptr, idx_ptr,
        NS, ND, C,
        s_sb, s_sn, s_sc,
        d_sb, d_sn, d_sc,
        o_sb, o_sn,
        EPS: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
        s_ok = offs_s < NS
        src_base = src_ptr + b * s_sb
        dst_base = dst_ptr + b * d_sb

        # Source norms once, up front.
        sq = tl.zeros([BLOCK_S], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            m = s_ok[:, None] & (offs_c[None, :] < C)
            v = tl.load(src_base + offs_s[:, None] * s_sn + offs_c[None, :] * s_sc, mask=m, other=0.0).to(tl.float32)
            sq += tl.sum(v * v, axis=1)
        inv_s = 1.0 / tl.maximum(tl.sqrt(sq), EPS)

        best = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
        best_idx = tl.zeros([BLOCK_S], dtype=tl.int64)
        for d0 in range(0, ND, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < ND
            acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
            dsq = tl.zeros([BLOCK_D], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                c_ok = offs_c < C
                a = tl.load(
                    src_base + offs_s[:, None] * s_sn + offs_c[None, :] * s_sc,
                    mask=s_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                # dst tile loaded transposed: [BLOCK_C, BLOCK_D]
                bt = tl.load(
                    dst_base + offs_d[None, :] * d_sn + offs_c[:, None] * d_sc,
                    mask=d_ok[None, :] & c_ok[:, None],
                    other=0.0,
                )
                if IEEE:
                    acc += tl.dot(a.to(tl.float32), bt.to(tl.float32), input_precision="ieee")
                else:
                    acc += tl.dot(a, bt)
                bf = bt.to(tl.float32)
                dsq += tl.sum(bf * bf, axis=0)
            inv_d = 1.0 / tl.maximum(tl.sqrt(dsq), EPS)
            sim = acc * inv_s[:, None] * inv_d[None, :]
            sim = tl.where(d_ok[None, :], sim, float("-inf"))
            tile_best = tl.max(sim, axis=1)
            tile_idx = tl.argmax(sim, axis=1, tie_break_left=True).to(tl.int64) + d0
            # Strictly greater: on a tie the earlier tile (lower index) wins, like torch.max.
            take = tile_best > best
            best = tl.where(take, tile_best, best)
            best_idx = tl.where(take, tile_idx, best_idx)

        tl.store(sim_ptr + b * o_sb + offs_s * o_sn, best, mask=s_ok)
        tl.store(idx_ptr + b * o_sb + offs_s * o_sn, best_idx, mask=s_ok)

    return kernel


@lazy_kernel
def _merge_kernel() -> Any:
    """Build the kernel on first use, once (Triton is optional; autotune configs depend on the interpreter)."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [
                triton.Config({"BLOCK_D": 32, "BLOCK_S": 32, "BLOCK_C": 32}, num_warps=4),
                triton.Config({"BLOCK_D": 64, "BLOCK_S": 32, "BLOCK_C": 64}, num_warps=4),
                triton.Config({"BLOCK_D": 32, "BLOCK_S": 64, "BLOCK_C": 128}, num_warps=4),
                triton.Config({"BLOCK_D": 64, "BLOCK_S": 64, "BLOCK_C": 64}, num_warps=8),
            ]
        ),
        key=["ND", "NS", "C"],
    )
    @triton.jit
    def kernel(
        x_ptr, size_ptr, src_ptr, ssize_ptr, idx_ptr, out_ptr, osize_ptr,
        ND, NS, C,
        x_sb, x_sn, x_sc,
        z_sb, z_sn,
        s_sb, s_sn, s_sc,
        zs_sb, zs_sn,
        i_sb, i_sn,
        WEIGHTED: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        pid_c = tl.program_id(2)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        d_ok = offs_d < ND
        c_ok = offs_c < C

        dsize = tl.load(size_ptr + b * z_sb + offs_d * z_sn, mask=d_ok, other=0.0).to(tl.float32)
        if WEIGHTED:
            w_dst = dsize
        else:
            w_dst = tl.where(d_ok, 1.0, 0.0)
        xt = tl.load(
            x_ptr + b * x_sb + offs_d[:, None] * x_sn + offs_c[None, :] * x_sc,
            mask=d_ok[:, None] & c_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc = xt * w_dst[:, None]
        wsum = w_dst
        ssum = dsize
        for s0 in range(0, NS, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            s_ok = offs_s < NS
            tgt = tl.load(idx_ptr + b * i_sb + offs_s * i_sn, mask=s_ok, other=-1)
            ssz = tl.load(ssize_ptr + b * zs_sb + offs_s * zs_sn, mask=s_ok, other=0.0).to(tl.float32)
            hit = (tgt[None, :] == offs_d[:, None]) & s_ok[None, :]
            if WEIGHTED:
                w = tl.where(hit, ssz[None, :], 0.0)
            else:
                w = tl.where(hit, 1.0, 0.0)
            st = tl.load(
                src_ptr + b * s_sb + offs_s[:, None] * s_sn + offs_c[None, :] * s_sc,
                mask=s_ok[:, None] & c_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.dot(w, st, input_precision="ieee")
            wsum += tl.sum(w, axis=1)
            ssum += tl.sum(tl.where(hit, ssz[None, :], 0.0), axis=1)

        safe = tl.where(d_ok, wsum, 1.0)
        out = acc / safe[:, None]
        tl.store(
            out_ptr + b * x_sb + offs_d[:, None] * x_sn + offs_c[None, :] * x_sc,
            out.to(out_ptr.dtype.element_ty),
            mask=d_ok[:, None] & c_ok[None, :],
        )
        if pid_c == 0:
            tl.store(osize_ptr + b * z_sb + offs_d * z_sn, ssum.to(osize_ptr.dtype.element_ty), mask=d_ok)

    return kernel


def best_match_triton(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Launch the fused similarity/argmax kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    require_triton("best_match_triton")
    import triton

    check_match_shapes(src, dst)
    bsz, ns, c = src.shape
    nd = dst.shape[1]
    sim = torch.empty(bsz, ns, device=src.device, dtype=torch.float32)
    idx = torch.empty(bsz, ns, device=src.device, dtype=torch.int64)
    if ns == 0 or bsz == 0:
        return sim, idx
    if dst.dtype != src.dtype:
        dst = dst.to(src.dtype)

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (bsz, triton.cdiv(ns, meta["BLOCK_S"]))

    _best_match_kernel()[grid](
        src, dst, sim, idx,
        ns, nd, c,
        src.stride(0), src.stride(1), src.stride(2),
        dst.stride(0), dst.stride(1), dst.stride(2),
        sim.stride(0), sim.stride(1),
        EPS=NORM_EPS,
        IEEE=src.dtype == torch.float32,
    )  # fmt: skip
    return sim, idx


def merge_triton(
    x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str = "mean"
) -> tuple[Tensor, Tensor]:
    """Launch the fused, deterministic scatter-merge kernel (accumulates in fp32)."""
    require_triton("merge_triton")
    import triton

    check_merge_args(x, size, src, src_size, idx, mode)
    bsz, nd, c = x.shape
    ns = src.shape[1]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    new_size = torch.empty_like(size, memory_format=torch.contiguous_format)
    if bsz == 0 or nd == 0:
        return out, new_size
    # The kernel reads ``size`` and writes ``new_size`` (and ``x`` / ``out``) with the same strides, so
    # both inputs must share their outputs' contiguous layout (callers pass strided views).
    x = x.contiguous()
    size = size.contiguous()
    src = src.to(x.dtype)
    idx = idx.to(torch.int64)

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (bsz, triton.cdiv(nd, meta["BLOCK_D"]), triton.cdiv(c, meta["BLOCK_C"]))

    _merge_kernel()[grid](
        x, size, src, src_size, idx, out, new_size,
        nd, ns, c,
        x.stride(0), x.stride(1), x.stride(2),
        size.stride(0), size.stride(1),
        src.stride(0), src.stride(1), src.stride(2),
        src_size.stride(0), src_size.stride(1),
        idx.stride(0), idx.stride(1),
        WEIGHTED=mode == "weighted",
    )  # fmt: skip
    return out, new_size
