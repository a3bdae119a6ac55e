"""Rotated IoU by polygon clipping and rotated NMS."""

from __future__ import annotations

import numpy as np
import pytest

from kd3d.boxes import bev_corners, convex_intersection_area, limit_period, rotated_iou_3d, rotated_iou_bev, rotated_nms


def test_identical_boxes_have_iou_one_at_any_yaw() -> None:
    for yaw in (0.0, 0.3, np.pi / 4, 2.5):
        b = np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, yaw]])
        assert rotated_iou_bev(b, b)[0, 0] == pytest.approx(1.0)
        assert rotated_iou_3d(b, b)[0, 0] == pytest.approx(1.0)


def test_axis_aligned_overlap_is_exact() -> None:
    a = np.array([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    b = np.array([[1.0, 0.0, 0.5, 2.0, 2.0, 2.0, 0.0]])
    assert rotated_iou_bev(a, b)[0, 0] == pytest.approx(2.0 / 6.0)
    assert rotated_iou_3d(a, b)[0, 0] == pytest.approx(3.0 / (16.0 - 3.0))  # 2 x 1.5 overlap


def test_square_and_its_45_degree_turn() -> None:
    a = np.array([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]])
    b = np.array([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, np.pi / 4]])
    inter = 8 * (np.sqrt(2) - 1)  # regular octagon inside a 2 x 2 square
    assert rotated_iou_bev(a, b)[0, 0] == pytest.approx(inter / (8 - inter))
    assert rotated_iou_bev(b, a)[0, 0] == pytest.approx(rotated_iou_bev(a, b)[0, 0])


def test_disjoint_and_corner_helpers() -> None:
    a = np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.3]])
    assert rotated_iou_bev(a, a + np.array([5.0, 0, 0, 0, 0, 0, 0]))[0, 0] == 0.0
    corners = bev_corners(np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]]))[0]
    assert corners.tolist() == [[2.0, 1.0], [-2.0, 1.0], [-2.0, -1.0], [2.0, -1.0]]
    assert convex_intersection_area(corners, corners) == pytest.approx(8.0)
    assert float(limit_period(3 * np.pi)) == pytest.approx(-np.pi)


def test_rotated_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0.0, 0, 0, 4, 2, 1, 0.0], [0.2, 0, 0, 4, 2, 1, 0.05], [10.0, 0, 0, 4, 2, 1, 1.0]])
    keep = rotated_nms(boxes, np.array([0.5, 0.9, 0.3]), 0.5)
    assert keep.tolist() == [1, 2]
