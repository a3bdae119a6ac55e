"""Pure-PyTorch references of qdetr's two kernels: written to be read, and to be what the kernels compute.

Layer above :mod:`qdetr.boxes` (the kernel rule: ``reference`` -> ``kernels`` -> ``ops``). Q-DETR
(arXiv 2304.00253) needs two tensor computations often enough to be worth a kernel:

* **Foreground-aware query matching (FQM)** pairs each kept student query with the teacher query
  whose box scores best under ``mu_giou * GIoU - mu_l1 * L1`` (DETR's matching weights, 2 and 5):
  :func:`match_score_reference` is that ``[N, M]`` score matrix. GIoU is taken on ``xyxy``
  corners, L1 on the normalized ``cxcywh`` vectors, as in DETR's Hungarian matcher, whose box cost
  is the negative of this score.
* **Distribution alignment (DA)** standardizes every decoder query over its last (feature)
  dimension, ``(q - mean) / sqrt(var + eps)``, then applies a learnable ``gamma`` / ``beta`` before
  the query is quantized: Gaussian entropy depends only on the variance, so unit variance is the
  max-information state the paper rectifies towards. :func:`aligned_quantize_reference` is DA
  followed by LSQ+ fake quantization, the inference path of the aligned query.

Arithmetic contract (shared with :mod:`qdetr.kernels`): every value is computed in float32 (float64
inputs stay float64), each operation rounded once, in the order written here; sums are plain sums,
divisions IEEE. ``match_score`` returns the float32 (float64) scores whatever the input dtype, since
ranking needs more precision than fp16 holds; ``aligned_quantize`` returns ``q``'s dtype.

The LSQ+ step is exactly :func:`slimkit.quant.lsq_fake_quant`'s forward (``a = (x - offset) * (1 /
step)``, ``round(clamp(a, qmin, qmax)) * step + offset``, round half to even), so a model trained
with slimkit's LSQ quantizers and served through this path sees the same values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qdetr.boxes import check_boxes, cxcywh_to_xyxy, pairwise_giou
from slimkit.errors import BadInputError

__all__ = [
    "DA_EPS",
    "MU_GIOU",
    "MU_L1",
    "aligned_quantize_reference",
    "check_aligned_quantize_args",
    "check_match_score_args",
    "compute_dtype",
    "distribution_align_reference",
    "lsq_plus_forward_reference",
    "match_score_reference",
]

MU_GIOU = 2.0  # DETR's GIoU matching weight, reused by Q-DETR's FQM
MU_L1 = 5.0  # DETR's L1 matching weight
DA_EPS = 1e-5  # the paper's epsilon under the square root of the variance


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half / bfloat16 / float32 inputs, float64 if any input is float64."""
    out = torch.float32
    for dt in dtypes:
        out = torch.promote_types(out, dt)
    return out


# --------------------------------------------------------------------------- FQM pairing score


def check_match_score_args(student: Tensor, teacher: Tensor) -> None:
    """One-line :class:`BadInputError` unless both are float ``[*, 4]`` ``cxcywh`` boxes on the same device."""
    check_boxes(student, "student boxes", pairwise=True)
    check_boxes(teacher, "teacher boxes", pairwise=True)
    if student.device != teacher.device:
        raise BadInputError(f"student boxes are on {student.device} but teacher boxes on {teacher.device}")


def match_score_reference(student: Tensor, teacher: Tensor, mu_giou: float = MU_GIOU, mu_l1: float = MU_L1) -> Tensor:
    """FQM pairing score ``mu_giou * GIoU - mu_l1 * L1`` of every (student, teacher) box pair, ``[N, M]``.

    ``student [N, 4]`` and ``teacher [M, 4]`` are normalized ``cxcywh`` boxes. GIoU is
    :func:`qdetr.boxes.pairwise_giou` of the ``xyxy`` corners; L1 is ``|dcx| + |dcy| + |dw| + |dh|``
    summed left to right. Higher is better: identical boxes of positive area score exactly
    ``mu_giou``. Computed (and returned) in :func:`compute_dtype` of the inputs.
    """
    check_match_score_args(student, teacher)
    acc = compute_dtype(student.dtype, teacher.dtype)
    s, t = student.to(acc), teacher.to(acc)
    giou = pairwise_giou(cxcywh_to_xyxy(s), cxcywh_to_xyxy(t))
    l1 = (s[:, None, 0] - t[None, :, 0]).abs()
    for c in (1, 2, 3):  # left to right, one [N, M] term per coordinate (no [N, M, 4] intermediate)
        l1 = l1 + (s[:, None, c] - t[None, :, c]).abs()
    return mu_giou * giou - mu_l1 * l1


# --------------------------------------------------------------------------- DA + LSQ+ fake quant


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_param(p: Tensor | float, d: int, what: str, scalar_ok: bool) -> None:
    if not isinstance(p, Tensor):
        if scalar_ok and isinstance(p, int | float) and not isinstance(p, bool):
            return
        raise BadInputError(f"{what} must be a floating-point tensor{' or a number' if scalar_ok else ''}, got {p!r}")
    if not p.is_floating_point():
        raise BadInputError(f"{what} must be a floating-point tensor, got {p.dtype}")
    if not (p.shape == (d,) or (scalar_ok and p.dim() == 0)):
        shapes = f"[{d}] or a scalar" if scalar_ok else f"[{d}]"
        raise BadInputError(f"{what} must have shape {shapes} (one per feature of the last dim), got {tuple(p.shape)}")


def check_aligned_quantize_args(
    q: Tensor,
    gamma: Tensor,
    beta: Tensor,
    step: Tensor | float,
    offset: Tensor | float,
    qmin: int,
    qmax: int,
    eps: float,
    unbiased: bool,
) -> None:
    """One-line :class:`BadInputError` for anything :func:`aligned_quantize_reference` cannot take.

    Shapes and types only: no value is read, so checking never synchronizes a GPU (a step must be
    positive, which is the caller's quantizer's job, as in :class:`slimkit.quant.LSQQuantizer`).
    """
    if not isinstance(q, Tensor) or not q.is_floating_point():
        raise BadInputError(f"q must be a floating-point tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if q.dim() < 1 or q.shape[-1] < 1:
        raise BadInputError(f"q must have a non-empty last (feature) dimension, got shape {tuple(q.shape)}")
    d = q.shape[-1]
    if unbiased and d < 2:
        raise BadInputError(f"the unbiased variance needs at least 2 features in the last dimension, got {d}")
    _check_param(gamma, d, "gamma", scalar_ok=False)
    _check_param(beta, d, "beta", scalar_ok=False)
    _check_param(step, d, "step", scalar_ok=True)
    _check_param(offset, d, "offset", scalar_ok=True)
    if not (_is_int(qmin) and _is_int(qmax)) or qmin >= qmax:
        raise BadInputError(f"qmin / qmax must be integers with qmin < qmax, got {qmin!r}, {qmax!r}")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise BadInputError(f"eps must be a positive number, got {eps!r}")


def distribution_align_reference(
    q: Tensor, gamma: Tensor, beta: Tensor, eps: float = DA_EPS, unbiased: bool = False
) -> Tensor:
    """DA: ``(q - mean) / sqrt(var + eps) * gamma + beta`` over the last dimension, in :func:`compute_dtype`.

    Two passes written out (``mean = sum / D``, ``var = sum((q - mean)^2) / (D - unbiased)``)
    rather than ``torch.var_mean``, because that is how the kernel computes them: on inputs whose
    sums are exact the two agree bit for bit. ``unbiased=False`` (the default) is the population
    variance, so a standardized query has variance exactly 1 before ``gamma`` (up to ``eps``).
    """
    acc = compute_dtype(q.dtype, gamma.dtype, beta.dtype)
    x = q.to(acc)
    d = x.shape[-1]
    mean = x.sum(dim=-1, keepdim=True) / d
    centred = x - mean
    var = (centred * centred).sum(dim=-1, keepdim=True) / (d - int(bool(unbiased)))
    return centred / torch.sqrt(var + eps) * gamma.to(acc) + beta.to(acc)


def lsq_plus_forward_reference(x: Tensor, step: Tensor, offset: Tensor, qmin: int, qmax: int) -> Tensor:
    """LSQ+ fake-quant forward ``round(clamp((x - offset) * (1 / step), qmin, qmax)) * step + offset``.

    Same operations as :func:`slimkit.quant.lsq_fake_quant`'s forward (multiply by the reciprocal,
    clamp, then round half to even), in ``x``'s dtype; ``step`` / ``offset`` broadcast to ``x``.
    """
    a = (x - offset) * (1.0 / step)
    return torch.round(torch.clamp(a, qmin, qmax)) * step + offset


def aligned_quantize_reference(
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
    """DA then LSQ+: the aligned, fake-quantized query ``q [..., D]``, in ``q``'s dtype.

    ``gamma`` / ``beta`` are ``[D]``; ``step`` / ``offset`` are ``[D]`` (per feature) or a scalar
    (per tensor). Every output is ``k * step + offset`` for an integer ``k`` in ``[qmin, qmax]``.
    Forward values only: autograd flows through the torch ops, but training should use
    :mod:`slimkit.quant`'s LSQ quantizers, whose straight-through gradients this does not have.
    """
    check_aligned_quantize_args(q, gamma, beta, step, offset, qmin, qmax, eps, unbiased)
    y = distribution_align_reference(q, gamma, beta, eps, unbiased)
    acc = y.dtype
    st = step.to(device=y.device, dtype=acc) if isinstance(step, Tensor) else torch.tensor(step, dtype=acc)
    off = offset.to(device=y.device, dtype=acc) if isinstance(offset, Tensor) else torch.tensor(offset, dtype=acc)
    return lsq_plus_forward_reference(y, st, off, qmin, qmax).to(q.dtype)
