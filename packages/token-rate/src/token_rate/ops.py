"""Custom ops for the merge step and the public dispatching functions the patched blocks call.

Two ``torch.library`` custom ops:

* ``token_rate::best_match(src, dst) -> (sim, idx)``
* ``token_rate::merge(x, size, src, src_size, idx, mode) -> (x', size')``

Their CPU bodies are the references of :mod:`token_rate.reference` (behind the argument checks);
their CUDA bodies run the Triton kernels of :mod:`token_rate.kernels` when Triton is available and
the reference otherwise. ``merge`` has an analytic backward, so the fused op also works where
gradients are needed; matching is a discrete decision on a detached metric (as in the official
code), so ``best_match`` has no gradient.

The public :func:`best_match` and :func:`merge` dispatch: CUDA tensors go through the custom ops
(Triton), CPU tensors call the references *directly*, without the op dispatch and the argument
checks, which is what the ops' CPU bodies compute anyway. :func:`best_match_op` and
:func:`merge_op` always go through the custom ops (with the checks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.kernels import use_triton
from token_rate.kernels import best_match_triton, merge_triton
from token_rate.reference import (
    MERGE_MODES,
    best_match_reference,
    check_match_shapes,
    check_merge_args,
    merge_reference,
    merge_source,
    merge_weights,
    take_rows,
)

__all__ = ["best_match", "merge", "best_match_op", "merge_op", "merge_source", "take_rows", "MERGE_MODES"]


def _best_match_ref(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`token_rate.reference.best_match_reference` with the op's shape checks."""
    check_match_shapes(src, dst)
    return best_match_reference(src, dst)


def _merge_ref(
    x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str = "mean"
) -> tuple[Tensor, Tensor]:
    """:func:`token_rate.reference.merge_reference` with the op's shape checks (fp32 inside, x's dtype out)."""
    check_merge_args(x, size, src, src_size, idx, mode)
    return merge_reference(x, size, src, src_size, idx, mode)


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("token_rate::best_match", mutates_args=())
def _best_match_op(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    return _best_match_ref(src, dst)


@_best_match_op.register_kernel("cuda")
def _best_match_cuda(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    if use_triton(src, dst):
        return best_match_triton(src, dst)
    return _best_match_ref(src, dst)


@_best_match_op.register_fake
def _best_match_fake(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    shape = (src.shape[0], src.shape[1])
    return src.new_empty(shape, dtype=torch.float32), src.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("token_rate::merge", mutates_args=())
def _merge_op(x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    return _merge_ref(x, size, src, src_size, idx, mode)


@_merge_op.register_kernel("cuda")
def _merge_cuda(
    x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str
) -> tuple[Tensor, Tensor]:
    if use_triton(x, src):
        return merge_triton(x, size, src, src_size, idx, mode)
    return _merge_ref(x, size, src, src_size, idx, mode)


@_merge_op.register_fake
def _merge_fake(
    x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(size)


def _merge_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, size, src, src_size, idx, mode = inputs
    ctx.mode = mode
    ctx.save_for_backward(x, size, src, src_size, idx, output[0])


def _merge_backward(ctx: Any, grad_out: Tensor | None, grad_size: Tensor | None) -> tuple[Tensor | None, ...]:
    """Analytic backward: out[d] = (w_d x_d + sum_s w_s src_s) / W_d and size'[d] = size_d + sum_s size_s."""
    x, size, src, src_size, idx, out = ctx.saved_tensors
    mode = ctx.mode
    w_dst, w_src = merge_weights(size, src_size, mode)
    index = idx.unsqueeze(-1)
    den = w_dst.scatter_add(1, index, w_src)  # W_d, [B, Nd, 1]
    g_x = g_src = g_size = g_ssize = None
    if grad_out is not None:
        g = grad_out.float() / den
        g_at_src = g.gather(1, index.expand(-1, -1, x.shape[2]))
        g_x = (g * w_dst).to(x.dtype)
        g_src = (g_at_src * w_src).to(src.dtype)
        if mode == "weighted":
            g_size = (g * (x.float() - out.float())).sum(-1, keepdim=True)
            out_at_src = out.float().gather(1, index.expand(-1, -1, x.shape[2]))
            g_ssize = (g_at_src * (src.float() - out_at_src)).sum(-1, keepdim=True)
    if grad_size is not None:
        gs = grad_size.float()
        g_size = gs if g_size is None else g_size + gs
        g_ssize = gs.gather(1, index) if g_ssize is None else g_ssize + gs.gather(1, index)
    return (
        g_x,
        None if g_size is None else g_size.to(size.dtype),
        g_src,
        None if g_ssize is None else g_ssize.to(src_size.dtype),
        None,
        None,
    )


_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup_context)


def best_match_op(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """``token_rate::best_match`` on detached inputs (always through the custom op, with its checks)."""
    return _best_match_op(src.detach(), dst.detach())  # type: ignore[no-any-return]


def merge_op(
    x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str = "mean"
) -> tuple[Tensor, Tensor]:
    """``token_rate::merge`` (always through the custom op, with its checks; differentiable)."""
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    return _merge_op(x, size, src, src_size, idx.to(torch.int64), mode)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------
# Public dispatching functions
# ----------------------------------------------------------------------------------------------


def best_match(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Most cosine-similar destination for each source token: ``(sim [B,Ns] fp32, idx [B,Ns] int64)``.

    CUDA: the fused Triton kernel through ``token_rate::best_match``; CPU: the reference, directly.
    No gradient: the matching is a discrete choice on a detached metric (official DiffRate).
    """
    if src.is_cuda:
        return best_match_op(src, dst)
    return best_match_reference(src, dst)


def merge(x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor,
          mode: str = "mean") -> tuple[Tensor, Tensor]:
    """Fold ``src`` tokens into destinations ``idx`` of ``x``; returns ``(new_x, new_size)``.

    ``mode="mean"``: unweighted mean of each destination with all its sources (official DiffRate);
    ``mode="weighted"``: size-weighted mean (ToMe). Sizes add in both modes. Differentiable.
    CUDA: the fused Triton kernel through ``token_rate::merge``; CPU: the reference, directly.
    """
    if x.is_cuda:
        return merge_op(x, size, src, src_size, idx, mode)
    return merge_reference(x, size, src, src_size, idx, mode)
