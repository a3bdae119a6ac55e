"""The pure-torch references: voxel means (sort + segment reduction) and rotated BEV RoI sampling."""

from __future__ import annotations

import math

import pytest
import torch

from kd3d.reference import (
    roi_sample_points,
    rotated_roi_sample_reference,
    voxel_keys,
    voxelize_mean_reference,
    voxelize_naive,
)

RANGE = [-2.0, -2.0, -1.0, 2.0, 2.0, 1.0]
SIZE = [0.5, 0.5, 0.5]


def _points(n: int = 400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g, dtype=torch.float64) * 5.0 - 2.5  # some outside the range
    batch = torch.randint(0, 3, (n, 1), generator=g).double()
    return torch.cat([batch, xyz, torch.rand(n, 2, generator=g, dtype=torch.float64)], dim=1)


def test_voxel_means_equal_the_naive_loop() -> None:
    pts = _points()
    feats, coords = voxelize_mean_reference(pts, RANGE, SIZE)
    naive_feats, naive_coords = voxelize_naive(pts, RANGE, SIZE)
    assert torch.equal(coords, naive_coords)
    torch.testing.assert_close(feats, naive_feats, atol=1e-12, rtol=1e-12)


def test_voxelization_ignores_point_order_and_drops_outside_points() -> None:
    pts = _points()
    perm = torch.randperm(len(pts), generator=torch.Generator().manual_seed(3))
    a, ca = voxelize_mean_reference(pts, RANGE, SIZE)
    b, cb = voxelize_mean_reference(pts[perm], RANGE, SIZE)
    assert torch.equal(ca, cb)
    torch.testing.assert_close(a, b)
    _, inside = voxel_keys(pts, RANGE, SIZE)
    assert int(inside.sum()) < len(pts)  # the fixture does have outside points
    assert ((ca >= 0) & (ca < torch.tensor([3, 4, 8, 8]))).all()  # batch < 3, z 4 cells, y / x 8 cells


def test_max_voxels_keeps_the_first_in_key_order_of_each_sample() -> None:
    pts = _points()
    full, coords = voxelize_mean_reference(pts, RANGE, SIZE)
    cut, cut_coords = voxelize_mean_reference(pts, RANGE, SIZE, max_voxels=5)
    keep = torch.cat([torch.nonzero(coords[:, 0] == b).flatten()[:5] for b in range(3)])
    assert torch.equal(cut_coords, coords[keep]) and torch.equal(cut, full[keep])
    assert torch.bincount(cut_coords[:, 0].long()).tolist() == [5, 5, 5]


def test_a_samples_voxels_do_not_depend_on_the_rest_of_the_batch() -> None:
    pts = _points()
    alone = pts[pts[:, 0] == 2]
    _, n_alone = voxelize_mean_reference(alone, RANGE, SIZE)
    cap = n_alone.shape[0]  # sample 2 fits exactly; samples 0 and 1 are cut
    a, ca = voxelize_mean_reference(alone, RANGE, SIZE, max_voxels=cap)
    b, cb = voxelize_mean_reference(pts, RANGE, SIZE, max_voxels=cap)
    last = cb[:, 0] == 2
    assert torch.equal(cb[last], ca) and torch.equal(b[last], a)


def test_single_voxel_mean_is_exact() -> None:
    pts = torch.tensor([[0, 0.1, 0.1, 0.1, 1.0], [0, 0.2, 0.3, 0.4, 3.0], [1, 0.1, 0.1, 0.1, 5.0]], dtype=torch.float64)
    feats, coords = voxelize_mean_reference(pts, RANGE, SIZE)
    assert coords.tolist() == [[0, 2, 4, 4], [1, 2, 4, 4]]
    torch.testing.assert_close(feats[0], torch.tensor([0.15, 0.2, 0.25, 2.0], dtype=torch.float64))


def test_roi_sampling_on_cell_centres_reads_the_cells() -> None:
    feats = torch.arange(2 * 3 * 6 * 8, dtype=torch.float64).reshape(2, 3, 6, 8)
    # a 4 x 2 box centred on cell corners (4, 3): its 4 x 2 samples are the centres of cells x 2..5, y 2..3
    rois = torch.tensor([[1, 4.0, 3.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    out = rotated_roi_sample_reference(feats, rois, 4)
    assert out.shape == (1, 3, 4, 4)
    pts = roi_sample_points(rois, 4)
    assert pts[0, 0, 0].tolist() == [2.5, 2.25]
    # rows follow the width (y = 2.25: a quarter of cell row 1, three quarters of row 2), columns the cells x 2..5
    expected_row0 = 0.25 * feats[1, :, 1, 2:6] + 0.75 * feats[1, :, 2, 2:6]
    torch.testing.assert_close(out[0, :, 0, :], expected_row0)


def test_roi_sampling_rotation_and_zero_padding() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 2, 9, 9, generator=g, dtype=torch.float64)
    square = torch.tensor([[0, 4.5, 4.5, 3.0, 3.0, 0.0]], dtype=torch.float64)
    turned = square.clone()
    turned[0, 5] = math.pi / 2
    a = rotated_roi_sample_reference(feats, square, 3)
    b = rotated_roi_sample_reference(feats, turned, 3)
    # a quarter turn: sample (i, j) of the turned box is sample (j, S - 1 - i) of the square
    torch.testing.assert_close(b, a.transpose(2, 3).flip(2))
    outside = torch.tensor([[0, 40.0, 40.0, 2.0, 2.0, 0.3]], dtype=torch.float64)
    assert rotated_roi_sample_reference(feats, outside, 3).abs().max() == 0


def test_roi_sampling_gradient_reaches_features_and_rois_keep_batch_order() -> None:
    feats = torch.randn(3, 4, 8, 8, requires_grad=True)
    rois = torch.tensor([[2, 3.0, 3.0, 2.0, 2.0, 0.2], [0, 5.0, 4.0, 3.0, 1.0, -0.7], [2, 1.0, 6.0, 2.0, 2.0, 0.0]])
    out = rotated_roi_sample_reference(feats, rois, 5)
    single = torch.cat([rotated_roi_sample_reference(feats, rois[i : i + 1], 5) for i in range(3)])
    torch.testing.assert_close(out, single)
    out.sum().backward()
    assert feats.grad is not None and feats.grad[1].abs().sum() == 0 and feats.grad[0].abs().sum() > 0


@pytest.mark.parametrize("size", [1, 7])
def test_roi_sample_points_are_centred_on_the_box(size: int) -> None:
    rois = torch.tensor([[0, 2.0, -1.0, 4.0, 2.0, 0.9]])
    pts = roi_sample_points(rois, size)
    torch.testing.assert_close(pts.mean(dim=(1, 2))[0], torch.tensor([2.0, -1.0]))
