"""Pure-PyTorch references: what the (future) kernels compute, written to be read, not to be fast.

Bottom layer of the package (the kernel rule: ``reference`` -> ``kernels`` -> ``ops``): it imports
nothing from :mod:`arbitrary_quant` and from slimkit only :mod:`slimkit.errors` and
:mod:`slimkit.packing` (which itself imports only ``errors``: the packed layout *is* the contract
the kernels implement, so the references unpack with the one shared implementation).

DFSQ (arXiv 2305.05888) activation fake-quant, in three steps:

1. :func:`dfsq_normalize`: per sample and per channel over H x W, at run time. Post-ReLU inputs:
   ``x / max|x|`` (in ``[0, 1]``); otherwise ``(x - mean) / max|x - mean|`` (in ``[-1, 1]``).
   A channel that is all zero (after centring) gets scale 1 so nothing divides by zero.
2. :func:`dfsq_nearest_reference`: each element to the nearest point of its channel's set,
   the points being drawn from :func:`dfsq_universal_set`. Tie rule: an element exactly halfway
   between two points goes to the **lower** point (``torch.argmin``'s first-minimum rule on a
   sorted set).
3. De-normalize, ``x_hat = q * scale + mean``; the backward is the straight-through identity
   (``x + (x_hat - x).detach()``, so the gradient is exactly 1 everywhere, normalization
   statistics included).

:func:`minmax_weight_quantize_reference` is DFSQ's weight quantizer: per output channel,
asymmetric uniform MinMax (``quant_weight`` in the official code).

Low-bit GEMMs on packed words (layout: :mod:`slimkit.packing`, along K, first value in the least
significant bits, values never straddle words, padding 0):

* :func:`packed_matmul_reference`: ``x @ ((unpack(w) - zero) * scale).T`` for k-bit codes
  (k = 1..8) packed along the reduction dimension, one scale / zero point per output channel.
* :func:`binary_matmul_reference`: ``sum_k sign_a * sign_b`` of two sign-bit matrices
  (:func:`slimkit.packing.pack_signs`, ``sign(0) = +1``), i.e. ``K - 2 * popcount(a XOR b)``.
* :func:`binary_linear_reference`: ``(sign(x) @ sign(W).T) * alpha`` with ``W`` given as sign bits.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from slimkit.errors import BadInputError
from slimkit.packing import pack_signs, packed_length, unpack_bits, unpack_signs

__all__ = [
    "MAX_WORDS",
    "PACKED_BITS",
    "binary_linear_reference",
    "binary_matmul_reference",
    "check_binary_linear_args",
    "check_binary_matmul_args",
    "check_dfsq_args",
    "check_packed_matmul_args",
    "dequantize_packed",
    "packed_matmul_reference",
    "dfsq_denormalize",
    "dfsq_nearest_reference",
    "dfsq_nearest_rows",
    "dfsq_normalize",
    "dfsq_quantize_reference",
    "dfsq_universal_set",
    "minmax_weight_quantize_reference",
]

MAX_WORDS = 8  # 4**8 = 65,536 word combinations: still instant to enumerate


def dfsq_universal_set(words: int = 4) -> Tensor:
    """The multi-word additive log-scale set U, sorted ascending (float32).

    Word ``i`` (``i = 1..words``) takes a value in ``{1, 2^-i, 2^-(i+words), 0}``; an element of U is
    ``(w_1 + ... + w_words) / words``, and its negative. With the paper's 4 words this is
    ``{1, 2^-i, 2^-(i+4), 0}`` and U has 377 distinct values (189 non-negative, 0 included), all
    in ``[-1, 1]``. Each value is a short sum of powers of two (shift-and-add in hardware).
    """
    if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= MAX_WORDS:
        raise BadInputError(f"words must be an integer in 1..{MAX_WORDS}, got {words!r}")
    choices = [(1.0, 2.0**-i, 2.0 ** -(i + words), 0.0) for i in range(1, words + 1)]
    # Sums of at most 2 * words powers of two >= 2^-(2 * words): exact in float64, so set() dedupes exactly.
    positive = {sum(combo) / words for combo in itertools.product(*choices)}
    values = sorted(positive | {-v for v in positive})
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def dfsq_normalize(x: Tensor, post_relu: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_norm, scale, mean)`` with statistics per sample and per channel over H x W (shapes ``[N, C, 1, 1]``).

    Post-ReLU: ``mean = 0``, ``scale = max|x|``. Otherwise ``mean = mean(x)``, ``scale = max|x - mean|``.
    A zero scale (constant channel) is replaced by 1, so ``x_norm`` is 0 there and de-normalizing is exact.
    """
    if x.dim() != 4:
        raise BadInputError(f"DFSQ normalizes [N, C, H, W] activations, got shape {tuple(x.shape)}")
    xf = x.float()
    if post_relu:
        mean = torch.zeros(xf.shape[0], xf.shape[1], 1, 1, dtype=xf.dtype, device=xf.device)
    else:
        mean = xf.mean(dim=(2, 3), keepdim=True)
    centred = xf - mean
    scale = centred.abs().amax(dim=(2, 3), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return centred / scale, scale, mean


def dfsq_denormalize(x_norm: Tensor, scale: Tensor, mean: Tensor) -> Tensor:
    """The inverse of :func:`dfsq_normalize`: ``x_norm * scale + mean``."""
    return x_norm * scale + mean


def _channel_points(points: Tensor, channels: int) -> Tensor:
    """Points as ``[C, K]`` (a 1-D set is shared by every channel); rows must be sorted ascending."""
    if points.dim() == 1:
        points = points.unsqueeze(0).expand(channels, -1)
    if points.dim() != 2 or points.shape[0] != channels or points.shape[1] < 1:
        raise BadInputError(f"points must be [K] or [C={channels}, K] with K >= 1, got shape {tuple(points.shape)}")
    return points


def dfsq_nearest_rows(rows: Tensor, points_per_channel: Tensor) -> Tensor:
    """Each value of ``rows [C, M]`` replaced by the nearest point of row ``c``'s set (see below)."""
    if rows.dim() != 2:
        raise BadInputError(f"expected [C, M] rows, got shape {tuple(rows.shape)}")
    pts = _channel_points(points_per_channel, rows.shape[0]).to(device=rows.device, dtype=torch.float32)
    mids = (pts[:, 1:] + pts[:, :-1]) / 2
    # index = number of midpoints strictly below the value, so a value equal to a midpoint goes low.
    index = torch.searchsorted(mids.contiguous(), rows.float().contiguous(), right=False)
    return torch.gather(pts, 1, index).to(rows.dtype)


def dfsq_nearest_reference(x_norm: Tensor, points_per_channel: Tensor) -> Tensor:
    """Each element of ``x_norm [N, C, H, W]`` replaced by the nearest point of its channel's set.

    ``points_per_channel`` is ``[C, K]`` with each row sorted ascending (repeated points are
    allowed, which is how channels with fewer than ``K`` distinct points are padded) or a 1-D
    ``[K]`` set shared by all channels. An element exactly halfway between two points goes to
    the lower one. Implemented with ``torch.searchsorted`` on the midpoints (``O(log K)`` per
    element, no ``[..., K]`` distance tensor).
    """
    if x_norm.dim() != 4:
        raise BadInputError(f"expected [N, C, H, W] activations, got shape {tuple(x_norm.shape)}")
    n, c, h, w = x_norm.shape
    rows = x_norm.permute(1, 0, 2, 3).reshape(c, -1)
    q = dfsq_nearest_rows(rows, points_per_channel)
    return q.reshape(c, n, h, w).permute(1, 0, 2, 3)


def dfsq_quantize_reference(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    """DFSQ activation fake-quant: normalize -> nearest point -> de-normalize, identity (STE) backward.

    ``points``: ``[C, K]`` sorted rows (or a shared ``[K]`` set) of normalized values, normally
    subsets of :func:`dfsq_universal_set`. The output has ``x``'s dtype.
    """
    x_norm, scale, mean = dfsq_normalize(x, post_relu)
    x_hat = dfsq_denormalize(dfsq_nearest_reference(x_norm, points), scale, mean).to(x.dtype)
    return x + (x_hat - x).detach()


def minmax_weight_quantize_reference(w: Tensor, bits: int) -> Tensor:
    """Per-output-channel asymmetric uniform MinMax fake-quant of a weight ``[O, ...]``, STE backward.

    With ``lo, hi`` the min and max of each output channel: ``delta = (hi - lo) / (2^b - 1)``,
    ``z = round(lo / delta) + 2^(b-1)``, ``q = clip(round(w / delta) - z, -2^(b-1), 2^(b-1) - 1)``,
    ``w_hat = (q + z) * delta``. A constant channel (``hi == lo``) is returned unchanged.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise BadInputError(f"weight bits must be an integer in 1..16, got {bits!r}")
    if w.dim() < 1:
        raise BadInputError("a weight to quantize per output channel needs at least one dimension")
    wf = w.detach().float()
    flat = wf.reshape(wf.shape[0], -1)
    view = (-1,) + (1,) * (w.dim() - 1)
    lo = flat.amin(dim=1).reshape(view)
    hi = flat.amax(dim=1).reshape(view)
    constant = hi <= lo
    delta = torch.where(constant, torch.ones_like(hi), (hi - lo) / (2**bits - 1))
    half = 2 ** (bits - 1)
    z = torch.round(lo / delta) + half
    q = torch.clamp(torch.round(wf / delta) - z, -half, half - 1)
    w_hat = torch.where(constant, wf, (q + z) * delta).to(w.dtype)
    return w + (w_hat - w).detach()


# --------------------------------------------------------------------------- argument checks
# One-line BadInputErrors, shared by the references and the dispatchers of :mod:`arbitrary_quant.ops`
# so the CPU and the Triton paths accept exactly the same inputs.

PACKED_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)  # every width slimkit.packing packs


def _check_float(t: Tensor, what: str) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise BadInputError(f"{what} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")


def _check_words(t: Tensor, what: str) -> None:
    if not isinstance(t, Tensor) or t.dtype != torch.int32 or t.dim() != 2:
        desc = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise BadInputError(f"{what} must be a 2-D int32 tensor of packed words, got {desc}")


def _check_channel_vector(t: Tensor | None, n: int, what: str) -> None:
    if t is None:
        return
    _check_float(t, what)
    if t.dim() != 1 or t.shape[0] != n:
        raise BadInputError(f"{what} must have shape [{n}] (one per output channel), got {tuple(t.shape)}")


def check_packed_matmul_args(x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int) -> None:
    """Shapes / dtypes of :func:`packed_matmul_reference` (``x`` is ``[M, K]``)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in PACKED_BITS:
        raise BadInputError(f"bits must be an integer in 1..8, got {bits!r}")
    _check_float(x, "x")
    if x.dim() != 2:
        raise BadInputError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    _check_words(w_packed, "w_packed")
    k = x.shape[1]
    words = packed_length(k, bits)
    if w_packed.shape[1] != words:
        raise BadInputError(
            f"x has K={k} features: {bits}-bit codes take {words} words per row, w_packed has {w_packed.shape[1]}"
        )
    _check_channel_vector(scale, w_packed.shape[0], "scale")
    _check_channel_vector(zero, w_packed.shape[0], "zero")


def check_binary_matmul_args(a_packed: Tensor, b_packed: Tensor, k: int) -> None:
    """Shapes / dtypes of :func:`binary_matmul_reference`: both ``[*, ceil(k / 32)]`` int32."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise BadInputError(f"K must be a non-negative integer, got {k!r}")
    _check_words(a_packed, "a_packed")
    _check_words(b_packed, "b_packed")
    words = packed_length(k, 1)
    if a_packed.shape[1] != words or b_packed.shape[1] != words:
        raise BadInputError(
            f"K={k} sign bits take {words} words per row, got {a_packed.shape[1]} (a) and {b_packed.shape[1]} (b)"
        )


def check_binary_linear_args(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> None:
    """Shapes / dtypes of :func:`binary_linear_reference` (``x`` is ``[M, K]``)."""
    _check_float(x, "x")
    if x.dim() != 2 or x.shape[1] != k:
        raise BadInputError(f"x must be 2-D [M, K={k}], got shape {tuple(x.shape)}")
    _check_words(w_packed, "w_packed")
    if w_packed.shape[1] != packed_length(k, 1):
        raise BadInputError(f"K={k} sign bits take {packed_length(k, 1)} words per row, got {w_packed.shape[1]}")
    _check_channel_vector(alpha, w_packed.shape[0], "alpha")


def check_dfsq_args(x: Tensor, points: Tensor) -> None:
    """Shapes / dtypes of :func:`dfsq_quantize_reference`: ``x [N, C, H, W]`` float, points ``[K]`` or ``[C, K]``."""
    _check_float(x, "x")
    if x.dim() != 4:
        raise BadInputError(f"DFSQ quantizes [N, C, H, W] activations, got shape {tuple(x.shape)}")
    _check_float(points, "points")
    _channel_points(points, x.shape[1])


# --------------------------------------------------------------------------- packed k-bit matmul


def dequantize_packed(
    w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int, k: int, signed: bool = False
) -> Tensor:
    """``(unpack(w_packed) - zero) * scale`` as a float32 ``[N, K]`` weight (per-row scale / zero point).

    ``signed=True`` reads the codes as ``bits``-bit two's complement (:func:`slimkit.packing.pack_bits`).
    The arithmetic (subtract, then multiply, in float32) is exactly what the kernel does per element.
    """
    q = unpack_bits(w_packed, bits, k, signed=signed, dtype=torch.float32)
    acc = torch.promote_types(scale.dtype, torch.float32)
    q = q.to(acc)
    if zero is not None:
        q = q - zero.to(acc)[:, None]
    return q * scale.to(acc)[:, None]


def packed_matmul_reference(
    x: Tensor, w_packed: Tensor, scale: Tensor, zero: Tensor | None, bits: int, signed: bool = False
) -> Tensor:
    """``x @ W.T`` with ``W = (unpack(w_packed) - zero) * scale``, ``x [M, K]``, ``w_packed [N, ceil(K / (32 // bits))]``.

    Definition the kernel follows: ``W`` dequantized in float32 and rounded once to ``x``'s dtype
    (the weight a layer of that dtype would hold), then the product accumulated in float32 (float64
    for float64 inputs) and rounded to ``x``'s dtype. Differentiable in ``x``, ``scale`` and ``zero``.
    """
    check_packed_matmul_args(x, w_packed, scale, zero, bits)
    w = dequantize_packed(w_packed, scale, zero, bits, x.shape[1], signed).to(x.dtype)
    acc = torch.promote_types(x.dtype, torch.float32)
    return (x.to(acc) @ w.to(acc).t()).to(x.dtype)


# --------------------------------------------------------------------------- binary (sign-bit) matmul


def binary_matmul_reference(a_packed: Tensor, b_packed: Tensor, k: int) -> Tensor:
    """int32 ``[M, N]``: ``sum_k sign_a[m, k] * sign_b[n, k]`` over the first ``k`` sign bits of each row.

    Equals ``k - 2 * popcount(a XOR b)`` on the valid bits; padding bits of the last word are ignored
    (whatever they hold). Computed by unpacking to ``{-1, +1}`` and a float64 matmul (exact for any
    realistic ``k``: the sums are integers of magnitude ``<= k < 2^53``).
    """
    check_binary_matmul_args(a_packed, b_packed, k)
    a = unpack_signs(a_packed, k, torch.float64)
    b = unpack_signs(b_packed, k, torch.float64)
    return (a @ b.t()).to(torch.int32)


def binary_linear_reference(x: Tensor, w_packed: Tensor, alpha: Tensor | None, k: int) -> Tensor:
    """XNOR-Net linear: ``(sign(x) @ sign(W).T) * alpha`` in ``x``'s dtype (``sign(0) = +1``), no gradient.

    ``sign(x)`` is packed with :func:`slimkit.packing.pack_signs`; ``alpha [N]`` (per output channel,
    e.g. ``mean|W|``) is applied in float32 to the exact integer dot products, then rounded once.
    """
    check_binary_linear_args(x, w_packed, alpha, k)
    dots = binary_matmul_reference(pack_signs(x.detach()), w_packed, k).to(torch.float32)
    if alpha is not None:
        dots = dots * alpha.detach().to(torch.float32)[None, :]
    return dots.to(x.dtype)
