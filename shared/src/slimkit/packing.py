"""Pack k-bit integers (k = 1..8) into int32 words and back, and {-1, +1} tensors into sign bits.

Why: a quantized model's real size (and what a low-bit kernel reads) is its integer codes packed
into machine words; fake-quant tensors are floats. Every package exports through this one layout
so the packed files of all of them read the same way.

Layout (the whole contract):

- Packing runs along the **last** dimension; leading dimensions are kept. ``n`` values of ``k``
  bits become ``ceil(n / (32 // k))`` words (:func:`packed_length`).
- Each word holds ``32 // k`` values (:func:`values_per_word`); **values never straddle words**.
  Value ``i`` of a row lands in word ``i // per_word`` at bits
  ``[(i % per_word) * k, (i % per_word) * k + k)``: the first value in the **least significant**
  bits.
- A value is stored as its low ``k`` bits: unsigned values as they are, signed values in ``k``-bit
  two's complement (``-1`` at 3 bits is ``0b111``).
- **Padding**: unused slots of the last word of a row, and the high ``32 - per_word * k`` bits of
  every word (k = 3, 5, 6, 7), are 0.
- Words are ``torch.int32`` holding the 32-bit pattern: a word whose bit 31 is set is negative.
- Sign bits (:func:`pack_signs`): ``+1`` (any ``x >= 0``, so ``sign(0) = +1``) is bit 1, ``-1`` is
  bit 0, with the 1-bit layout above (the XNOR-popcount convention).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.errors import BadInputError

__all__ = ["pack_bits", "pack_signs", "packed_length", "unpack_bits", "unpack_signs", "values_per_word"]

_WORD = 32
_MASK32 = (1 << _WORD) - 1


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise BadInputError(f"bits must be an integer in 1..8, got {bits!r}")
    return bits


def values_per_word(bits: int) -> int:
    """How many ``bits``-bit values one int32 word holds: ``32 // bits``."""
    return _WORD // _check_bits(bits)


def packed_length(length: int, bits: int) -> int:
    """Number of int32 words for ``length`` values of ``bits`` bits: ``ceil(length / (32 // bits))``."""
    if length < 0:
        raise BadInputError(f"length must be >= 0, got {length}")
    per = values_per_word(bits)
    return -(-length // per)


def _shifts(bits: int, device: torch.device) -> Tensor:
    return torch.arange(values_per_word(bits), device=device, dtype=torch.int64) * bits


def pack_bits(values: Tensor, bits: int, signed: bool = False) -> Tensor:
    """Pack integer ``values`` of ``bits`` bits along the last dimension into int32 words (layout above).

    ``values`` must be an integer (or bool) tensor with at least one dimension whose entries lie
    in ``[0, 2^bits - 1]`` (``signed=False``) or ``[-2^(bits-1), 2^(bits-1) - 1]`` (``signed=True``);
    anything else is a :class:`BadInputError`. Returns shape ``(*values.shape[:-1], packed_length(n, bits))``.
    """
    _check_bits(bits)
    if not isinstance(values, Tensor):
        raise BadInputError(f"pack_bits takes a tensor, got {type(values).__name__}")
    if values.dtype.is_floating_point or values.dtype.is_complex:
        raise BadInputError(f"pack_bits takes integer codes, got {values.dtype}; convert with .round().to(torch.int32)")
    if values.dim() == 0:
        raise BadInputError("pack_bits packs along the last dimension; got a 0-d tensor")
    v = values.to(torch.int64)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if v.numel() and (int(v.min()) < lo or int(v.max()) > hi):
        kind = "signed" if signed else "unsigned"
        raise BadInputError(
            f"values must lie in [{lo}, {hi}] for {kind} {bits}-bit packing, got [{int(v.min())}, {int(v.max())}]"
        )
    per = values_per_word(bits)
    n = v.shape[-1]
    n_words = packed_length(n, bits)
    pad = n_words * per - n
    if pad:
        v = torch.cat([v, v.new_zeros((*v.shape[:-1], pad))], dim=-1)
    fields = (v & ((1 << bits) - 1)).reshape(*v.shape[:-1], n_words, per)
    words = (fields << _shifts(bits, v.device)).sum(dim=-1)  # disjoint bit fields: sum == bitwise or
    words = torch.where(words >= (1 << (_WORD - 1)), words - (1 << _WORD), words)
    return words.to(torch.int32)


def unpack_bits(
    words: Tensor, bits: int, length: int, signed: bool = False, dtype: torch.dtype | None = None
) -> Tensor:
    """Exact inverse of :func:`pack_bits`: the first ``length`` values of each row.

    ``words`` is an int32 tensor of ``packed_length(length, bits)`` words per row. Signed values are
    sign-extended from ``bits`` bits. ``dtype`` defaults to ``torch.int8`` (signed) / ``torch.uint8``
    (unsigned), which hold every 1..8-bit value.
    """
    _check_bits(bits)
    if not isinstance(words, Tensor) or words.dtype != torch.int32:
        raise BadInputError(f"unpack_bits takes int32 words, got {getattr(words, 'dtype', type(words).__name__)}")
    if words.dim() == 0:
        raise BadInputError("unpack_bits unpacks along the last dimension; got a 0-d tensor")
    n_words = packed_length(length, bits)
    if words.shape[-1] != n_words:
        raise BadInputError(f"{length} values of {bits} bits take {n_words} words per row, got {words.shape[-1]}")
    per = values_per_word(bits)
    w = words.to(torch.int64) & _MASK32
    fields = (w.unsqueeze(-1) >> _shifts(bits, w.device)) & ((1 << bits) - 1)
    v = fields.reshape(*w.shape[:-1], n_words * per)[..., :length]
    if signed:
        v = torch.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
    return v.to(dtype or (torch.int8 if signed else torch.uint8))


def pack_signs(x: Tensor) -> Tensor:
    """Pack signs along the last dimension, 1 bit each: bit 1 where ``x >= 0`` (``+1``, and ``sign(0) = +1``), 0 elsewhere."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise BadInputError("pack_signs takes a tensor with at least one dimension")
    return pack_bits((x >= 0).to(torch.int64), 1)


def unpack_signs(words: Tensor, length: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_signs`: a ``{-1, +1}`` tensor of ``dtype`` with ``length`` values per row."""
    bits = unpack_bits(words, 1, length, signed=False, dtype=torch.int64)
    return (2 * bits - 1).to(dtype)
