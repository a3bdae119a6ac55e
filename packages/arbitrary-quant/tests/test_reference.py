"""DFSQ references: universal set, normalization, nearest point, fake-quant forward/backward, MinMax weights."""

from __future__ import annotations

import itertools

import pytest
import torch

from arbitrary_quant.reference import (
    binary_linear_reference,
    binary_matmul_reference,
    check_binary_linear_args,
    check_binary_matmul_args,
    check_dfsq_args,
    check_packed_matmul_args,
    dequantize_packed,
    dfsq_denormalize,
    dfsq_nearest_reference,
    dfsq_nearest_rows,
    dfsq_normalize,
    dfsq_quantize_reference,
    dfsq_universal_set,
    minmax_weight_quantize_reference,
    packed_matmul_reference,
)
from slimkit.errors import BadInputError
from slimkit.packing import pack_bits, pack_signs

# --------------------------------------------------------------------------- universal set


def test_universal_set_has_377_values_in_unit_interval() -> None:
    u = dfsq_universal_set(4)
    assert u.dtype == torch.float32 and u.dim() == 1
    assert len(u) == 377 and len(u.unique()) == 377
    assert int((u >= 0).sum()) == 189
    assert torch.equal(u, u.sort().values)
    assert float(u.min()) == -1.0 and float(u.max()) == 1.0
    assert bool((u == 0).any())
    assert torch.equal(u, -u.flip(0))  # symmetric


def test_universal_set_values_are_word_sums() -> None:
    u = dfsq_universal_set(4)
    words = [(1.0, 2.0**-i, 2.0 ** -(i + 4), 0.0) for i in range(1, 5)]
    expected = {sum(c) / 4 for c in itertools.product(*words)}
    assert set(u[u >= 0].tolist()) == expected
    # dyadic: every value is an integer multiple of 2^-10 (shift-and-add friendly)
    assert torch.equal(u * 1024, torch.round(u * 1024))


def test_universal_set_one_word_and_bad_words() -> None:
    assert dfsq_universal_set(1).tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    for bad in (0, 9, 2.0, True):
        with pytest.raises(BadInputError, match="words"):
            dfsq_universal_set(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- normalization


def test_normalize_post_relu_range_and_scale() -> None:
    x = torch.rand(2, 3, 5, 6) * torch.tensor([1.0, 5.0, 0.1]).reshape(1, 3, 1, 1)
    xn, scale, mean = dfsq_normalize(x, post_relu=True)
    assert scale.shape == mean.shape == (2, 3, 1, 1)
    assert torch.equal(mean, torch.zeros_like(mean))
    assert torch.allclose(scale, x.amax(dim=(2, 3), keepdim=True))
    assert float(xn.min()) >= 0 and torch.allclose(xn.amax(dim=(2, 3)), torch.ones(2, 3))


def test_normalize_signed_is_centred_per_sample_and_channel() -> None:
    x = torch.randn(2, 4, 7, 7) * 3 + torch.arange(4.0).reshape(1, 4, 1, 1)
    xn, scale, mean = dfsq_normalize(x, post_relu=False)
    assert torch.allclose(mean, x.mean(dim=(2, 3), keepdim=True))
    assert torch.allclose(xn.mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-6)
    assert torch.allclose(xn.abs().amax(dim=(2, 3)), torch.ones(2, 4))
    assert torch.allclose(scale, (x - mean).abs().amax(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("post_relu", [True, False])
def test_normalize_then_denormalize_is_identity(post_relu: bool) -> None:
    x = torch.randn(3, 5, 4, 4)
    x = x.relu() if post_relu else x
    x[0, 1] = 0.0  # an all-zero channel
    x[1, 2] = 2.5  # a constant channel
    xn, scale, mean = dfsq_normalize(x, post_relu)
    assert torch.isfinite(xn).all()
    assert torch.equal(xn[0, 1], torch.zeros(4, 4))
    assert torch.allclose(dfsq_denormalize(xn, scale, mean), x, atol=1e-6)


def test_normalize_rejects_non_4d() -> None:
    with pytest.raises(BadInputError, match=r"\[N, C, H, W\]"):
        dfsq_normalize(torch.zeros(3, 4), post_relu=True)


# --------------------------------------------------------------------------- nearest point


def _random_point_sets(channels: int, k: int, seed: int) -> torch.Tensor:
    u = dfsq_universal_set(4)
    g = torch.Generator().manual_seed(seed)
    rows = [u[torch.randperm(len(u), generator=g)[:k]].sort().values for _ in range(channels)]
    return torch.stack(rows)


def test_nearest_matches_brute_force_argmin() -> None:
    points = _random_point_sets(channels=6, k=16, seed=1)
    x = torch.rand(3, 6, 9, 9, generator=torch.Generator().manual_seed(2)) * 2 - 1
    got = dfsq_nearest_reference(x, points)
    dist = (x.unsqueeze(-1) - points.reshape(1, 6, 1, 1, 16)).abs()
    expected = torch.gather(points.reshape(1, 6, 1, 1, 16).expand(3, 6, 9, 9, 16), -1, dist.argmin(-1, keepdim=True))
    assert torch.equal(got, expected.squeeze(-1))


def test_nearest_ties_go_to_the_lower_point_and_repeats_are_allowed() -> None:
    points = torch.tensor([[0.0, 0.0, 0.25, 0.5], [-0.5, 0.0, 0.0, 0.5]])
    rows = torch.tensor([[0.125, 0.375, 0.0, 0.9], [-0.25, 0.25, 0.26, -1.0]])  # 0.125, 0.375, +-0.25: midpoints
    assert dfsq_nearest_rows(rows, points).tolist() == [[0.0, 0.25, 0.0, 0.5], [-0.5, 0.0, 0.5, -0.5]]


def test_nearest_shared_set_and_shape_errors() -> None:
    u = dfsq_universal_set(2)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    shared = dfsq_nearest_reference(x, u)
    assert torch.equal(shared, dfsq_nearest_reference(x, u.expand(3, -1)))
    assert bool(torch.isin(shared, u).all())
    with pytest.raises(BadInputError, match="points"):
        dfsq_nearest_reference(x, torch.zeros(4, 5))


# --------------------------------------------------------------------------- fake-quant forward / backward


@pytest.mark.parametrize("post_relu", [True, False])
def test_quantize_lands_on_denormalized_points(post_relu: bool) -> None:
    points = _random_point_sets(channels=4, k=8, seed=3)
    points[:, 0] = 0.0
    points = points.sort(dim=1).values
    x = torch.randn(2, 4, 6, 6)
    x = x.relu() if post_relu else x
    y = dfsq_quantize_reference(x, points, post_relu)
    _, scale, mean = dfsq_normalize(x, post_relu)
    levels = (y - mean) / scale
    for c in range(4):
        assert bool(torch.isclose(levels[:, c].reshape(-1, 1), points[c].reshape(1, -1), atol=1e-6).any(1).all())


def test_quantize_with_a_fine_grid_is_nearly_identity() -> None:
    grid = torch.linspace(-1, 1, 2**16 + 1)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(dfsq_quantize_reference(x, grid, post_relu=False), x, atol=1e-4)


def test_quantize_is_scale_equivariant_per_sample() -> None:
    points = _random_point_sets(channels=3, k=16, seed=4)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(dfsq_quantize_reference(4 * x, points, False), 4 * dfsq_quantize_reference(x, points, False))


def test_quantize_straight_through_gradient_is_identity() -> None:
    points = _random_point_sets(channels=3, k=4, seed=5)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    weight = torch.randn(2, 3, 5, 5)
    (dfsq_quantize_reference(x, points, post_relu=False) * weight).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, weight)


def test_quantize_keeps_dtype() -> None:
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert dfsq_quantize_reference(x, dfsq_universal_set(), post_relu=False).dtype == torch.float64


# --------------------------------------------------------------------------- MinMax weights


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_minmax_weight_levels_and_error(bits: int) -> None:
    w = torch.randn(6, 3, 3, 3)
    wq = minmax_weight_quantize_reference(w, bits)
    flat, flat_q = w.reshape(6, -1), wq.reshape(6, -1)
    delta = (flat.amax(1) - flat.amin(1)) / (2**bits - 1)
    for o in range(6):
        assert len(flat_q[o].unique()) <= 2**bits
        assert float((flat_q[o] - flat[o]).abs().max()) <= float(delta[o]) / 2 + 1e-6


def test_minmax_weight_matches_torch_fake_quant_per_channel() -> None:
    w = torch.randn(5, 4, 3, 3)
    lo, hi = w.reshape(5, -1).amin(1), w.reshape(5, -1).amax(1)
    delta = (hi - lo) / 15
    zero_point = (-torch.round(lo / delta)).int()
    expected = torch.fake_quantize_per_channel_affine(w, delta, zero_point, 0, 0, 15)
    assert torch.allclose(minmax_weight_quantize_reference(w, 4), expected, atol=1e-6)


def test_minmax_weight_constant_channel_and_ste() -> None:
    w = torch.randn(3, 8)
    w[1] = 0.7
    w.requires_grad_(True)
    wq = minmax_weight_quantize_reference(w, 4)
    assert torch.equal(wq[1], torch.full((8,), 0.7))
    wq.sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones_like(w))
    with pytest.raises(BadInputError, match="bits"):
        minmax_weight_quantize_reference(w, 0)


# --------------------------------------------------------------------------- packed / binary GEMM references


@pytest.mark.parametrize(("bits", "signed"), [(2, False), (3, True), (4, False), (8, True)])
def test_packed_matmul_reference_matches_hand_unpacking(bits: int, signed: bool) -> None:
    """Independent decode of the slimkit layout: code i in word i // vpw at bit (i % vpw) * bits."""
    torch.manual_seed(bits)
    n, k, vpw = 3, 23, 32 // bits
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = torch.randint(lo, hi + 1, (n, k))
    words = pack_bits(codes, bits, signed)
    decoded = torch.empty(n, k)
    for r in range(n):
        for i in range(k):
            v = (int(words[r, i // vpw]) & 0xFFFFFFFF) >> ((i % vpw) * bits) & ((1 << bits) - 1)
            decoded[r, i] = v - (1 << bits) if signed and v >= 1 << (bits - 1) else v
    assert torch.equal(decoded, codes.float())
    scale, zero = torch.rand(n) + 0.5, torch.rand(n) * 3
    w = (decoded - zero[:, None]) * scale[:, None]
    assert torch.equal(dequantize_packed(words, scale, zero, bits, k, signed), w)
    x = torch.randn(4, k, dtype=torch.float64)
    torch.testing.assert_close(packed_matmul_reference(x, words, scale, zero, bits, signed), x @ w.double().t())
    xh = x.half()
    y = packed_matmul_reference(xh, words, scale, None, bits, signed)
    assert y.dtype == torch.float16
    assert torch.equal(y, (xh.float() @ (decoded * scale[:, None]).half().float().t()).half())


def test_binary_references_match_popcount() -> None:
    torch.manual_seed(0)
    k = 70
    a, b = torch.randn(3, k), torch.randn(2, k)
    a[0, :5] = 0.0  # sign(0) = +1
    pa, pb = pack_signs(a), pack_signs(b)
    for i in range(3):
        for j in range(2):
            xor = sum(bin((int(pa[i, w]) ^ int(pb[j, w])) & 0xFFFFFFFF).count("1") for w in range(pa.shape[1]))
            assert int(binary_matmul_reference(pa, pb, k)[i, j]) == k - 2 * xor  # padding bits are 0 in both
    alpha = torch.rand(2)
    sa, sb = torch.where(a >= 0, 1.0, -1.0), torch.where(b >= 0, 1.0, -1.0)
    assert torch.equal(binary_linear_reference(a, pb, alpha, k), (sa @ sb.t()) * alpha)
    assert torch.equal(binary_linear_reference(a.half(), pb, None, k), (sa @ sb.t()).half())


def test_gemm_reference_checks() -> None:
    w = pack_bits(torch.zeros(2, 9, dtype=torch.int64), 4)
    for bad in (dict(bits=0), dict(x=torch.randn(3, 17)), dict(scale=torch.ones(3)), dict(zero=torch.ones(2, 1))):
        kw = dict(x=torch.randn(3, 9), w_packed=w, scale=torch.ones(2), zero=None, bits=4) | bad
        with pytest.raises(BadInputError):
            check_packed_matmul_args(**kw)  # type: ignore[arg-type]
    s = pack_signs(torch.randn(2, 40))
    with pytest.raises(BadInputError):
        check_binary_matmul_args(s, s, 70)
    with pytest.raises(BadInputError):
        check_binary_linear_args(torch.randn(2, 39), s, None, 40)
    with pytest.raises(BadInputError):
        check_dfsq_args(torch.randn(1, 2, 3, 3), torch.zeros(3, 4))
