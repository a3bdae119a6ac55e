"""KITTI files and open3d point-cloud I/O: round trips and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kd3d.kitti import (
    default_calib,
    format_label,
    label_to_velo,
    parse_label_line,
    read_bin,
    read_calib,
    read_labels,
    read_points,
    velo_to_label,
    write_calib,
    write_points,
)
from slimkit.errors import BadInputError, CorruptFileError


def test_bin_round_trip_and_bad_size(tmp_path: Path) -> None:
    pts = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    write_points(tmp_path / "a.bin", pts)
    assert np.array_equal(read_bin(tmp_path / "a.bin"), pts)
    (tmp_path / "bad.bin").write_bytes(b"\0" * 20)
    with pytest.raises(CorruptFileError, match="not a multiple of 16 bytes"):
        read_bin(tmp_path / "bad.bin")


@pytest.mark.parametrize("suffix", [".pcd", ".ply"])
def test_open3d_round_trip_keeps_intensity(tmp_path: Path, suffix: str) -> None:
    pts = np.random.default_rng(1).uniform(-5, 5, size=(40, 4)).astype(np.float32)
    write_points(tmp_path / f"a{suffix}", pts)
    np.testing.assert_allclose(read_points(tmp_path / f"a{suffix}"), pts, rtol=1e-6, atol=1e-6)
    with pytest.raises(BadInputError, match="use one of"):
        write_points(tmp_path / "a.xyz", pts)


def test_label_velo_round_trip_through_the_calib(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.txt", default_calib())
    calib = read_calib(tmp_path / "c.txt")
    box = np.array([12.3, -4.5, -0.9, 4.2, 1.8, 1.6, 0.7])
    obj = velo_to_label(box, "Car", calib, occluded=1)
    again = label_to_velo(parse_label_line(format_label(obj)), calib)
    np.testing.assert_allclose(again, box, atol=6e-3)  # KITTI writes two decimals
    assert obj.bbox[2] > obj.bbox[0] > 0  # in front of the camera: a projected 2D box


def test_labels_follow_kittis_camera_frame_and_yaw_convention() -> None:
    """Camera x right (= LiDAR -y), y down (= -z), z forward (= x); location is the box's bottom centre;
    ``rotation_y = -yaw - pi/2`` (a car heading along the LiDAR's +x faces the camera's +z: ry = -pi/2;
    one heading to the LiDAR's -y, the camera's right, has ry = 0)."""
    calib = default_calib()
    ahead = velo_to_label([10.0, 2.0, -0.9, 4.0, 1.8, 1.6, 0.0], "Car", calib)
    np.testing.assert_allclose(ahead.location, [-2.0, 1.7, 10.0], atol=1e-12)
    assert ahead.hwl == [1.6, 1.8, 4.0]
    assert ahead.rotation_y == pytest.approx(-np.pi / 2)
    right = velo_to_label([10.0, 0.0, -0.9, 4.0, 1.8, 1.6, -np.pi / 2], "Car", calib)
    assert right.rotation_y == pytest.approx(0.0, abs=1e-12)
    assert right.alpha == pytest.approx(0.0, abs=1e-12)  # straight ahead: alpha = ry - atan2(x, z) = ry
    back = label_to_velo(parse_label_line("Car 0.00 0 0.00 0 0 0 0 1.60 1.80 4.00 -2.00 1.70 10.00 0.00"), calib)
    np.testing.assert_allclose(back, [10.0, 2.0, -0.9, 4.0, 1.8, 1.6, -np.pi / 2], atol=1e-12)


def test_label_line_with_missing_fields_is_refused() -> None:
    with pytest.raises(CorruptFileError, match="has 8 fields, expected 15"):
        parse_label_line("Car 0 0 0 1 2 3 4", "label")


def test_a_label_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "000000.txt").write_bytes(b"Car \xff\xfe 0 0\n")
    with pytest.raises(CorruptFileError, match="not a KITTI label text file"):
        read_labels(tmp_path / "000000.txt")


def test_calib_without_transform_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("P2: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(CorruptFileError, match="Tr_velo_to_cam"):
        read_calib(tmp_path / "c.txt")
