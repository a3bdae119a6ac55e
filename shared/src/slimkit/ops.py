"""Custom ops and the public dispatching functions (the kernel-file rule, layer 3).

Why: a ``torch.library.custom_op`` is what ``torch.compile`` and autograd see; its CPU body is
the reference (:mod:`slimkit.reference`) and its CUDA body the Triton launcher
(:mod:`slimkit.kernels`). The public function next to it sends CPU tensors straight to the
reference (no custom-op dispatch overhead, no second round of checks) and uses the op only
where Triton runs. Everything outside this trio imports from here, never from ``kernels``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from slimkit.kernels import (
    COSINE_TOPK_MAX_K,
    cosine_topk_triton,
    l2_normalize_rows_triton,
    triton_available,
    use_triton,
)
from slimkit.reference import cosine_topk_reference, l2_normalize_rows_reference, ordered_topk

__all__ = ["cosine_topk_dispatch", "cosine_topk_via_triton", "l2_normalize_rows"]


@torch.library.custom_op("slimkit::l2_normalize_rows", mutates_args=())
def _l2_normalize_rows_op(x: torch.Tensor, eps: float) -> torch.Tensor:
    return l2_normalize_rows_reference(x, eps)


@_l2_normalize_rows_op.register_fake
def _(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.register_kernel("slimkit::l2_normalize_rows", "cuda")
def _(x: torch.Tensor, eps: float) -> torch.Tensor:
    if triton_available():
        return l2_normalize_rows_triton(x, eps)
    return l2_normalize_rows_reference(x, eps)


def _l2_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.eps = inputs[1]


def _l2_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
    # Backward reuses the reference through autograd: the op is usually hot in inference only.
    (x,) = ctx.saved_tensors
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad(l2_normalize_rows_reference(xr, ctx.eps), xr, grad)
    return gx, None


_l2_normalize_rows_op.register_autograd(_l2_backward, setup_context=_l2_setup)


def l2_normalize_rows(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (norm floored at ``eps``).

    CPU tensors (without the interpreter) go straight to the reference; CUDA tensors, and CPU
    tensors under ``TRITON_INTERPRET=1``, go through the custom op ``slimkit::l2_normalize_rows``.
    """
    if use_triton(x):
        return _l2_normalize_rows_op(x, eps)
    return l2_normalize_rows_reference(x, eps)


# --------------------------------------------------------------------------- cosine top-k


def cosine_topk_via_triton(queries: torch.Tensor, keys: torch.Tensor, k: int, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`cosine_topk_dispatch`: normalise the queries once, run the blockwise
    kernel, merge its per-split candidates exactly; scores in the promoted input dtype, int64 indices."""
    dtype = torch.promote_types(queries.dtype, keys.dtype)
    qn = F.normalize(queries.to(dtype), dim=1)
    s, i = cosine_topk_triton(qn, keys.to(dtype), k, normalized=normalized)
    kk = min(k, keys.shape[0])
    scores, index = ordered_topk(s.flatten(1), i.flatten(1).long(), kk)
    return scores.to(dtype), index


@torch.library.custom_op("slimkit::cosine_topk", mutates_args=())
def _cosine_topk_op(queries: torch.Tensor, keys: torch.Tensor, k: int, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return cosine_topk_reference(queries, keys, k, normalized=normalized)


@_cosine_topk_op.register_fake
def _(queries: torch.Tensor, keys: torch.Tensor, k: int, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    kk = min(k, keys.shape[0])
    dtype = torch.promote_types(queries.dtype, keys.dtype)
    return queries.new_empty((queries.shape[0], kk), dtype=dtype), queries.new_empty((queries.shape[0], kk), dtype=torch.long)


@torch.library.register_kernel("slimkit::cosine_topk", "cuda")
def _(queries: torch.Tensor, keys: torch.Tensor, k: int, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if triton_available():
        return cosine_topk_via_triton(queries, keys, k, normalized)
    return cosine_topk_reference(queries, keys, k, normalized=normalized)


def cosine_topk_dispatch(
    queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096, normalized: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``[Q, D]`` queries and ``[N, D]`` keys to their cosine top-``k``: the Triton kernel for
    float CUDA tensors (``k <= 128``), the chunked reference everywhere else.

    Unlike the other ops, CPU tensors under ``TRITON_INTERPRET=1`` stay on the reference: the
    interpreter would make every kNN graph in the test suite crawl; the kernel's own tests call
    :func:`cosine_topk_via_triton` directly.
    """
    floats = (torch.float16, torch.float32, torch.bfloat16)
    if (
        queries.is_cuda and keys.is_cuda and queries.dtype in floats and keys.dtype in floats
        and keys.shape[0] > 0 and k <= COSINE_TOPK_MAX_K and use_triton(queries, keys)
    ):  # fmt: skip
        return _cosine_topk_op(queries, keys, k, normalized)
    return cosine_topk_reference(queries, keys, k, chunk=chunk, normalized=normalized)
