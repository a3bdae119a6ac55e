"""nm_sparse.reference: the pure-PyTorch references (masks, scores, compressed format)."""

from __future__ import annotations

import pytest
import torch

from nm_sparse import ops
from nm_sparse import reference as K
from slimkit.errors import BadInputError

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


# --------------------------------------------------------------------------- second round: exact layouts, errors


def test_nm_mask_reference_error_message() -> None:
    with pytest.raises(BadInputError) as err:
        K.nm_mask_reference(torch.randn(3, 6), 2, 4)
    assert str(err.value) == "need a 2-D tensor whose last dim divides by m=4, got (3, 6)"


def test_compress_exact_packed_layout() -> None:
    w = torch.tensor(
        [
            [0.25, -5.0, 3.0, 0.5, 7.0, 0.0, 0.0, -8.0],
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # ties: the lower indices win, zeros are stored too
        ]
    )
    values, indices = K.compress(w, 2, 4)
    assert values.tolist() == [[-5.0, 3.0, 7.0, -8.0], [1.0, 1.0, 0.0, 0.0]]
    assert indices.dtype == torch.uint8
    assert indices.tolist() == [[1, 2, 0, 3], [0, 1, 0, 1]]
    assert K.decompress(values, indices, 2, 4).tolist() == [
        [0.0, -5.0, 3.0, 0.0, 7.0, 0.0, 0.0, -8.0],
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    # 1:4 and 3:4 on the same row: one index / three ascending indices per group
    v1, i1 = K.compress(w[:1], 1, 4)
    assert v1.tolist() == [[-5.0, -8.0]] and i1.tolist() == [[1, 3]]
    v3, i3 = K.compress(w[:1], 3, 4)
    assert v3.tolist() == [[-5.0, 3.0, 0.5, 7.0, 0.0, -8.0]] and i3.tolist() == [[1, 2, 3, 0, 1, 3]]


def test_decompress_places_values_at_their_indices() -> None:
    values = torch.tensor([[2.0, -3.0, 4.0, 5.0]], dtype=torch.float64)
    indices = torch.tensor([[3, 0, 1, 2]], dtype=torch.uint8)  # any order inside a group scatters the same
    dense = K.decompress(values, indices, 2, 4)
    assert dense.dtype == torch.float64
    assert dense.tolist() == [[-3.0, 0.0, 0.0, 2.0, 0.0, 4.0, 5.0, 0.0]]
    # the result lives on the values' device (meta: shapes and devices only, no data)
    meta = K.decompress(values.to("meta"), indices.to("meta"), 2, 4)
    assert meta.device.type == "meta" and meta.shape == (1, 8)


@pytest.mark.parametrize(
    ("values_shape", "indices_shape", "expected"),
    [
        ((2, 4), (2, 2), "values (2, 4) / indices (2, 2) are not an 2:4 compressed pair"),  # shapes differ
        ((2, 4, 2), (2, 4, 2), "values (2, 4, 2) / indices (2, 4, 2) are not an 2:4 compressed pair"),  # not 2-D
        ((2, 3), (2, 3), "values (2, 3) / indices (2, 3) are not an 2:4 compressed pair"),  # 3 kept: not groups of 2
    ],
)
def test_decompress_rejects_malformed_pairs(values_shape: tuple, indices_shape: tuple, expected: str) -> None:
    values = torch.ones(values_shape)
    indices = torch.zeros(indices_shape, dtype=torch.uint8)
    with pytest.raises(BadInputError) as err:
        K.decompress(values, indices, 2, 4)
    assert str(err.value) == expected


def test_nm_matmul_reference_computes_in_the_input_dtype() -> None:
    w = torch.tensor([[1.0, 0.0, -2.0, 0.0], [0.0, 3.0, 0.0, 0.5]])
    values, indices = K.compress(w, 2, 4)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    out = K.nm_matmul_reference(x, values, indices, 2, 4)
    assert out.dtype == torch.float64
    assert out.tolist() == [[-5.0, 8.0]]


def _backward_mask_brute(w: torch.Tensor, fwd: torch.Tensor, perm: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Column by column, group by group of permuted rows: keep the n largest forward-kept |w|."""
    rows, cols = w.shape
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for c in range(cols):
        for g in range(rows // m):
            group = [int(r) for r in perm[g * m : (g + 1) * m]]
            score = [abs(float(w[r, c])) if bool(fwd[r, c]) else 0.0 for r in group]
            # stable descending order: ties go to the earlier row in permuted order
            order = sorted(range(m), key=lambda i: -score[i])
            for i in order[:n]:
                out[group[i], c] = bool(fwd[group[i], c])
    return out


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 4)])
def test_backward_mask_reference_matches_brute_force(n: int, m: int) -> None:
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(2 * m, 6, generator=gen)
    fwd = torch.rand(2 * m, 6, generator=gen) < 0.6  # any forward mask, not only an N:M one
    for perm in (torch.arange(2 * m), torch.randperm(2 * m, generator=gen), torch.randperm(2 * m, generator=gen)):
        expected = _backward_mask_brute(w, fwd, perm, n, m)
        assert torch.equal(K.backward_mask_reference(w, fwd, perm, n, m), expected)


def test_backward_mask_reference_rejects_rows_not_divisible_by_m() -> None:
    with pytest.raises(BadInputError) as err:
        K.backward_mask_reference(torch.randn(6, 4), torch.ones(6, 4, dtype=torch.bool), torch.arange(6), 2, 4)
    assert str(err.value) == "Bi-Mask needs output channels divisible by m=4, got 6"


@pytest.mark.parametrize("shape", [(6, 8), (8, 6), (6, 6)])
def test_transposable_mask_reference_needs_both_dims_divisible(shape: tuple[int, int]) -> None:
    with pytest.raises(BadInputError) as err:
        K.transposable_mask_reference(torch.randn(shape), 2, 4)
    assert str(err.value) == f"transposable 2:4 needs both dims divisible by 4, got {shape}"


def test_transposable_mask_reference_stays_on_the_weight_device() -> None:
    # chunking the blocks changes nothing, and the patterns follow the weight (meta: no data)
    w = torch.randn(8, 80)  # 40 blocks of 4 x 4
    chunked = [K.transposable_mask_reference(w, 2, 4, chunk=c) for c in (4, 7)]
    expected = K.transposable_mask_reference(w, 2, 4)
    assert all(torch.equal(mask, expected) for mask in chunked)
    mask = K.transposable_mask_reference(w.to("meta"), 2, 4)
    assert mask.device.type == "meta" and mask.shape == (8, 80) and mask.dtype == torch.bool


def test_permutation_scores_default_scorer_dtype_and_errors() -> None:
    w_abs = torch.rand(8, 12) * (torch.rand(8, 12) < 0.5)
    perms = torch.stack([torch.arange(8), torch.arange(8).flip(0)])
    kept = K.permutation_scores_reference(w_abs, perms, 2, 4, "kept")
    assert torch.equal(K.permutation_scores_reference(w_abs, perms, 2, 4), kept)  # "kept" is the default
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # float32 scores whatever the default dtype
        assert K.permutation_scores_reference(w_abs, perms, 2, 4).dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
    # the scores live on the input's device (meta: shapes and devices only, no data)
    assert K.permutation_scores_reference(w_abs.to("meta"), perms.to("meta"), 2, 4).device.type == "meta"
    with pytest.raises(BadInputError) as err:
        K.permutation_scores_reference(w_abs, perms, 2, 4, "best")
    assert str(err.value) == "scorer must be one of ('kept', 'eligible', 'magnitude'), got 'best'"
    with pytest.raises(BadInputError) as err:
        K.permutation_scores_reference(w_abs[:6], perms[:, :6], 2, 4)
    assert str(err.value) == "permutation scoring needs rows divisible by m=4, got 6"


@pytest.mark.parametrize(
    ("w", "expected"),
    [
        (torch.randn(2, 2, 4), "weight must be 2-D, got shape (2, 2, 4)"),
        (torch.randn(2, 6), "weight last dim 6 is not divisible by M=4"),
        (torch.ones(2, 4, dtype=torch.int32), "weight must be floating point, got torch.int32"),
    ],
)
def test_compress_rejects_bad_weights(w: torch.Tensor, expected: str) -> None:
    with pytest.raises(BadInputError) as err:
        K.compress(w, 2, 4)
    assert str(err.value) == expected


def test_mask_orders_values_one_ulp_apart_and_ties_on_odd_bit_patterns() -> None:
    one = torch.tensor(1.0)
    up = float(torch.nextafter(one, torch.tensor(2.0)))  # 1 + 2**-23: bit pattern 0x3F800001 (odd)
    w = torch.tensor([[1.0, up, 0.5, 0.25], [up, up, up, up], [0.25, up, up, 0.5]])
    assert K.nm_mask_reference(w, 1, 4).tolist() == [
        [False, True, False, False],  # one ulp larger wins
        [True, False, False, False],  # ties: the lower index
        [False, True, False, False],
    ]
    # the mask is built on the weight's device (meta: shapes and devices only, no data)
    assert K.nm_mask_reference(w.to("meta"), 2, 4).device.type == "meta"
