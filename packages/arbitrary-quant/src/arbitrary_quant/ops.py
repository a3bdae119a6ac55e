"""Custom ops and the public dispatching functions: ``packed_matmul``, ``binary_matmul``, ``binary_linear``,
``dfsq_quantize``.

Each op is a ``torch.library.custom_op`` (``arbitrary_quant::packed_matmul``, ``::binary_matmul``,
``::binary_linear``, ``::dfsq_quantize``) whose default (CPU) body is the pure-PyTorch reference of
:mod:`arbitrary_quant.reference` and whose CUDA body is the Triton launcher of
:mod:`arbitrary_quant.kernels` (the reference where Triton is missing or the dtype is not one the
kernel takes, e.g. float64).

The dispatching functions validate their arguments once (one-line ``BadInputError``), then call the
reference **directly** for CPU tensors (no custom-op round trip) and go through the custom op
otherwise (CUDA, ``torch.compile``). Gradients: ``packed_matmul`` is differentiable in ``x``,
``scale`` and ``zero`` (the codes are integers); ``dfsq_quantize`` is straight-through (identity),
like the reference; the binary ops are inference-only (train with :mod:`slimkit.quant`'s STEs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from arbitrary_quant.kernels import (
    FLOAT_DTYPES,
    binary_linear_triton,
    binary_matmul_triton,
    dfsq_quantize_triton,
    packed_matmul_triton,
)
from arbitrary_quant.reference import (
    binary_linear_reference,
    binary_matmul_reference,
    check_binary_linear_args,
    check_binary_matmul_args,
    check_dfsq_args,
    check_packed_matmul_args,
    dequantize_packed,
    dfsq_quantize_reference,
    packed_matmul_reference,
)
from slimkit.kernels import use_triton

__all__ = ["binary_linear", "binary_matmul", "dfsq_quantize", "packed_matmul"]


def _on_cpu(*tensors: Tensor | None) -> bool:
    return all(t.device.type == "cpu" for t in tensors if t is not None)


def _opt(*tensors: Tensor | None) -> tuple[Tensor, ...]:
    return tuple(t for t in tensors if t is not None)


# --------------------------------------------------------------------------- packed k-bit matmul


@torch.library.custom_op("arbitrary_quant::packed_matmul", mutates_args=())
def _packed_matmul_op(
    x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int, signed: bool
) -> Tensor:
    return packed_matmul_reference(x, w_packed, scale, zero, bits, signed)


@_packed_matmul_op.register_kernel("cuda")
def _packed_matmul_cuda(
    x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int, signed: bool
) -> Tensor:
    if x.dtype in FLOAT_DTYPES and use_triton(x, w_packed, *_opt(scale, zero)):
        return packed_matmul_triton(x, w_packed, scale, zero, bits, signed)
    return packed_matmul_reference(x, w_packed, scale, zero, bits, signed)


@_packed_matmul_op.register_fake
def _packed_matmul_fake(
    x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int, signed: bool
) -> Tensor:
    return x.new_empty(x.shape[0], w_packed.shape[0])


def _packed_matmul_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, w_packed, scale, zero, bits, signed = inputs
    ctx.save_for_backward(x, w_packed, scale, zero)
    ctx.bits, ctx.signed = bits, signed


def _packed_matmul_backward(
    ctx: Any, grad: Tensor
) -> tuple[Tensor | None, None, Tensor | None, Tensor | None, None, None]:
    # y = x @ W.T with W = (q - zero) * scale:  dx = dy @ W,  dW = dy.T @ x,
    # dscale[n] = sum_k dW[n, k] (q - zero)[n, k],  dzero[n] = -scale[n] sum_k dW[n, k].
    x, w_packed, scale, zero = ctx.saved_tensors
    acc = torch.promote_types(x.dtype, torch.float32)
    k = x.shape[1]
    g = grad.to(acc)
    gx = gs = gz = None
    if ctx.needs_input_grad[0]:
        w = dequantize_packed(w_packed, scale, zero, ctx.bits, k, ctx.signed).to(x.dtype).to(acc)
        gx = (g @ w).to(x.dtype)
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        gw = g.t() @ x.to(acc)
        if ctx.needs_input_grad[2]:
            centred = dequantize_packed(w_packed, torch.ones_like(scale), zero, ctx.bits, k, ctx.signed)
            gs = (gw * centred.to(acc)).sum(1).to(scale.dtype)
        if ctx.needs_input_grad[3]:
            gz = (-(gw.sum(1) * scale.to(acc))).to(zero.dtype)
    return gx, None, gs, gz, None, None


_packed_matmul_op.register_autograd(_packed_matmul_backward, setup_context=_packed_matmul_setup)


def packed_matmul(
    x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None = None, bits: int = 4, signed: bool = False
) -> Tensor:
    """``x @ ((unpack(w_packed) - zero) * scale).T`` for k-bit codes packed along K (:mod:`slimkit.packing`).

    ``x [..., K]`` float; ``w_packed [N, ceil(K / (32 // bits))]`` int32 (``pack_bits(codes, bits, signed)``
    of the ``[N, K]`` integer weight); ``scale`` / ``zero`` ``[N]`` per output channel (``zero=None``:
    no zero point). Returns ``[..., N]`` in ``x``'s dtype. CPU: the reference, directly; CUDA: the
    Triton custom op, which unpacks in registers (no dequantized weight in memory).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x
    check_packed_matmul_args(x2, w_packed, scale, zero, bits)
    if _on_cpu(x2, w_packed, scale, zero):
        y = packed_matmul_reference(x2, w_packed, scale, zero, bits, signed)
    else:
        y = torch.ops.arbitrary_quant.packed_matmul(x2, w_packed, scale, zero, bits, bool(signed))
    return y.reshape(*lead, w_packed.shape[0])


# --------------------------------------------------------------------------- binary GEMM / linear


@torch.library.custom_op("arbitrary_quant::binary_matmul", mutates_args=())
def _binary_matmul_op(a_packed: Tensor, b_packed: Tensor, k: int) -> Tensor:
    return binary_matmul_reference(a_packed, b_packed, k)


@_binary_matmul_op.register_kernel("cuda")
def _binary_matmul_cuda(a_packed: Tensor, b_packed: Tensor, k: int) -> Tensor:
    if use_triton(a_packed, b_packed):
        return binary_matmul_triton(a_packed, b_packed, k)
    return binary_matmul_reference(a_packed, b_packed, k)


@_binary_matmul_op.register_fake
def _binary_matmul_fake(a_packed: Tensor, b_packed: Tensor, k: int) -> Tensor:
    return a_packed.new_empty(a_packed.shape[0], b_packed.shape[0], dtype=torch.int32)


@torch.library.custom_op("arbitrary_quant::binary_linear", mutates_args=())
def _binary_linear_op(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> Tensor:
    return binary_linear_reference(x, w_packed, alpha, k)


@_binary_linear_op.register_kernel("cuda")
def _binary_linear_cuda(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> Tensor:
    if x.dtype in FLOAT_DTYPES and use_triton(x, w_packed, *_opt(alpha)):
        return binary_linear_triton(x, w_packed, alpha, k)
    return binary_linear_reference(x, w_packed, alpha, k)


@_binary_linear_op.register_fake
def _binary_linear_fake(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> Tensor:
    return x.new_empty(x.shape[0], w_packed.shape[0])


def binary_matmul(a_packed: Tensor, b_packed: Tensor, k: int) -> Tensor:
    """int32 ``[M, N]`` = ``sum_k sign_a * sign_b`` = ``K - 2 * popcount(a XOR b)`` over the first ``k`` bits.

    ``a_packed [M, ceil(k / 32)]``, ``b_packed [N, ceil(k / 32)]``: :func:`slimkit.packing.pack_signs`
    words (bit 1 = ``+1``, ``sign(0) = +1``); padding bits of the last word are ignored.
    """
    check_binary_matmul_args(a_packed, b_packed, k)
    if _on_cpu(a_packed, b_packed):
        return binary_matmul_reference(a_packed, b_packed, k)
    return torch.ops.arbitrary_quant.binary_matmul(a_packed, b_packed, k)  # type: ignore[no-any-return]


def binary_linear(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> Tensor:
    """XNOR-Net linear ``(sign(x) @ sign(W).T) * alpha`` (``sign(0) = +1``): ``x [..., K]`` -> ``[..., N]``.

    ``w_packed [N, ceil(K / 32)]`` are ``pack_signs(W)`` words, ``alpha [N]`` the per-output-channel
    scale (``None``: 1). Inference only (no gradient; train with :mod:`slimkit.quant`'s sign STEs). On
    CUDA the kernel packs ``sign(x)`` in registers, so no packed copy of ``x`` is written.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x
    check_binary_linear_args(x2, w_packed, alpha, k)
    x2 = x2.detach()
    alpha = None if alpha is None else alpha.detach()
    if _on_cpu(x2, w_packed, alpha):
        y = binary_linear_reference(x2, w_packed, alpha, k)
    else:
        y = torch.ops.arbitrary_quant.binary_linear(x2, w_packed, alpha, k)
    return y.reshape(*lead, w_packed.shape[0])


# --------------------------------------------------------------------------- DFSQ quantizer


@torch.library.custom_op("arbitrary_quant::dfsq_quantize", mutates_args=())
def _dfsq_op(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    return dfsq_quantize_reference(x, points, post_relu)


@_dfsq_op.register_kernel("cuda")
def _dfsq_cuda(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    if x.dtype in FLOAT_DTYPES and use_triton(x, points):
        return dfsq_quantize_triton(x, points, post_relu)
    return dfsq_quantize_reference(x, points, post_relu)


@_dfsq_op.register_fake
def _dfsq_fake(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    return torch.empty_like(x)


def _dfsq_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    pass


def _dfsq_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    # Straight-through: d x_hat / d x = 1 everywhere, exactly the reference's x + (x_hat - x).detach().
    return grad, None, None


_dfsq_op.register_autograd(_dfsq_backward, setup_context=_dfsq_setup)


def dfsq_quantize(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    """DFSQ activation fake-quant of ``x [N, C, H, W]``: per-(sample, channel) normalize, nearest point, de-normalize.

    ``points``: ``[C, P]`` rows sorted ascending (or a shared ``[P]`` set). Straight-through (identity)
    gradient. CPU: :func:`arbitrary_quant.reference.dfsq_quantize_reference`, directly; CUDA: the fused
    Triton kernel (one program per (sample, channel) row) through ``arbitrary_quant::dfsq_quantize``.
    """
    check_dfsq_args(x, points)
    if _on_cpu(x, points):
        return dfsq_quantize_reference(x, points, post_relu)
    return torch.ops.arbitrary_quant.dfsq_quantize(x, points.to(x.device), bool(post_relu))  # type: ignore[no-any-return]
