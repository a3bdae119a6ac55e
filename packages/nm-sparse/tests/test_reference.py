"""nm_sparse.reference: the pure-PyTorch references (masks, scores, compressed format)."""

from __future__ import annotations

import pytest
import torch

from nm_sparse import ops
from nm_sparse import reference as K

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 16)]


@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5), (7, 32)])
def test_mask_reference_is_topn_with_lower_index_tie_break(topn_valid, n: int, m: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(7, m * 6)
    w[0] = 1.0  # a row of ties: the first n of each group must win
    mask = K.nm_mask_reference(w, n, m)
    topn_valid(w, mask, n, m)
    expected_row0 = (torch.arange(m * 6) % m) < n
    assert torch.equal(mask[0], expected_row0)


def test_mask_reference_matches_topk_without_ties() -> None:
    torch.manual_seed(1)
    w = torch.randn(16, 64)
    mask = K.nm_mask_reference(w, 2, 8)
    idx = w.abs().reshape(16, 8, 8).topk(2, dim=-1).indices
    ref = torch.zeros(16, 8, 8, dtype=torch.bool).scatter_(-1, idx, True).reshape(16, 64)
    assert torch.equal(mask, ref)


@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5)])
def test_compress_roundtrip_and_shapes(n: int, m: int) -> None:
    torch.manual_seed(3)
    w = torch.randn(6, m * 4)
    values, indices = ops.compress(w, n, m)
    assert values.shape == (6, 4 * n) and indices.shape == (6, 4 * n) and indices.dtype == torch.uint8
    assert int(indices.max()) < m
    # indices ascend inside each group
    grouped = indices.reshape(6, 4, n).long()
    assert (grouped.diff(dim=-1) > 0).all()
    dense = ops.decompress(values, indices, n, m)
    assert torch.equal(dense, w * ops.nm_mask(w, n, m))
    # an already N:M-sparse weight is stored exactly (compress is idempotent on it)
    v2, i2 = ops.compress(dense, n, m)
    assert torch.equal(ops.decompress(v2, i2, n, m), dense)


def test_compress_keeps_pattern_of_groups_with_fewer_nonzeros() -> None:
    w = torch.zeros(2, 8)
    w[0, 5] = 3.0  # one non-zero where 2:4 allows two
    values, indices = ops.compress(w, 2, 4)
    assert torch.equal(ops.decompress(values, indices, 2, 4), w)


def test_permutation_scores_reference_properties() -> None:
    torch.manual_seed(5)
    w = torch.randn(8, 24)
    wm = (w * ops.nm_mask(w, 2, 4)).abs()
    perms = torch.stack([torch.arange(8)] + [torch.randperm(8) for _ in range(4)])
    kept = K.permutation_scores_reference(wm, perms, 2, 4, "kept")
    # "kept" equals sum over (group, column) of min(n, non-zeros in the group)
    for k in range(perms.shape[0]):
        nnz = (wm[perms[k]].reshape(2, 4, 24) > 0).sum(1)
        assert kept[k] == nnz.clamp(max=2).sum()
        eligible = K.permutation_scores_reference(wm, perms[k : k + 1], 2, 4, "eligible")
        assert eligible[0] == (nnz <= 2).sum()
    # a permutation inside groups does not change any score; the bound is the forward count
    inside = torch.tensor([1, 0, 3, 2, 7, 6, 5, 4])
    for scorer in K.SCORERS:
        s = K.permutation_scores_reference(wm, torch.stack([torch.arange(8), inside]), 2, 4, scorer)
        assert torch.allclose(s[0], s[1])
    assert (kept <= (wm > 0).sum()).all()
