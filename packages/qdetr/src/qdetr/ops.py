"""Custom ops and the public dispatching functions: ``match_score`` and ``aligned_quantize``.

Each op is a ``torch.library.custom_op`` (``qdetr::match_score``, ``qdetr::aligned_quantize``) whose
default (CPU) body is the pure-PyTorch reference of :mod:`qdetr.reference` and whose CUDA body is
the Triton launcher of :mod:`qdetr.kernels` (the reference where Triton is missing, the dtype is
not one the kernel takes, e.g. float64, or the row is longer than ``MAX_ALIGNED_D``). Being custom
ops, they stay single opaque nodes under ``torch.compile`` (``register_fake`` gives the shapes).

The dispatching functions validate their arguments once (one-line ``BadInputError``, shapes and
types only, so no GPU sync), then call the reference **directly** for CPU tensors (no custom-op
round trip) and go through the custom op otherwise. Both are forward-only: inputs are detached
and outputs never require grad. ``match_score`` ranks box pairs under ``no_grad`` in query
matching; ``aligned_quantize`` is the inference path of an aligned, quantized query (train with
the torch DA module and :mod:`slimkit.quant`'s LSQ, which compute the same forward values).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qdetr.kernels import FLOAT_DTYPES, MAX_ALIGNED_D, aligned_quantize_triton, match_score_triton
from qdetr.reference import (
    DA_EPS,
    MU_GIOU,
    MU_L1,
    aligned_quantize_reference,
    check_aligned_quantize_args,
    check_match_score_args,
    compute_dtype,
    match_score_reference,
)
from slimkit.kernels import use_triton

__all__ = ["aligned_quantize", "match_score"]


def _on_cpu(*tensors: Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


# --------------------------------------------------------------------------- FQM pairing score


@torch.library.custom_op("qdetr::match_score", mutates_args=())
def _match_score_op(student: Tensor, teacher: Tensor, mu_giou: float, mu_l1: float) -> Tensor:
    return match_score_reference(student, teacher, mu_giou, mu_l1)


@_match_score_op.register_kernel("cuda")
def _match_score_cuda(student: Tensor, teacher: Tensor, mu_giou: float, mu_l1: float) -> Tensor:
    if student.dtype in FLOAT_DTYPES and teacher.dtype in FLOAT_DTYPES and use_triton(student, teacher):
        return match_score_triton(student, teacher, mu_giou, mu_l1)
    return match_score_reference(student, teacher, mu_giou, mu_l1)


@_match_score_op.register_fake
def _match_score_fake(student: Tensor, teacher: Tensor, mu_giou: float, mu_l1: float) -> Tensor:
    return student.new_empty(student.shape[0], teacher.shape[0], dtype=compute_dtype(student.dtype, teacher.dtype))


def match_score(student: Tensor, teacher: Tensor, mu_giou: float = MU_GIOU, mu_l1: float = MU_L1) -> Tensor:
    """FQM pairing score ``mu_giou * GIoU - mu_l1 * L1`` of normalized cxcywh boxes, ``[N, 4] x [M, 4] -> [N, M]``.

    Higher is better (the teacher query for student ``i`` is ``score[i].argmax()``; DETR's box
    matching cost is ``-score``). float32 out for float32 / float16 / bfloat16 boxes, float64 for
    float64. CPU: :func:`qdetr.reference.match_score_reference`, directly; CUDA: the tiled Triton
    kernel through ``qdetr::match_score``, equal to the reference bit for bit.
    """
    check_match_score_args(student, teacher)
    s, t = student.detach(), teacher.detach()
    if _on_cpu(s, t):
        return match_score_reference(s, t, float(mu_giou), float(mu_l1))
    return torch.ops.qdetr.match_score(s, t, float(mu_giou), float(mu_l1))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- DA + LSQ+ fake quant


@torch.library.custom_op("qdetr::aligned_quantize", mutates_args=())
def _aligned_quantize_op(
    q: Tensor,
    gamma: Tensor,
    beta: Tensor,
    step: Tensor,
    offset: Tensor,
    qmin: int,
    qmax: int,
    eps: float,
    unbiased: bool,
) -> Tensor:
    return aligned_quantize_reference(q, gamma, beta, step, offset, qmin, qmax, eps, unbiased)


@_aligned_quantize_op.register_kernel("cuda")
def _aligned_quantize_cuda(
    q: Tensor,
    gamma: Tensor,
    beta: Tensor,
    step: Tensor,
    offset: Tensor,
    qmin: int,
    qmax: int,
    eps: float,
    unbiased: bool,
) -> Tensor:
    fp32 = q.dtype in FLOAT_DTYPES and compute_dtype(gamma.dtype, beta.dtype) == torch.float32
    if fp32 and q.shape[-1] <= MAX_ALIGNED_D and use_triton(q, gamma, beta, step, offset):
        return aligned_quantize_triton(q, gamma, beta, step, offset, qmin, qmax, eps, unbiased)
    return aligned_quantize_reference(q, gamma, beta, step, offset, qmin, qmax, eps, unbiased)


@_aligned_quantize_op.register_fake
def _aligned_quantize_fake(
    q: Tensor,
    gamma: Tensor,
    beta: Tensor,
    step: Tensor,
    offset: Tensor,
    qmin: int,
    qmax: int,
    eps: float,
    unbiased: bool,
) -> Tensor:
    return torch.empty_like(q)


def _as_tensor(p: Tensor | float, like: Tensor) -> Tensor:
    """A number or tensor parameter as a detached tensor on ``like``'s device (numbers in the compute dtype)."""
    if isinstance(p, Tensor):
        return p.detach().to(like.device)
    return torch.tensor(float(p), dtype=compute_dtype(like.dtype), device=like.device)


def aligned_quantize(
    q: Tensor,
    gamma: Tensor,
    beta: Tensor,
    step: Tensor | float,
    offset: Tensor | float,
    qmin: int,
    qmax: int,
    eps: float = DA_EPS,
    unbiased: bool = False,
) -> Tensor:
    """Distribution-aligned, LSQ+ fake-quantized query: ``q [..., D]`` -> same shape and dtype.

    ``y = (q - mean) / sqrt(var + eps) * gamma + beta`` over the last dim, then
    ``round(clamp((y - offset) / step, qmin, qmax)) * step + offset`` (see
    :func:`qdetr.reference.aligned_quantize_reference` for the exact arithmetic). ``gamma`` /
    ``beta`` are ``[D]``; ``step`` / ``offset`` are ``[D]`` or scalars. Forward only (detached).
    CPU: the reference, directly; CUDA: the fused Triton kernel (one program per row) through
    ``qdetr::aligned_quantize``.
    """
    check_aligned_quantize_args(q, gamma, beta, step, offset, qmin, qmax, eps, unbiased)
    x = q.detach()
    g, b, st, off = (_as_tensor(p, x) for p in (gamma, beta, step, offset))
    if _on_cpu(x):
        return aligned_quantize_reference(x, g, b, st, off, qmin, qmax, float(eps), bool(unbiased))
    return torch.ops.qdetr.aligned_quantize(x, g, b, st, off, qmin, qmax, float(eps), bool(unbiased))  # type: ignore[no-any-return]
