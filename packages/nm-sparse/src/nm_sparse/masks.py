"""Mask logic above the references and the ops: weight-shaped N:M masks and Bi-Mask's backward mask.

:func:`weight_nm_mask` turns a Linear/Conv weight into its GEMM view (``layout``), takes the
N:M mask with the dispatching :func:`nm_sparse.ops.nm_mask` and folds it back to the weight's
shape; every wrapper that needs "the N:M mask of this weight" calls it. :func:`backward_mask`
is Bi-Mask's column-wise mask in permuted row order, on the same dispatcher.

The pure-PyTorch references (:mod:`nm_sparse.reference`) and the dispatchers
(:mod:`nm_sparse.ops`) are re-exported here under their 0.1 names.
"""

from __future__ import annotations

from torch import Tensor

from nm_sparse.ops import nm_mask, permutation_scores
from nm_sparse.reference import (
    LAYOUTS,
    SCORERS,
    Layout,
    backward_mask_from,
    backward_mask_reference,
    check_layout,
    from_gemm_matrix,
    group_axis_size,
    nm_mask_reference,
    permutation_scores_reference,
    spatial_mask_reference,
    to_gemm_matrix,
    transposable_mask_reference,
    transposable_patterns,
    unstructured_mask,
)
from slimkit.errors import BadInputError

__all__ = [
    "LAYOUTS",
    "SCORERS",
    "BadInputError",
    "Layout",
    "backward_mask",
    "backward_mask_reference",
    "check_layout",
    "from_gemm_matrix",
    "group_axis_size",
    "nm_mask",
    "nm_mask_reference",
    "permutation_scores",
    "permutation_scores_reference",
    "spatial_mask_reference",
    "to_gemm_matrix",
    "transposable_mask_reference",
    "transposable_patterns",
    "unstructured_mask",
    "weight_nm_mask",
]


def weight_nm_mask(weight: Tensor, n: int, m: int, layout: str = "cin") -> Tensor:
    """N:M mask with the weight's own shape, groups formed according to ``layout``."""
    mat = to_gemm_matrix(weight.detach(), layout)
    return from_gemm_matrix(nm_mask(mat, n, m), weight.shape, layout)


def backward_mask(w2d: Tensor, forward_mask: Tensor, perm: Tensor, n: int, m: int) -> Tensor:
    """Bi-Mask's backward mask on a ``[O, K]`` view: N:M down each column in permuted row order.

    The forward-masked magnitudes are reordered by ``perm`` (rows), the top-``n`` of every ``m``
    consecutive permuted rows is kept in each column, the result is intersected with the
    (permuted) forward mask and scattered back to the original row order. Hence
    ``backward ⊆ forward`` and every column holds at most ``n`` per ``m`` permuted rows.
    Same as :func:`nm_sparse.reference.backward_mask_reference`, with the column mask on the
    dispatching :func:`nm_sparse.ops.nm_mask` (Triton on CUDA).
    """
    return backward_mask_from(w2d, forward_mask, perm, n, m, nm_mask)
