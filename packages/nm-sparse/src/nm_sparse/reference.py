"""Pure-PyTorch references: N:M masks, Bi-Mask permutation scores, SpRe spatial masks,
transposable masks, the compressed N:M format and the weight-layout helpers.

This module imports nothing else of the package except :mod:`nm_sparse.pattern` (the kernel
rule: references at the bottom, Triton in :mod:`nm_sparse.kernels`, custom ops and the
dispatching functions in :mod:`nm_sparse.ops` above both).

Everything works on a 2-D "GEMM view" ``[rows, K]`` of a weight, with groups of ``m``
consecutive entries along the last dimension (the reduction dimension of the forward GEMM).
:func:`to_gemm_matrix` builds that view for Linear and Conv weights:

* ``layout="cin"`` (default, deployable; NVIDIA ASP, SR-STE ``Sparse_NHWC``, SpRe): a conv weight
  ``[O, I, kh, kw]`` becomes ``[O, kh*kw*I]`` with ``I`` innermost, so every group lies along
  the input channels at one output channel and kernel position;
* ``layout="flat"`` (original SR-STE ``Sparse`` and Bi-Mask ``NMConv``): the row-major flatten
  ``[O, I*kh*kw]``; for 3x3 kernels groups run along the taps and may cross channels.

Tie-break everywhere: among equal ``|w|`` the lower index wins (a stable descending sort).
The Triton kernels follow the same rule, so both paths agree bit for bit.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Literal

import torch
from torch import Tensor

from nm_sparse.pattern import MAX_M, validate_nm
from slimkit.errors import BadInputError

__all__ = [
    "LAYOUTS",
    "MAX_M",
    "SCORERS",
    "backward_mask_reference",
    "check_layout",
    "compress",
    "decompress",
    "from_gemm_matrix",
    "group_axis_size",
    "nm_mask_reference",
    "nm_mask_unchecked",
    "nm_matmul_reference",
    "permutation_scores_reference",
    "spatial_mask_reference",
    "to_gemm_matrix",
    "transposable_mask_reference",
    "transposable_patterns",
    "unstructured_mask",
]

Layout = Literal["cin", "flat"]
LAYOUTS: tuple[str, ...] = ("cin", "flat")
SCORERS: tuple[str, ...] = ("kept", "eligible", "magnitude")


# --------------------------------------------------------------------------- layouts


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise BadInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def to_gemm_matrix(weight: Tensor, layout: str = "cin") -> Tensor:
    """``[O, K]`` view of a Linear ``[O, I]`` or Conv ``[O, I, *k]`` weight (groups along K)."""
    check_layout(layout)
    if weight.dim() <= 2:
        return weight.reshape(weight.shape[0], -1)
    if layout == "cin":
        return weight.movedim(1, -1).reshape(weight.shape[0], -1)
    return weight.reshape(weight.shape[0], -1)


def from_gemm_matrix(mat: Tensor, shape: torch.Size | tuple[int, ...], layout: str = "cin") -> Tensor:
    """Inverse of :func:`to_gemm_matrix`: back to the weight's own ``shape``."""
    check_layout(layout)
    shape = tuple(shape)
    if len(shape) <= 2 or layout == "flat":
        return mat.reshape(shape)
    moved = (shape[0], *shape[2:], shape[1])
    return mat.reshape(moved).movedim(-1, 1)


def group_axis_size(shape: torch.Size | tuple[int, ...], layout: str = "cin") -> int:
    """Length of the axis the groups must tile without crossing boundaries.

    ``cin`` groups must not cross kernel positions, so the input-channel count must divide by
    ``m``; ``flat`` only needs the whole reduction size ``I*kh*kw`` to divide by ``m``.
    """
    check_layout(layout)
    if len(shape) <= 2 or layout == "cin":
        return int(shape[1])
    return int(math.prod(shape[1:]))


# --------------------------------------------------------------------------- validation


def check_pattern(n: int, m: int) -> None:
    """One-line BadInputError unless ``1 <= n <= m <= MAX_M``."""
    validate_nm(n, m)


def check_2d(w: Tensor, m: int, what: str = "weight") -> None:
    if w.dim() != 2:
        raise BadInputError(f"{what} must be 2-D, got shape {tuple(w.shape)}")
    if w.shape[1] % m != 0:
        raise BadInputError(f"{what} last dim {w.shape[1]} is not divisible by M={m}")
    if not w.is_floating_point():
        raise BadInputError(f"{what} must be floating point, got {w.dtype}")


# --------------------------------------------------------------------------- N:M masks


def nm_mask_reference(w2d: Tensor, n: int, m: int) -> Tensor:
    """Boolean mask keeping the ``n`` largest ``|w|`` in each ``m`` consecutive entries of a row."""
    if w2d.dim() != 2 or w2d.shape[1] % m != 0:
        raise BadInputError(f"need a 2-D tensor whose last dim divides by m={m}, got {tuple(w2d.shape)}")
    return nm_mask_unchecked(w2d, n, m)


def nm_mask_unchecked(w2d: Tensor, n: int, m: int) -> Tensor:
    """:func:`nm_mask_reference` for arguments the caller already validated (2-D, last dim divisible by m)."""
    rows, cols = w2d.shape
    a = w2d.detach().abs().float().reshape(rows, cols // m, m)
    return _top_n_in_groups(a, n).reshape(rows, cols)


def _top_n_in_groups(a: Tensor, n: int) -> Tensor:
    """Top-``n`` of each group (last dim) of non-negative floats, ties to the lower index.

    The float's bit pattern orders like the value for non-negative floats, so packing
    ``bits << 5 | (31 - index)`` gives unique int64 keys: one ``topk`` is then exact and
    deterministic, and about 1.5x faster than a stable sort per group.
    """
    m = a.shape[-1]
    bits = a.contiguous().view(torch.int32).to(torch.int64)
    key = (bits << 5) | (31 - torch.arange(m, dtype=torch.int64, device=a.device))
    keep = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    return keep.scatter_(-1, key.topk(n, dim=-1, sorted=False).indices, True)


def unstructured_mask(weight: Tensor, density: float) -> Tensor:
    """Layer-wise magnitude mask keeping ``round(density * numel)`` largest ``|w|`` (ties: lower index)."""
    flat = weight.detach().abs().float().reshape(-1)
    total = flat.numel()
    keep = round(density * total)
    if keep <= 0:
        return torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    if keep >= total:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    # threshold = keep-th largest value (kthvalue avoids a full sort); ties at the threshold
    # are filled in index order so the result equals a stable descending sort's first `keep`
    threshold = flat.kthvalue(total - keep + 1).values
    above = flat > threshold
    tied = flat == threshold
    room = keep - int(above.sum())
    mask = above | (tied & (torch.cumsum(tied, 0) <= room))
    return mask.reshape(weight.shape)


# --------------------------------------------------------------------------- SpRe spatial mask


def spatial_mask_reference(weight: Tensor, n: int, m: int) -> Tensor:
    """SpRe's k x k mask S: kernel positions that unstructured pruning finds denser than average.

    ``U`` = layer-wise magnitude mask of the dense ``weight`` at sparsity ``p = 1 - n/m``;
    ``s(h, w)`` = fraction of ``U`` pruned at position ``(h, w)`` over all (out, in) pairs;
    ``S(h, w) = s(h, w) < p``. Returned as a float tensor of shape ``weight.shape[2:]``.

    Ties are exact and deterministic: equal ``|w|`` at ``U``'s threshold are kept in flat
    (row-major ``[out, in, kh, kw]``) index order, lowest first (:func:`unstructured_mask`),
    and ``s < p`` is decided in integers (``kept * m > n * out * in``), so a position whose
    sparsity is exactly ``p`` is off for every pattern (a float comparison turns it on for
    m = 3, 5, 7, ... through rounding).
    """
    kept = unstructured_mask(weight, n / m).sum(dim=(0, 1))  # int64 count per position
    pairs = weight.shape[0] * weight.shape[1]
    return (kept * m > n * pairs).to(weight.dtype)


# --------------------------------------------------------------------------- Bi-Mask


def backward_mask_reference(w2d: Tensor, forward_mask: Tensor, perm: Tensor, n: int, m: int) -> Tensor:
    """Bi-Mask's backward mask on a ``[O, K]`` view (reference): N:M down each column in permuted row order.

    The forward-masked magnitudes are reordered by ``perm`` (rows), the top-``n`` of every ``m``
    consecutive permuted rows is kept in each column, the result is intersected with the
    (permuted) forward mask and scattered back to the original row order. Hence
    ``backward ⊆ forward`` and every column holds at most ``n`` per ``m`` permuted rows.
    """
    return backward_mask_from(w2d, forward_mask, perm, n, m, nm_mask_reference)


def backward_mask_from(w2d: Tensor, forward_mask: Tensor, perm: Tensor, n: int, m: int, mask_fn: Any) -> Tensor:
    """:func:`backward_mask_reference` with the column N:M mask computed by ``mask_fn(w2d, n, m)``."""
    rows = w2d.shape[0]
    if rows % m != 0:
        raise BadInputError(f"Bi-Mask needs output channels divisible by m={m}, got {rows}")
    masked = w2d.detach().abs() * forward_mask
    fwd_p = forward_mask[perm]
    col_mask = mask_fn(masked[perm].t().contiguous(), n, m).t()
    keep_p = col_mask & fwd_p
    out = torch.empty_like(keep_p)
    out[perm] = keep_p
    return out


def permutation_scores_reference(w_abs_masked: Tensor, perms: Tensor, n: int, m: int, scorer: str = "kept") -> Tensor:
    """Score candidate row orders for Bi-Mask (float32 ``[K]``, higher is better).

    ``w_abs_masked`` = ``|W ⊙ M_f|`` (``[O, I]``), ``perms`` = ``[K, O]`` int64 row orders.
    Per candidate the rows are permuted and cut into groups of ``m`` down each column; the
    backward mask keeps the top-``n`` of each group among the forward-kept (non-zero) entries.

    * ``kept`` (official code): forward-kept weights surviving the backward mask;
    * ``eligible`` (paper abstract): (group, column) blocks already N:M, i.e. losing nothing;
    * ``magnitude``: sum of ``|w|`` surviving the backward mask.
    """
    if scorer not in SCORERS:
        raise BadInputError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    rows, cols = w_abs_masked.shape
    if rows % m != 0:
        raise BadInputError(f"permutation scoring needs rows divisible by m={m}, got {rows}")
    a = w_abs_masked.detach().float()
    scores = torch.empty(perms.shape[0], dtype=torch.float32, device=a.device)
    for k in range(perms.shape[0]):
        blocks = a[perms[k]].reshape(rows // m, m, cols).transpose(1, 2)  # [O/m, I, m]
        if scorer == "magnitude":
            # the top-n of a group holds min(n, nnz) non-zeros: their sum is what survives
            scores[k] = blocks.topk(min(n, m), dim=-1).values.sum()
            continue
        nonzero = (blocks > 0).sum(-1)
        if scorer == "eligible":
            scores[k] = (nonzero <= n).sum()
        else:  # top-n of a group keeps min(n, nnz) forward-kept weights
            scores[k] = nonzero.clamp(max=n).sum()
    return scores


# --------------------------------------------------------------------------- transposable masks


@functools.cache
def transposable_patterns(n: int, m: int) -> Tensor:
    """All ``m x m`` 0/1 blocks with exactly ``n`` ones in every row and every column."""
    if m > 4:
        raise BadInputError(f"transposable masks are enumerated exhaustively and need m <= 4, got {n}:{m}")
    rows = [r for r in itertools.product((0, 1), repeat=m) if sum(r) == n]
    blocks = [b for b in itertools.product(rows, repeat=m) if all(sum(col) == n for col in zip(*b))]
    return torch.tensor(blocks, dtype=torch.float32).reshape(len(blocks), m * m)


def transposable_mask_reference(w2d: Tensor, n: int, m: int, chunk: int = 65536) -> Tensor:
    """Best transposable N:M mask of a ``[O, K]`` matrix, one ``m x m`` block at a time.

    Each block takes the valid pattern (``n`` per row and per column) that keeps the largest
    ``|w|`` sum (exhaustive; ties to the first pattern in enumeration order). The mask is N:M
    along rows and along columns, so ``W`` and ``W^T`` both follow the pattern.
    """
    rows, cols = w2d.shape
    if rows % m or cols % m:
        raise BadInputError(f"transposable {n}:{m} needs both dims divisible by {m}, got {tuple(w2d.shape)}")
    patterns = transposable_patterns(n, m).to(w2d.device)
    blocks = w2d.detach().abs().float().reshape(rows // m, m, cols // m, m).transpose(1, 2).reshape(-1, m * m)
    best = torch.empty(blocks.shape[0], dtype=torch.long, device=w2d.device)
    for start in range(0, blocks.shape[0], chunk):
        best[start : start + chunk] = (blocks[start : start + chunk] @ patterns.t()).argmax(dim=1)
    chosen = patterns[best].bool().reshape(rows // m, cols // m, m, m).transpose(1, 2)
    return chosen.reshape(rows, cols)


# --------------------------------------------------------------------------- compressed N:M format


def compress(w2d: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """Compressed N:M storage: ``values`` [R, K*n/m] and within-group ``indices`` (uint8).

    Keeps the top-``n`` |w| of each group (so an already N:M-sparse weight is stored exactly;
    a denser one is pruned first). Indices are ascending inside each group.
    """
    check_pattern(n, m)
    check_2d(w2d, m)
    rows, cols = w2d.shape
    groups = cols // m
    keep = _top_n_in_groups(w2d.detach().abs().float().reshape(rows, groups, m), n).reshape(rows, groups, m)
    # positions of the kept entries, ascending: sort the boolean mask (kept first, stable)
    pos = torch.sort(keep.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :n]
    pos = torch.sort(pos, dim=-1).values
    values = torch.gather(w2d.reshape(rows, groups, m), -1, pos)
    return values.reshape(rows, groups * n).contiguous(), pos.to(torch.uint8).reshape(rows, groups * n).contiguous()


def decompress(values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """Dense [R, K] weight from :func:`compress` output (zeros at the pruned positions)."""
    check_pattern(n, m)
    if values.shape != indices.shape or values.dim() != 2 or values.shape[1] % n != 0:
        raise BadInputError(
            f"values {tuple(values.shape)} / indices {tuple(indices.shape)} are not an {n}:{m} compressed pair"
        )
    rows, kept = values.shape
    groups = kept // n
    dense = torch.zeros(rows, groups, m, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, indices.reshape(rows, groups, n).long(), values.reshape(rows, groups, n))
    return dense.reshape(rows, groups * m)


def nm_matmul_reference(x: Tensor, values: Tensor, indices: Tensor, n: int, m: int) -> Tensor:
    """``x @ W.T`` for the compressed weight ``W`` (decompress, then a dense matmul)."""
    return x @ decompress(values, indices, n, m).to(x.dtype).t()
