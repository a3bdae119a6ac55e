"""N:M kernels: mask selection, Bi-Mask permutation scoring and a compressed N:M matmul.

Each op is a ``torch.library.custom_op`` whose default (CPU) body is a pure-PyTorch
reference and whose CUDA body is a Triton kernel (slimkit.kernels' dispatch pattern).
The Triton launchers (``*_triton``) are public so the tests can run them on CPU tensors
under ``TRITON_INTERPRET=1`` and compare them against the references.

The references live in :mod:`nm_sparse.masks` (one source of truth); conventions:

* groups are ``m`` consecutive entries along the **last** dimension of a 2-D tensor;
* a mask keeps the ``n`` entries of largest ``|w|`` per group; ties go to the lower index
  (a stable descending sort), so the CPU and Triton paths agree bit for bit;
* ``m`` may be any integer in ``[1, 32]`` (not only powers of two): the kernels pad each
  group to the next power of two and mask the padding lanes out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nm_sparse.masks import SCORERS, nm_mask_reference, permutation_scores_reference
from nm_sparse.pattern import MAX_M, validate_nm
from slimkit.errors import BadInputError
from slimkit.kernels import autotune_configs, require_triton, use_triton

try:  # Triton is optional: without it every op runs its PyTorch reference.
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on Triton-less installs
    _HAS_TRITON = False

__all__ = [
    "MAX_M",
    "SCORERS",
    "compress",
    "decompress",
    "nm_mask",
    "nm_mask_reference",
    "nm_mask_triton",
    "nm_matmul",
    "nm_matmul_reference",
    "nm_matmul_triton",
    "permutation_scores",
    "permutation_scores_reference",
    "permutation_scores_triton",
]


# --------------------------------------------------------------------------- validation


def _check_pattern(n: int, m: int) -> None:
    validate_nm(n, m)


def _check_2d(w: Tensor, m: int, what: str = "weight") -> None:
    if w.dim() != 2:
        raise BadInputError(f"{what} must be 2-D, got shape {tuple(w.shape)}")
    if w.shape[1] % m != 0:
        raise BadInputError(f"{what} last dim {w.shape[1]} is not divisible by M={m}")
    if not w.is_floating_point():
        raise BadInputError(f"{what} must be floating point, got {w.dtype}")


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


# --------------------------------------------------------------------------- references


def compress(w2d: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """Compressed N:M storage: ``values`` [R, K*n/m] and within-group ``indices`` (uint8).

    Keeps the top-``n`` |w| of each group (so an already N:M-sparse weight is stored exactly;
    a denser one is pruned first). Indices are ascending inside each group.
    """
    _check_pattern(n, m)
    _check_2d(w2d, m)
    rows, cols = w2d.shape
    groups = cols // m
    keep = nm_mask(w2d, n, m).reshape(rows, groups, m)
    # positions of the kept entries, ascending: sort the boolean mask (kept first, stable)
    pos = torch.sort(keep.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :n]
    pos = torch.sort(pos, dim=-1).values
    values = torch.gather(w2d.reshape(rows, groups, m), -1, pos)
    return values.reshape(rows, groups * n).contiguous(), pos.to(torch.uint8).reshape(rows, groups * n).contiguous()


def decompress(values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """Dense [R, K] weight from :func:`compress` output (zeros at the pruned positions)."""
    _check_pattern(n, m)
    if values.shape != indices.shape or values.dim() != 2 or values.shape[1] % n != 0:
        raise BadInputError(
            f"values {tuple(values.shape)} / indices {tuple(indices.shape)} are not an {n}:{m} compressed pair"
        )
    rows, kept = values.shape
    groups = kept // n
    dense = torch.zeros(rows, groups, m, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, indices.reshape(rows, groups, n).long(), values.reshape(rows, groups, n))
    return dense.reshape(rows, groups * m)


def nm_matmul_reference(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """``x @ W.T`` for the compressed weight ``W`` (decompress, then a dense matmul)."""
    return x @ decompress(values, indices, n, m).to(x.dtype).t()


# --------------------------------------------------------------------------- Triton kernels

if _HAS_TRITON:

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
    def _nm_mask_kernel(
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
    def _perm_scores_kernel(
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
    def _nm_matmul_kernel(
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


def nm_mask_triton(w2d: Tensor, n: int, m: int) -> Tensor:
    """Triton launcher for :func:`nm_mask` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``)."""
    require_triton("nm_mask_triton")
    w = w2d.detach().contiguous()
    out = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    num_groups = w.numel() // m
    if num_groups:

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (triton.cdiv(num_groups, meta["BLOCK_G"]),)

        _nm_mask_kernel[grid](w, out, num_groups, N=n, M=m, M_PAD=_next_pow2(m))
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
            return (num_k, triton.cdiv(in_cols, meta["BLOCK_I"]))

        _perm_scores_kernel[grid](
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
            return (triton.cdiv(batch, meta["BLOCK_B"]), triton.cdiv(rows, meta["BLOCK_R"]))

        _nm_matmul_kernel[grid](
            xc, v, ix, y, batch, rows, groups, xc.stride(0), y.stride(0),
            N=n, M=m, M_PAD=_next_pow2(m), IEEE=x.dtype == torch.float32,
        )  # fmt: skip
    return y


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("nm_sparse::nm_mask", mutates_args=())
def _nm_mask_op(w2d: Tensor, n: int, m: int) -> Tensor:
    return nm_mask_reference(w2d, n, m)


@_nm_mask_op.register_kernel("cuda")
def _nm_mask_cuda(w2d: Tensor, n: int, m: int) -> Tensor:
    if use_triton(w2d) and _HAS_TRITON:
        return nm_mask_triton(w2d, n, m)
    return nm_mask_reference(w2d, n, m)


@_nm_mask_op.register_fake
def _nm_mask_fake(w2d: Tensor, n: int, m: int) -> Tensor:
    return torch.empty(w2d.shape, dtype=torch.bool, device=w2d.device)


@torch.library.custom_op("nm_sparse::permutation_scores", mutates_args=())
def _perm_scores_op(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str) -> Tensor:
    return permutation_scores_reference(w_abs_masked, perms, n, m, scorer)


@_perm_scores_op.register_kernel("cuda")
def _perm_scores_cuda(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str) -> Tensor:
    if use_triton(w_abs_masked, perms) and _HAS_TRITON:
        return permutation_scores_triton(w_abs_masked, perms, n, m, scorer)
    return permutation_scores_reference(w_abs_masked, perms, n, m, scorer)


@_perm_scores_op.register_fake
def _perm_scores_fake(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str) -> Tensor:
    return torch.empty(perms.shape[0], dtype=torch.float32, device=w_abs_masked.device)


@torch.library.custom_op("nm_sparse::nm_matmul", mutates_args=())
def _nm_matmul_op(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    return nm_matmul_reference(x, values, indices, n, m)


@_nm_matmul_op.register_kernel("cuda")
def _nm_matmul_cuda(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    if use_triton(x, values, indices) and _HAS_TRITON and m >= 2:
        return nm_matmul_triton(x, values, indices, n, m)
    return nm_matmul_reference(x, values, indices, n, m)


@_nm_matmul_op.register_fake
def _nm_matmul_fake(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    return x.new_empty(x.shape[0], values.shape[0])


def _nm_matmul_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, values, indices, n, m = inputs
    ctx.save_for_backward(x, values, indices)
    ctx.n, ctx.m = n, m


def _nm_matmul_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
    # dx = dy W ; dvalues = (dy^T x) gathered at the stored positions (the pattern is fixed).
    x, values, indices = ctx.saved_tensors
    n, m = ctx.n, ctx.m
    grad_x = grad_v = None
    if ctx.needs_input_grad[0]:
        grad_x = grad @ decompress(values, indices, n, m).to(grad.dtype)
    if ctx.needs_input_grad[1]:
        rows, kept = values.shape
        dw = (grad.t() @ x).reshape(rows, kept // n, m)
        grad_v = torch.gather(dw, -1, indices.reshape(rows, kept // n, n).long()).reshape(rows, kept)
        grad_v = grad_v.to(values.dtype)
    return grad_x, grad_v, None, None, None


_nm_matmul_op.register_autograd(_nm_matmul_backward, setup_context=_nm_matmul_setup)


# --------------------------------------------------------------------------- public API


def nm_mask(w2d: Tensor, n: int, m: int) -> Tensor:
    """Boolean N:M mask of a 2-D weight: top-``n`` |w| of each ``m`` consecutive entries per row."""
    _check_pattern(n, m)
    _check_2d(w2d, m)
    return torch.ops.nm_sparse.nm_mask(w2d.detach(), n, m)


def permutation_scores(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str = "kept") -> Tensor:
    """Scores ([K], float32) of ``K`` candidate row permutations for Bi-Mask's backward mask."""
    _check_pattern(n, m)
    if scorer not in SCORERS:
        raise BadInputError(f"unknown permutation scorer {scorer!r}; choose from {', '.join(SCORERS)}")
    if w_abs_masked.dim() != 2:
        raise BadInputError(f"weights must be 2-D, got shape {tuple(w_abs_masked.shape)}")
    if w_abs_masked.shape[0] % m != 0:
        raise BadInputError(f"output channels {w_abs_masked.shape[0]} are not divisible by M={m}")
    if perms.dim() != 2 or perms.shape[1] != w_abs_masked.shape[0]:
        raise BadInputError(f"perms must be [K, {w_abs_masked.shape[0]}], got {tuple(perms.shape)}")
    return torch.ops.nm_sparse.permutation_scores(w_abs_masked.detach(), perms.to(torch.int64), n, m, scorer)


def nm_matmul(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """``x @ W.T`` where ``W`` is stored compressed (:func:`compress`); any N:M with M <= 32.

    Differentiable in ``x`` and ``values`` (the pattern in ``indices`` is fixed).
    """
    _check_pattern(n, m)
    if x.dim() != 2:
        raise BadInputError(f"x must be 2-D [B, K], got shape {tuple(x.shape)}")
    if values.dim() != 2 or values.shape != indices.shape or values.shape[1] % n != 0:
        raise BadInputError(f"values/indices must be matching [R, K*{n}/{m}] tensors")
    if x.shape[1] != values.shape[1] // n * m:
        raise BadInputError(f"x has {x.shape[1]} features but the weight has {values.shape[1] // n * m}")
    return torch.ops.nm_sparse.nm_matmul(x, values, indices, n, m)
