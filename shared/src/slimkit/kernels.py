"""The kernel-dispatch pattern every package follows, with one small worked example.

A hot path is a ``torch.library.custom_op`` whose default body is the pure-PyTorch
reference (so CPU, ``torch.compile`` and autograd-free inference all work) and whose
CUDA kernel is Triton. Tests call the Triton launcher directly on CPU tensors with
``TRITON_INTERPRET=1``, where autotuning is cut to one config because benchmarking
configs needs a real driver.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_available() -> bool:
    """Triton importable and a CUDA device present (the interpreter is checked separately)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a launcher should run Triton on these tensors (CUDA, or CPU under the interpreter)."""
    if not tensors:
        return False
    if all(t.is_cuda for t in tensors):
        return triton_available()
    return interpret_mode() and triton_importable() and all(t.device.type == "cpu" for t in tensors)


def autotune_configs(configs: Sequence[T]) -> list[T]:
    """All configs on a GPU; only the first under the interpreter, which cannot benchmark."""
    if not configs:
        raise ValueError("at least one autotune config is required")
    return [configs[0]] if interpret_mode() else list(configs)


def require_triton(name: str) -> None:
    """Clear error for calling a Triton launcher where it cannot run."""
    if not triton_importable():
        raise RuntimeError(f"{name} needs Triton, which is not installed")


# --------------------------------------------------------------------------- example
# Row-wise L2 normalization: cosine-similarity matching (token merging) and
# magnitude scoring both start with it, and it is small enough to read in one go.


def l2_normalize_rows_reference(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along the last dim, accumulated in fp32."""
    x32 = x.float()
    norm = x32.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (x32 / norm).to(x.dtype)


@functools.cache
def _l2_kernel() -> Any:
    import triton
    import triton.language as tl

    configs = autotune_configs(
        [
            triton.Config({"BLOCK_ROWS": 4}, num_warps=4),
            triton.Config({"BLOCK_ROWS": 16}, num_warps=4),
            triton.Config({"BLOCK_ROWS": 1}, num_warps=2),
        ]
    )

    @triton.autotune(configs=configs, key=["n_cols"])
    @triton.jit
    def kernel(x_ptr, out_ptr, n_rows, n_cols, eps, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):  # type: ignore[no-untyped-def]
        pid = tl.program_id(0)
        rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.arange(0, BLOCK_COLS)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        offsets = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        norm = tl.maximum(norm, eps)
        y = x / norm[:, None]
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)

    return kernel


def l2_normalize_rows_triton(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton launcher (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``)."""
    import triton

    require_triton("l2_normalize_rows_triton")
    if x.dtype not in (torch.float16, torch.float32, torch.bfloat16):
        raise TypeError(f"unsupported dtype {x.dtype}")
    x2 = x.contiguous().view(-1, x.shape[-1]) if x.numel() else x.reshape(-1, max(1, x.shape[-1]))
    out = torch.empty_like(x2)
    n_rows, n_cols = x2.shape
    if n_rows == 0:
        return out.view_as(x)
    block_cols = triton.next_power_of_2(n_cols)

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_ROWS"]),)

    _l2_kernel()[grid](x2, out, n_rows, n_cols, eps, BLOCK_COLS=block_cols)
    return out.view_as(x)


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
    """Public entry point: Triton on CUDA, the PyTorch reference elsewhere."""
    return _l2_normalize_rows_op(x, eps)

