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

from slimkit.kernels import l2_normalize_rows_triton, triton_available, use_triton
from slimkit.reference import l2_normalize_rows_reference

__all__ = ["l2_normalize_rows"]


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
