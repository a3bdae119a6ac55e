"""qdetr.boxes: format conversions, areas, IoU / GIoU against hand values and a brute-force loop, degenerate boxes."""

from __future__ import annotations

import pytest
import torch

from qdetr.boxes import (
    box_area,
    check_boxes,
    cxcywh_to_xyxy,
    pairwise_giou,
    pairwise_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from slimkit.errors import BadInputError


def _random_xyxy(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.8
    size = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.5
    return torch.cat([lo, lo + size], dim=1).to(dtype)


def _giou_py(a: list[float], b: list[float]) -> float:
    """GIoU of two xyxy boxes in plain Python floats (float64), one pair at a time."""
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    cw = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0)
    ch = max(max(a[3], b[3]) - min(a[1], b[1]), 0.0)
    c = cw * ch
    return iou - ((c - union) / c if c > 0 else 0.0)


# --------------------------------------------------------------------------- conversions


def test_conversions_hand_values() -> None:
    c = torch.tensor([[0.5, 0.25, 0.5, 0.25]])
    assert cxcywh_to_xyxy(c).tolist() == [[0.25, 0.125, 0.75, 0.375]]
    assert xyxy_to_cxcywh(torch.tensor([[0.25, 0.125, 0.75, 0.375]])).tolist() == c.tolist()
    assert xywh_to_xyxy(torch.tensor([[10.0, 20.0, 30.0, 40.0]])).tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert xyxy_to_xywh(torch.tensor([[10.0, 20.0, 40.0, 60.0]])).tolist() == [[10.0, 20.0, 30.0, 40.0]]


def test_conversions_keep_leading_dims_and_dtype() -> None:
    b = torch.rand(2, 3, 4, dtype=torch.float64)
    for fn in (cxcywh_to_xyxy, xyxy_to_cxcywh, xywh_to_xyxy, xyxy_to_xywh):
        out = fn(b)
        assert out.shape == (2, 3, 4) and out.dtype == torch.float64
    half = cxcywh_to_xyxy(b.half())
    assert half.dtype == torch.float16
    assert cxcywh_to_xyxy(torch.zeros(0, 4)).shape == (0, 4)


def test_conversions_round_trip() -> None:
    # dyadic values: every intermediate is exact, so the round trip is exact
    g = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 256, (50, 4), generator=g).float() / 256
    assert torch.equal(xyxy_to_cxcywh(cxcywh_to_xyxy(dy)), dy)
    assert torch.equal(xyxy_to_xywh(xywh_to_xyxy(dy)), dy)
    xyxy = _random_xyxy(50, 1)
    assert torch.equal(xywh_to_xyxy(xyxy_to_xywh(dy)), dy)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy, rtol=0, atol=1e-7)
    r = torch.rand(50, 4, generator=g)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(r)), r, rtol=0, atol=1e-7)
    # cxcywh -> xyxy -> xywh agrees with the direct COCO reading (x = cx - w/2)
    torch.testing.assert_close(xyxy_to_xywh(cxcywh_to_xyxy(r))[:, :2], r[:, :2] - r[:, 2:] / 2)


def test_box_area_and_inverted_boxes() -> None:
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 1.0, 4.0], [0.0, 3.0, 1.0, 1.0]])
    assert box_area(b).tolist() == [6.0, 0.0, 0.0, 0.0]  # zero width, inverted x, inverted y
    assert box_area(b.reshape(2, 2, 4)).shape == (2, 2)


# --------------------------------------------------------------------------- IoU / GIoU


def test_iou_and_giou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.5, 0.5, 1.5, 1.0]])
    iou, union = pairwise_iou(a, b)
    assert union.tolist() == [[7.0, 6.0, 4.0, 4.0]]
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 1.0, 0.5 / 4]]), rtol=0, atol=1e-7)
    giou = pairwise_giou(a, b)
    # overlap: C = 9; disjoint: C = 8, union 6; identical: 1; contained: C = union, GIoU = IoU
    expected = torch.tensor([[1 / 7 - 2 / 9, -2 / 8, 1.0, 0.5 / 4]])
    torch.testing.assert_close(giou, expected, rtol=0, atol=1e-7)
    assert giou[0, 2] == 1.0


def test_giou_matches_brute_force_loop() -> None:
    a = _random_xyxy(9, 2, torch.float64)
    b = _random_xyxy(7, 3, torch.float64)
    b[0] = a[0]  # identical
    b[1] = torch.tensor([a[1, 0], a[1, 1], a[1, 0], a[1, 3]])  # zero width
    b[2] = torch.tensor([0.5, 0.5, 0.4, 0.6], dtype=torch.float64)  # inverted
    expected = torch.tensor([[_giou_py(x, y) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(pairwise_giou(a, b), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pairwise_giou(a.float(), b.float()), expected.float(), rtol=0, atol=2e-6)


def test_giou_identity_symmetry_and_range() -> None:
    a = _random_xyxy(40, 4)
    b = _random_xyxy(30, 5)
    assert torch.equal(torch.diagonal(pairwise_giou(a, a)), torch.ones(40))
    assert torch.equal(torch.diagonal(pairwise_iou(a, a)[0]), torch.ones(40))
    g = pairwise_giou(a, b)
    assert torch.equal(g, pairwise_giou(b, a).t())
    assert bool((g >= -1).all()) and bool((g <= 1).all())
    iou = pairwise_iou(a, b)[0]
    assert bool((g <= iou).all()) and bool((iou >= 0).all()) and bool((iou <= 1).all())
    # scaling every coordinate by a power of two is exact, so GIoU does not change at all
    assert torch.equal(pairwise_giou(a * 4, b * 4), g)


def test_giou_far_apart_tends_to_minus_one() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[99.0, 99.0, 100.0, 100.0]])
    g = float(pairwise_giou(a, b))
    assert -1.0 < g < -0.9997  # 2 / 10000 of the enclosing box is covered


def test_degenerate_boxes_are_finite() -> None:
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    other_point = torch.tensor([[0.2, 0.3, 0.2, 0.3]])
    line = torch.tensor([[0.1, 0.5, 0.9, 0.5]])  # zero height, collinear with itself
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    inverted = torch.tensor([[0.6, 0.6, 0.4, 0.4]])
    allb = torch.cat([point, other_point, line, box, inverted])
    g = pairwise_giou(allb, allb)
    iou, union = pairwise_iou(allb, allb)
    assert bool(torch.isfinite(g).all()) and bool(torch.isfinite(iou).all())
    assert bool((g >= -1).all()) and bool((g <= 1).all())
    assert float(g[0, 0]) == 0.0  # nothing to overlap: IoU 0, enclosing area 0
    assert float(g[0, 1]) == -1.0  # two distinct points: empty union, positive enclosing area
    assert float(g[2, 2]) == 0.0  # a line with itself: enclosing area 0
    assert float(g[0, 3]) == 0.0  # a point inside a box: IoU 0, enclosing box = union
    assert float(g[3, 3]) == 1.0
    assert float(union[4, 4]) == 0.0 and float(iou[4, 3]) == 0.0  # inverted box is empty
    expected = torch.tensor([[_giou_py(x, y) for y in allb.tolist()] for x in allb.tolist()])
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-6)


def test_pairwise_empty_and_shapes() -> None:
    a = _random_xyxy(3, 6)
    assert pairwise_giou(a, torch.zeros(0, 4)).shape == (3, 0)
    assert pairwise_giou(torch.zeros(0, 4), a).shape == (0, 3)
    iou, union = pairwise_iou(a, a[:2])
    assert iou.shape == union.shape == (3, 2)


def test_bad_boxes_raise_bad_input_error() -> None:
    with pytest.raises(BadInputError, match="4 coordinates"):
        cxcywh_to_xyxy(torch.zeros(3, 5))
    with pytest.raises(BadInputError, match="floating-point"):
        box_area(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(BadInputError, match=r"\[N, 4\]"):
        pairwise_giou(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(BadInputError, match="b must"):
        pairwise_iou(torch.zeros(3, 4), torch.zeros(3, 3))
    for fn in (xyxy_to_cxcywh, xywh_to_xyxy, xyxy_to_xywh):
        with pytest.raises(BadInputError):
            fn(torch.zeros(4, 2))
    with pytest.raises(BadInputError, match="my boxes"):
        check_boxes([0.0, 0.0, 1.0, 1.0], "my boxes")  # type: ignore[arg-type]
    check_boxes(torch.zeros(4))  # a single box is fine outside pairwise use
    with pytest.raises(BadInputError, match=r"\[N, 4\]"):
        check_boxes(torch.zeros(4), pairwise=True)
