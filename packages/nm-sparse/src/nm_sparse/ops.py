"""Custom ops and the public dispatching functions: ``nm_mask``, ``permutation_scores``, ``nm_matmul``.

Each op is a ``torch.library.custom_op`` (``nm_sparse::nm_mask``, ``nm_sparse::permutation_scores``,
``nm_sparse::nm_matmul``) whose default (CPU) body is the pure-PyTorch reference of
:mod:`nm_sparse.reference` and whose CUDA body is the Triton launcher of :mod:`nm_sparse.kernels`.

The dispatching functions validate their arguments once (one-line ``BadInputError``), then
call the reference **directly** for CPU tensors (no custom-op round trip, so an SR-STE forward
on CPU checks its arguments once) and go through the custom op otherwise (CUDA, ``torch.compile``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nm_sparse.kernels import nm_mask_triton, nm_matmul_triton, permutation_scores_triton
from nm_sparse.reference import (
    MAX_M,
    SCORERS,
    check_2d,
    check_pattern,
    compress,
    decompress,
    nm_mask_reference,
    nm_mask_unchecked,
    nm_matmul_reference,
    permutation_scores_reference,
)
from slimkit.errors import BadInputError
from slimkit.kernels import use_triton

__all__ = [
    "MAX_M",
    "SCORERS",
    "compress",
    "decompress",
    "nm_mask",
    "nm_matmul",
    "permutation_scores",
]


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("nm_sparse::nm_mask", mutates_args=())
def _nm_mask_op(w2d: Tensor, n: int, m: int) -> Tensor:
    return nm_mask_reference(w2d, n, m)


@_nm_mask_op.register_kernel("cuda")
def _nm_mask_cuda(w2d: Tensor, n: int, m: int) -> Tensor:
    if use_triton(w2d):
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
    if use_triton(w_abs_masked, perms):
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
    if use_triton(x, values, indices) and m >= 2:
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


def _on_cpu(*tensors: Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


# --------------------------------------------------------------------------- public API


def nm_mask(w2d: Tensor, n: int, m: int) -> Tensor:
    """Boolean N:M mask of a 2-D weight: top-``n`` |w| of each ``m`` consecutive entries per row.

    CPU: the reference, called directly; CUDA: the Triton custom op. Non-float tensors
    always take the reference.
    """
    check_pattern(n, m)
    w = w2d.detach()
    if not w.is_floating_point():
        return nm_mask_reference(w, n, m)
    check_2d(w, m)
    if _on_cpu(w):
        return nm_mask_unchecked(w, n, m)
    return torch.ops.nm_sparse.nm_mask(w.contiguous(), n, m).bool()


def permutation_scores(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str = "kept") -> Tensor:
    """Scores ([K], float32) of ``K`` candidate row permutations for Bi-Mask's backward mask."""
    check_pattern(n, m)
    if scorer not in SCORERS:
        raise BadInputError(f"unknown permutation scorer {scorer!r}; choose from {', '.join(SCORERS)}")
    if w_abs_masked.dim() != 2:
        raise BadInputError(f"weights must be 2-D, got shape {tuple(w_abs_masked.shape)}")
    if w_abs_masked.shape[0] % m != 0:
        raise BadInputError(f"output channels {w_abs_masked.shape[0]} are not divisible by M={m}")
    if perms.dim() != 2 or perms.shape[1] != w_abs_masked.shape[0]:
        raise BadInputError(f"perms must be [K, {w_abs_masked.shape[0]}], got {tuple(perms.shape)}")
    a, p = w_abs_masked.detach(), perms.to(torch.int64)
    if _on_cpu(a, p):
        return permutation_scores_reference(a, p, n, m, scorer)
    return torch.ops.nm_sparse.permutation_scores(a.contiguous(), p.contiguous(), n, m, scorer)


def nm_matmul(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """``x @ W.T`` where ``W`` is stored compressed (:func:`compress`); any N:M with M <= 32.

    Differentiable in ``x`` and ``values`` (the pattern in ``indices`` is fixed).
    """
    check_pattern(n, m)
    if x.dim() != 2:
        raise BadInputError(f"x must be 2-D [B, K], got shape {tuple(x.shape)}")
    if values.dim() != 2 or values.shape != indices.shape or values.shape[1] % n != 0:
        raise BadInputError(f"values/indices must be matching [R, K*{n}/{m}] tensors")
    if x.shape[1] != values.shape[1] // n * m:
        raise BadInputError(f"x has {x.shape[1]} features but the weight has {values.shape[1] // n * m}")
    if _on_cpu(x, values, indices):
        return nm_matmul_reference(x, values, indices, n, m)
    return torch.ops.nm_sparse.nm_matmul(x, values, indices, n, m)
