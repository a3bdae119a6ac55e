"""Reference masks: exact counts, top-n property, layouts, scorers, transposable optimality."""

from __future__ import annotations

import itertools

import pytest
import torch

from nm_sparse import masks
from nm_sparse.pattern import NMPattern, parse_pattern
from slimkit.errors import BadInputError

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 16), (3, 5), (4, 32)]


def test_parse_pattern_forms() -> None:
    assert parse_pattern("2:4") == NMPattern(2, 4)
    assert parse_pattern(" 1 : 16 ") == NMPattern(1, 16)
    assert parse_pattern((4, 8)) == NMPattern(4, 8)
    assert parse_pattern({"n": 2, "m": 8}) == NMPattern(2, 8)
    assert str(NMPattern(2, 4)) == "2:4" and NMPattern(1, 4).sparsity == 0.75


@pytest.mark.parametrize("bad", ["4:2", "0:4", "2:64", "a:b", "2/4", 2.5, (2,), (True, 4)])
def test_parse_pattern_rejects(bad: object) -> None:
    with pytest.raises(BadInputError):
        parse_pattern(bad)


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_mask_keeps_exactly_n_largest(n: int, m: int) -> None:
    w = torch.randn(6, 4 * m)
    mask = masks.nm_mask_reference(w, n, m)
    groups_w = w.abs().reshape(6, 4, m)
    groups_m = mask.reshape(6, 4, m)
    assert torch.equal(groups_m.sum(-1), torch.full((6, 4), n))
    kept_min = torch.where(groups_m, groups_w, torch.inf).amin(-1)
    dropped_max = torch.where(groups_m, -torch.inf, groups_w).amax(-1)
    assert bool((kept_min >= dropped_max).all())


def test_mask_tie_break_prefers_lower_index() -> None:
    w = torch.ones(2, 8)
    mask = masks.nm_mask_reference(w, 2, 4)
    assert mask.tolist() == [[True, True, False, False] * 2] * 2


def test_mask_dispatch_matches_reference() -> None:
    w = torch.randn(16, 64)
    for n, m in [(2, 4), (1, 8), (3, 5)]:
        w2 = torch.randn(16, 10 * m)
        assert torch.equal(masks.nm_mask(w2, n, m), masks.nm_mask_reference(w2, n, m))
    assert torch.equal(masks.nm_mask(w, 2, 4), masks.nm_mask_reference(w, 2, 4))


def test_non_divisible_rejected() -> None:
    with pytest.raises(BadInputError):
        masks.nm_mask_reference(torch.randn(3, 6), 2, 4)


@pytest.mark.parametrize("layout", ["cin", "flat"])
def test_gemm_roundtrip(layout: str) -> None:
    w = torch.randn(5, 8, 3, 2)
    assert torch.equal(masks.from_gemm_matrix(masks.to_gemm_matrix(w, layout), w.shape, layout), w)
    lin = torch.randn(4, 12)
    assert torch.equal(masks.to_gemm_matrix(lin, layout), lin)


def test_cin_layout_groups_run_along_input_channels() -> None:
    w = torch.randn(4, 8, 3, 3)
    mask = masks.weight_nm_mask(w, 2, 4, "cin")
    # at every (out, kh, kw) each run of 4 input channels keeps exactly 2
    per_group = mask.permute(0, 2, 3, 1).reshape(4, 3, 3, 2, 4).sum(-1)
    assert bool((per_group == 2).all())
    # and the kept ones are the largest of their channel group
    expected = masks.nm_mask_reference(w.permute(0, 2, 3, 1).reshape(-1, 8), 2, 4).reshape(4, 3, 3, 8).permute(0, 3, 1, 2)
    assert torch.equal(mask, expected)


def test_flat_layout_groups_cross_channels() -> None:
    w = torch.randn(4, 4, 3, 3)  # 36 = 9 groups of 4 per filter, crossing channel boundaries
    mask = masks.weight_nm_mask(w, 2, 4, "flat")
    assert bool((mask.reshape(4, 9, 4).sum(-1) == 2).all())
    assert masks.group_axis_size(w.shape, "flat") == 36 and masks.group_axis_size(w.shape, "cin") == 4


def test_unstructured_mask_count_and_order() -> None:
    w = torch.randn(8, 10)
    mask = masks.unstructured_mask(w, 0.25)
    assert int(mask.sum()) == 20
    assert float(w.abs()[mask].min()) >= float(w.abs()[~mask].max())


def test_spatial_mask_marks_denser_positions() -> None:
    # centre taps and the middle row are big, corners small: unstructured pruning keeps them
    w = torch.full((4, 8, 3, 3), 0.01)
    w[:, :, 1, :] = 1.0
    w[:, :, 0, 1] = 0.5
    w += 1e-4 * torch.rand_like(w)
    s = masks.spatial_mask_reference(w, 2, 4)
    # keep 50% of 288 = 144: the middle row (96) and tap (0, 1) (32) fully, 16 small ones elsewhere
    assert s.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    # definition check on random weights
    w = torch.randn(6, 8, 3, 3)
    kept = masks.unstructured_mask(w, 0.5).float()
    expected = ((1 - kept.mean(dim=(0, 1))) < 0.5).float()
    assert torch.equal(masks.spatial_mask_reference(w, 2, 4), expected)


def _brute_backward_counts(w_abs: torch.Tensor, perm: torch.Tensor, n: int, m: int) -> tuple[int, int]:
    rows, cols = w_abs.shape
    kept = eligible = 0
    for g in range(rows // m):
        idx = perm[g * m : (g + 1) * m]
        for c in range(cols):
            nnz = int((w_abs[idx, c] > 0).sum())
            kept += min(n, nnz)
            eligible += int(nnz <= n)
    return kept, eligible


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (2, 8)])
def test_permutation_scores_match_brute_force(n: int, m: int) -> None:
    w = torch.randn(2 * m, 3 * m)
    w_abs = w.abs() * masks.nm_mask_reference(w, n, m)
    perms = torch.stack([torch.randperm(2 * m) for _ in range(4)])
    kept = masks.permutation_scores_reference(w_abs, perms, n, m, "kept")
    eligible = masks.permutation_scores_reference(w_abs, perms, n, m, "eligible")
    magnitude = masks.permutation_scores_reference(w_abs, perms, n, m, "magnitude")
    for k in range(4):
        bk, be = _brute_backward_counts(w_abs, perms[k], n, m)
        assert int(kept[k]) == bk and int(eligible[k]) == be
        mb = masks.backward_mask(w, w_abs > 0, perms[k], n, m)
        assert int(mb.sum()) == bk  # the backward mask keeps exactly the "kept" count
        assert float(magnitude[k]) == pytest.approx(float((w_abs * mb).sum()), rel=1e-5)
    dispatched = masks.permutation_scores(w_abs, perms, n, m, "kept")
    assert torch.equal(dispatched.float(), kept)


def test_permutation_scorer_validation() -> None:
    with pytest.raises(BadInputError):
        masks.permutation_scores_reference(torch.rand(4, 4), torch.arange(4)[None], 2, 4, "best")


def _best_block_brute(block: torch.Tensor, n: int, m: int) -> float:
    best = -1.0
    for pos in itertools.combinations(range(m * m), n * m):
        mask = torch.zeros(m * m, dtype=torch.bool)
        mask[list(pos)] = True
        mask = mask.reshape(m, m)
        if bool((mask.sum(0) == n).all()) and bool((mask.sum(1) == n).all()):
            best = max(best, float(block[mask].sum()))
    return best


@pytest.mark.parametrize("n", [1, 2, 3])
def test_transposable_mask_valid_and_optimal(n: int) -> None:
    w = torch.randn(8, 8)
    mask = masks.transposable_mask_reference(w, n, 4)
    assert bool((mask.reshape(8, 2, 4).sum(-1) == n).all())  # rows: N:M along inputs
    assert bool((mask.t().reshape(8, 2, 4).sum(-1) == n).all())  # columns: N:M along outputs
    for bi in range(2):
        for bj in range(2):
            block = w.abs()[bi * 4 : bi * 4 + 4, bj * 4 : bj * 4 + 4]
            chosen = float(block[mask[bi * 4 : bi * 4 + 4, bj * 4 : bj * 4 + 4]].sum())
            assert chosen == pytest.approx(_best_block_brute(block, n, 4), abs=1e-5)


def test_transposable_pattern_counts() -> None:
    assert masks.transposable_patterns(2, 4).shape[0] == 90
    assert masks.transposable_patterns(1, 4).shape[0] == 24
    with pytest.raises(BadInputError):
        masks.transposable_patterns(2, 8)


def test_unstructured_mask_ties_follow_index_order() -> None:
    w = torch.tensor([[1.0, -2.0, 2.0, 1.0], [2.0, 1.0, -1.0, 0.0]])
    # |w| sorted stably: the three 2s (indices 1, 2, 4), then the 1s in index order (0, 3, 5, 6)
    assert masks.unstructured_mask(w, 0.5).reshape(-1).nonzero().flatten().tolist() == [0, 1, 2, 4]
    assert int(masks.unstructured_mask(w, 1.0).sum()) == 8 and int(masks.unstructured_mask(w, 0.0).sum()) == 0


# --------------------------------------------------------------------------- second round: edge densities, dtypes


def test_unstructured_mask_edge_densities() -> None:
    w = torch.tensor([[0.5, -3.0, 2.0, 1.0], [float("nan"), 0.25, -4.0, 0.0]])
    one = masks.unstructured_mask(w[:1], 0.25)  # round(0.25 * 4) = 1: only the largest |w|
    assert one.dtype == torch.bool and one.tolist() == [[False, True, False, False]]
    none = masks.unstructured_mask(w, 0.05)  # round(0.4) = 0
    assert none.dtype == torch.bool and not bool(none.any()) and none.shape == w.shape
    every = masks.unstructured_mask(w, 1.0)  # keep = numel: every weight, whatever its value (NaN too)
    assert every.dtype == torch.bool and bool(every.all()) and every.shape == w.shape
    # the all-or-nothing masks live on the weight's device (meta: shapes and devices only, no data)
    assert masks.unstructured_mask(w.to("meta"), 0.0).device.type == "meta"
    assert masks.unstructured_mask(w.to("meta"), 1.0).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spatial_mask_has_the_weight_dtype(dtype: torch.dtype) -> None:
    w = torch.randn(4, 8, 3, 3, dtype=dtype)
    s = masks.spatial_mask_reference(w, 2, 4)
    assert s.dtype == dtype and s.shape == (3, 3)
    assert set(s.flatten().tolist()) <= {0.0, 1.0}


def test_group_axis_size_per_layout_and_rank() -> None:
    assert masks.group_axis_size((8, 6, 3, 3)) == 6  # default layout: cin, the input channels
    assert masks.group_axis_size((8, 6, 3, 3), "flat") == 54
    assert masks.group_axis_size((8, 6, 3), "cin") == 6  # Conv1d
    assert masks.group_axis_size((8, 6, 3), "flat") == 18
    assert masks.group_axis_size((8, 6), "cin") == masks.group_axis_size((8, 6), "flat") == 6  # Linear


def test_gemm_views_exact_layout() -> None:
    w = torch.arange(8 * 4 * 3, dtype=torch.float32).reshape(8, 4, 3)  # Conv1d [O, I, k], O != I
    cin = masks.to_gemm_matrix(w)  # default layout: cin, I innermost: column k * I + i holds w[o, i, k]
    assert cin.shape == (8, 12) and torch.equal(cin, masks.to_gemm_matrix(w, "cin"))
    assert all(float(cin[o, k * 4 + i]) == float(w[o, i, k]) for o in (0, 7) for i in range(4) for k in range(3))
    flat = masks.to_gemm_matrix(w, "flat")  # row-major: column i * k + tap
    assert flat.shape == (8, 12) and torch.equal(flat, w.reshape(8, 12))
    assert torch.equal(masks.from_gemm_matrix(cin, w.shape), w)  # default layout: cin
    assert torch.equal(masks.from_gemm_matrix(flat, w.shape, "flat"), w)
    conv2d = torch.randn(8, 4, 3, 3)
    assert masks.to_gemm_matrix(conv2d, "flat").shape == (8, 36)
    assert torch.equal(masks.to_gemm_matrix(conv2d), conv2d.permute(0, 2, 3, 1).reshape(8, 36))


def test_layout_error_message() -> None:
    with pytest.raises(BadInputError) as err:
        masks.check_layout("nhwc")
    assert str(err.value) == "layout must be one of ('cin', 'flat'), got 'nhwc'"


@pytest.mark.parametrize(
    ("n", "m", "expected"),
    [
        ("2", 4, "N:M pattern needs integers, got n='2', m=4"),
        (True, 4, "N:M pattern needs integers, got n=True, m=4"),
        (2, True, "N:M pattern needs integers, got n=2, m=True"),
        (2, 4.0, "N:M pattern needs integers, got n=2, m=4.0"),
        (1, 0, "M must be in [1, 32] (the kernels' limit), got 1:0"),
        (2, 33, "M must be in [1, 32] (the kernels' limit), got 2:33"),
        (0, 4, "N (weights kept per group) must be in [1, M=4], got 0:4"),
        (5, 4, "N (weights kept per group) must be in [1, M=4], got 5:4"),
    ],
)
def test_pattern_validation_messages(n: object, m: object, expected: str) -> None:
    with pytest.raises(BadInputError) as err:
        NMPattern(n, m)  # type: ignore[arg-type]
    assert str(err.value) == expected


def test_pattern_bounds_properties_and_parse_messages() -> None:
    for n, m in [(1, 1), (32, 32), (1, 32), (4, 4)]:
        assert (NMPattern(n, m).n, NMPattern(n, m).m) == (n, m)
    assert (NMPattern(1, 4).density, NMPattern(1, 4).sparsity) == (0.25, 0.75)
    assert (NMPattern(3, 8).density, NMPattern(3, 8).sparsity, str(NMPattern(3, 8))) == (0.375, 0.625, "3:8")
    assert parse_pattern([2, 8]) == NMPattern(2, 8) and parse_pattern(NMPattern(1, 4)) == NMPattern(1, 4)
    for spec, expected in [
        ("a:b", "cannot parse N:M pattern 'a:b'; write it as 'N:M', e.g. '2:4'"),
        ("2:4:8", "cannot parse N:M pattern '2:4:8'; write it as 'N:M', e.g. '2:4'"),
        (2.5, "cannot parse N:M pattern 2.5; use 'N:M', (n, m) or {'n': .., 'm': ..}"),
        ({"n": 2, "m": 4, "k": 1}, "cannot parse N:M pattern {'n': 2, 'm': 4, 'k': 1}; use 'N:M', (n, m) or {'n': .., 'm': ..}"),
        ((2, 4, 8), "cannot parse N:M pattern (2, 4, 8); use 'N:M', (n, m) or {'n': .., 'm': ..}"),
    ]:
        with pytest.raises(BadInputError) as err:
            parse_pattern(spec)
        assert str(err.value) == expected
