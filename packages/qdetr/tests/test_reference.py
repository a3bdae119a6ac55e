"""qdetr.reference: the FQM pairing score and the DA + LSQ+ quantizer against hand computations and slimkit's LSQ."""

from __future__ import annotations

import math

import pytest
import torch

from qdetr.boxes import cxcywh_to_xyxy, pairwise_giou
from qdetr.reference import (
    DA_EPS,
    MU_GIOU,
    MU_L1,
    aligned_quantize_reference,
    compute_dtype,
    distribution_align_reference,
    lsq_plus_forward_reference,
    match_score_reference,
)
from slimkit.errors import BadInputError
from slimkit.quant import lsq_fake_quant


def _cxcywh(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.4 + 0.01
    return torch.cat([c, wh], dim=1).to(dtype)


def _da_params(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gamma = torch.rand(d, generator=g) + 0.5
    beta = torch.randn(d, generator=g) * 0.1
    step = torch.rand(d, generator=g) * 0.3 + 0.1
    offset = torch.randn(d, generator=g) * 0.1
    return gamma, beta, step, offset


# --------------------------------------------------------------------------- FQM pairing score


def test_constants_are_detr_matching_weights() -> None:
    assert (MU_GIOU, MU_L1, DA_EPS) == (2.0, 5.0, 1e-5)


def test_match_score_hand_computation() -> None:
    s = torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)
    t = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)
    # pair 0: xyxy (0.4, 0.4, 0.6, 0.6) vs (0.5, 0.4, 0.7, 0.6): inter 0.02, union 0.06, IoU 1/3,
    # enclosing 0.3 x 0.2 = 0.06 = union, so GIoU = 1/3; L1 = 0.1. Score 2/3 - 0.5 = 1/6.
    # pair 1: identical boxes, GIoU 1, L1 0: score = mu_giou.
    got = match_score_reference(s, t)
    assert got.dtype == torch.float64 and got.shape == (1, 2)
    assert math.isclose(float(got[0, 0]), 1 / 6, abs_tol=1e-12)
    assert float(got[0, 1]) == 2.0
    got2 = match_score_reference(s, t, mu_giou=1.0, mu_l1=2.0)
    assert math.isclose(float(got2[0, 0]), 1 / 3 - 0.2, abs_tol=1e-12)


def test_match_score_matches_brute_force_loop() -> None:
    s, t = _cxcywh(6, 0, torch.float64), _cxcywh(5, 1, torch.float64)
    expected = torch.empty(6, 5, dtype=torch.float64)
    for i, a in enumerate(s.tolist()):
        for j, b in enumerate(t.tolist()):
            ax = [a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2]
            bx = [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]
            inter = max(min(ax[2], bx[2]) - max(ax[0], bx[0]), 0) * max(min(ax[3], bx[3]) - max(ax[1], bx[1]), 0)
            union = a[2] * a[3] + b[2] * b[3] - inter
            c = (max(ax[2], bx[2]) - min(ax[0], bx[0])) * (max(ax[3], bx[3]) - min(ax[1], bx[1]))
            giou = inter / union - (c - union) / c
            l1 = sum(abs(x - y) for x, y in zip(a, b))
            expected[i, j] = 0.7 * giou - 1.3 * l1
    torch.testing.assert_close(match_score_reference(s, t, 0.7, 1.3), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        match_score_reference(s.float(), t.float(), 0.7, 1.3), expected.float(), rtol=0, atol=1e-5
    )


def test_match_score_decomposes_into_giou_and_l1() -> None:
    s, t = _cxcywh(7, 2), _cxcywh(4, 3)
    giou = pairwise_giou(cxcywh_to_xyxy(s), cxcywh_to_xyxy(t))
    assert torch.equal(match_score_reference(s, t, 1.0, 0.0), giou)
    assert torch.equal(match_score_reference(s, t, 2.0, 0.0), 2 * giou)
    l1 = torch.cdist(s.double(), t.double(), p=1).float()
    torch.testing.assert_close(match_score_reference(s, t, 0.0, 1.0), -l1, rtol=0, atol=1e-6)
    full = match_score_reference(s, t)
    torch.testing.assert_close(full, 2 * giou - 5 * l1, rtol=0, atol=1e-5)
    # a student box copied from a teacher box picks that teacher
    s2 = torch.cat([t[2:3], t[0:1]])
    assert match_score_reference(s2, t).argmax(dim=1).tolist() == [2, 0]
    assert torch.equal(torch.diagonal(match_score_reference(t, t)), torch.full((4,), MU_GIOU))


def test_match_score_dtypes_and_degenerate_boxes() -> None:
    s, t = _cxcywh(3, 4), _cxcywh(5, 5)
    s[0, 2] = 0.0  # zero width
    t[1] = 0.0  # a box collapsed onto the origin
    for dt in (torch.float16, torch.bfloat16):
        got = match_score_reference(s.to(dt), t.to(dt))
        assert got.dtype == torch.float32
        assert torch.equal(got, match_score_reference(s.to(dt).float(), t.to(dt).float()))
    mixed = match_score_reference(s.half(), t)
    assert mixed.dtype == torch.float32
    got = match_score_reference(s, t)
    assert bool(torch.isfinite(got).all())
    assert match_score_reference(s, t[:0]).shape == (3, 0)


def test_match_score_bad_inputs() -> None:
    with pytest.raises(BadInputError, match="student boxes"):
        match_score_reference(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(BadInputError, match="teacher boxes"):
        match_score_reference(torch.zeros(3, 4), torch.zeros(1, 2, 4))
    with pytest.raises(BadInputError, match="floating-point"):
        match_score_reference(torch.zeros(3, 4, dtype=torch.int32), torch.zeros(2, 4))


def test_compute_dtype() -> None:
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.bfloat16, torch.float16) == torch.float32
    assert compute_dtype(torch.float32, torch.float64) == torch.float64


# --------------------------------------------------------------------------- distribution alignment


def test_distribution_align_hand_values() -> None:
    q = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    got = distribution_align_reference(q, ones, zeros)
    # mean 2.5, population variance 1.25
    expected = [(v - 2.5) / math.sqrt(1.25 + 1e-5) for v in (1.0, 2.0, 3.0, 4.0)]
    torch.testing.assert_close(got[0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)
    assert got[1].tolist() == [0.0] * 4  # a constant row has nothing to standardize
    unbiased = distribution_align_reference(q, ones, zeros, eps=1e-3, unbiased=True)
    expected_u = [(v - 2.5) / math.sqrt(5 / 3 + 1e-3) for v in (1.0, 2.0, 3.0, 4.0)]
    torch.testing.assert_close(unbiased[0], torch.tensor(expected_u, dtype=torch.float64), rtol=0, atol=1e-14)
    gamma = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    beta = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
    affine = distribution_align_reference(q, gamma, beta)
    torch.testing.assert_close(affine, got * gamma + beta, rtol=0, atol=1e-14)
    assert affine[1].tolist() == beta.tolist()


def test_distribution_align_standardizes_rows() -> None:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(3, 5, 32, generator=g) * 4 + 2
    out = distribution_align_reference(q, torch.ones(32), torch.zeros(32))
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(3, 5), rtol=0, atol=1e-4)
    # the default matches torch's layer norm (population variance, eps inside the root)
    ln = torch.nn.functional.layer_norm(q, (32,), eps=1e-5)
    torch.testing.assert_close(out, ln, rtol=0, atol=1e-5)
    assert distribution_align_reference(q.half(), torch.ones(32), torch.zeros(32)).dtype == torch.float32


# --------------------------------------------------------------------------- LSQ+ forward


def test_lsq_plus_forward_equals_slimkit_lsq_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 6, 16, generator=g) * 2
    _, _, step, offset = _da_params(16, 9)
    for qmin, qmax in ((-8, 7), (0, 15), (-2, 1)):
        ours = lsq_plus_forward_reference(x, step, offset, qmin, qmax)
        theirs = lsq_fake_quant(x, step, qmin, qmax, offset=offset)
        assert torch.equal(ours, theirs)


def test_lsq_plus_forward_rounds_half_to_even_and_clamps() -> None:
    step, offset = torch.tensor(0.5), torch.tensor(0.25)
    codes = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, 9.0, -9.0, 3.0])
    x = codes * step + offset  # exact: the codes reach round() unchanged
    got = lsq_plus_forward_reference(x, step, offset, -4, 3)
    k = (got - offset) / step
    assert k.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 0.0, 3.0, -4.0, 3.0]


# --------------------------------------------------------------------------- DA + LSQ+


def test_aligned_quantize_hand_values() -> None:
    q = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ones, zeros = torch.ones(4), torch.zeros(4)
    # standardized (-1.342, -0.447, 0.447, 1.342) / 0.5 -> codes (-3, -1, 1, 3) (qmax 3), (-3, -1, 1, 2) (qmax 2)
    assert aligned_quantize_reference(q, ones, zeros, 0.5, 0.0, -4, 3).tolist() == [[-1.5, -0.5, 0.5, 1.5]]
    assert aligned_quantize_reference(q, ones, zeros, 0.5, 0.0, -4, 2).tolist() == [[-1.5, -0.5, 0.5, 1.0]]
    # unsigned grid with an offset: (y + 1.5) / 0.5 -> (0.32, 2.11, 3.89, 5.68) -> (0, 2, 4, 6) * 0.5 - 1.5
    assert aligned_quantize_reference(q, ones, zeros, 0.5, -1.5, 0, 7).tolist() == [[-1.5, -0.5, 0.5, 1.5]]
    assert aligned_quantize_reference(q, ones, zeros, 0.5, -1.5, 0, 5).tolist() == [[-1.5, -0.5, 0.5, 1.0]]


def test_aligned_quantize_is_da_then_slimkit_lsq() -> None:
    g = torch.Generator().manual_seed(10)
    q = torch.randn(2, 3, 24, generator=g) * 3 - 1
    gamma, beta, step, offset = _da_params(24, 11)
    for unbiased in (False, True):
        got = aligned_quantize_reference(q, gamma, beta, step, offset, -8, 7, unbiased=unbiased)
        y = distribution_align_reference(q, gamma, beta, DA_EPS, unbiased)
        assert torch.equal(got, lsq_fake_quant(y, step, -8, 7, offset=offset))
        k = (got - offset) / step
        torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)  # on the integer grid
        assert bool((k.round() >= -8).all()) and bool((k.round() <= 7).all())


def test_aligned_quantize_exact_integer_grid() -> None:
    """Power-of-two steps and dyadic offsets: ``(out - offset) / step`` is an integer exactly."""
    g = torch.Generator().manual_seed(12)
    q = torch.randn(5, 8, generator=g)
    step = 2.0 ** -torch.randint(1, 4, (8,), generator=g).float()
    offset = torch.randint(-4, 5, (8,), generator=g).float() / 8
    gamma, beta, _, _ = _da_params(8, 13)
    out = aligned_quantize_reference(q, gamma, beta, step, offset, -2, 1)
    k = (out - offset) / step
    assert torch.equal(k, k.round())
    assert set(k.unique().tolist()) <= {-2.0, -1.0, 0.0, 1.0}


def test_aligned_quantize_scalar_params_and_dtypes() -> None:
    g = torch.Generator().manual_seed(14)
    q = torch.randn(3, 16, generator=g)
    gamma, beta, _, _ = _da_params(16, 15)
    vec = aligned_quantize_reference(q, gamma, beta, torch.full((16,), 0.25), torch.full((16,), -0.125), -8, 7)
    assert torch.equal(aligned_quantize_reference(q, gamma, beta, 0.25, -0.125, -8, 7), vec)
    assert torch.equal(aligned_quantize_reference(q, gamma, beta, torch.tensor(0.25), torch.tensor(-0.125), -8, 7), vec)
    half = aligned_quantize_reference(q.half(), gamma, beta, 0.25, -0.125, -8, 7)
    assert half.dtype == torch.float16
    assert torch.equal(half, aligned_quantize_reference(q.half().float(), gamma, beta, 0.25, -0.125, -8, 7).half())
    dbl = aligned_quantize_reference(q.double(), gamma.double(), beta.double(), 0.25, -0.125, -8, 7)
    assert dbl.dtype == torch.float64
    assert aligned_quantize_reference(q[:0], gamma, beta, 0.25, 0.0, -8, 7).shape == (0, 16)


def test_aligned_quantize_bad_inputs() -> None:
    q = torch.randn(2, 4)
    ones, zeros = torch.ones(4), torch.zeros(4)
    cases = [
        ((q.int(), ones, zeros, 0.5, 0.0, -4, 3), "q must be a floating-point"),
        ((torch.tensor(1.0), ones, zeros, 0.5, 0.0, -4, 3), "non-empty last"),
        ((q, torch.ones(3), zeros, 0.5, 0.0, -4, 3), "gamma must have shape"),
        ((q, ones, torch.tensor(0.0), 0.5, 0.0, -4, 3), "beta must have shape"),
        ((q, ones, zeros, torch.ones(2), 0.0, -4, 3), "step must have shape"),
        ((q, ones, zeros, 0.5, "0", -4, 3), "offset must be"),
        ((q, ones, zeros, 0.5, torch.zeros(4, dtype=torch.int64), -4, 3), "offset must be a floating"),
        ((q, ones, zeros, 0.5, 0.0, 3, 3), "qmin < qmax"),
        ((q, ones, zeros, 0.5, 0.0, -4.0, 3), "qmin / qmax"),
        ((q, ones, zeros, True, 0.0, -4, 3), "step must be"),
    ]
    for args, msg in cases:
        with pytest.raises(BadInputError, match=msg):
            aligned_quantize_reference(*args)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="eps"):
        aligned_quantize_reference(q, ones, zeros, 0.5, 0.0, -4, 3, eps=0.0)
    with pytest.raises(BadInputError, match="unbiased variance"):
        aligned_quantize_reference(torch.randn(3, 1), torch.ones(1), torch.zeros(1), 0.5, 0.0, -4, 3, unbiased=True)
    one = aligned_quantize_reference(torch.randn(3, 1), torch.ones(1), torch.full((1,), 0.5), 0.5, 0.0, -4, 3)
    assert one.flatten().tolist() == [0.5, 0.5, 0.5]  # D = 1: the row is its own mean, so the output is beta
