"""The open3d LiDAR simulator and the KITTI-format loader."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kd3d.boxes import bev_corners
from kd3d.data import KittiScenes, collate
from kd3d.simulate import simulate_scene, tiny_sim_config
from kd3d.visualize import bev_png, render_open3d
from slimkit.errors import BadInputError

TINY_SIM = tiny_sim_config()


def test_scenes_are_deterministic_and_splits_differ() -> None:
    a, b = simulate_scene(0, 1, TINY_SIM), simulate_scene(0, 1, TINY_SIM)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.boxes, b.boxes)
    c = simulate_scene(0, 1, TINY_SIM, split="val")
    assert not np.array_equal(a.points, c.points)


def test_labeled_objects_hold_their_points_and_the_ground_is_hit() -> None:
    scene = simulate_scene(0, 0, TINY_SIM)
    assert len(scene.boxes) >= 2 and scene.points.shape[1] == 4
    ground = scene.points[:, 2] < -TINY_SIM.sensor_height + 0.1
    assert ground.sum() > 100 and (scene.points[:, 3] >= 0).all() and (scene.points[:, 3] <= 1).all()
    for box, hits in zip(scene.boxes, scene.hits, strict=True):
        c, s = np.cos(-box[6]), np.sin(-box[6])
        d = scene.points[:, :3] - box[:3]
        local = np.stack([d[:, 0] * c - d[:, 1] * s, d[:, 0] * s + d[:, 1] * c, d[:, 2]], 1)
        inside = (np.abs(local) <= box[3:6] / 2 + 0.05).all(axis=1)
        assert inside.sum() >= 0.8 * hits >= TINY_SIM.min_hits * 0.8  # range noise may push a few out


def test_kitti_folder_reads_back_the_simulated_boxes(scene_folder: Path) -> None:
    ds = KittiScenes(scene_folder, ["Car", "Pedestrian", "Cyclist"])
    assert len(ds) == 4
    scene = simulate_scene(0, 2, TINY_SIM)
    item = ds[2]
    assert np.array_equal(item["points"].numpy(), scene.points)
    np.testing.assert_allclose(item["boxes"].numpy(), scene.boxes, atol=6e-3)
    batch = collate([ds[0], ds[1]])
    assert batch["points"].shape[1] == 5 and set(batch["points"][:, 0].tolist()) == {0.0, 1.0}


def test_bad_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "velodyne").mkdir(parents=True)
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(BadInputError, match=r"no \.bin scans"):
        KittiScenes(tmp_path / "empty", ["Car"])
    (tmp_path / "bad" / "velodyne").mkdir(parents=True)
    (tmp_path / "bad" / "velodyne" / "000000.bin").write_bytes(b"\0" * 17)
    with pytest.raises(BadInputError, match="multiple of 16"):
        KittiScenes(tmp_path / "bad", ["Car"])


def test_bev_png_draws_truth_and_predictions(tmp_path: Path) -> None:
    scene = simulate_scene(0, 0, TINY_SIM)
    pred = {"boxes": scene.boxes[:1] + np.array([0.8, 0.8, 0, 0, 0, 0, 0]), "scores": np.array([0.9]), "labels": np.array([0])}
    out = bev_png(tmp_path / "bev.png", scene.points, scene.boxes, pred, [-6.4, -6.4, -3, 6.4, 6.4, 1], classes=["Car"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    green = (image[..., 1] > 150) & (image[..., 0] < 120) & (image[..., 2] < 120)
    assert red.sum() > 50 and green.sum() > 50, (red.sum(), green.sum())
    empty = bev_png(tmp_path / "none.png", scene.points, np.zeros((0, 7)), None, [-6.4, -6.4, -3, 6.4, 6.4, 1])
    blank = np.asarray(Image.open(empty).convert("RGB")).astype(int)
    assert ((blank[..., 0] > 200) & (blank[..., 1] < 80) & (blank[..., 2] < 80)).sum() == 0
    assert bev_corners(scene.boxes).shape == (len(scene.boxes), 4, 2)


def test_open3d_render_draws_points_and_red_boxes(tmp_path: Path) -> None:
    """A real off-screen render (GPU or Mesa's software Vulkan): predictions red, truth green, points grey;
    skips with the reason where no renderer exists."""
    scene = simulate_scene(0, 0, TINY_SIM)
    try:
        render = render_open3d(tmp_path / "r.png", scene.points, scene.boxes[:2] + np.array([0.5, 0.5, 0, 0, 0, 0, 0]), size=160, truth=scene.boxes)
    except RuntimeError as exc:
        pytest.skip(f"no open3d off-screen renderer here: {exc}")
    image = np.asarray(Image.open(render).convert("RGB")).astype(int)
    assert image.shape == (160, 160, 3)
    white = (image > 240).all(axis=2)
    red = (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 100)
    grey = (np.abs(image[..., 0] - image[..., 1]) < 20) & (image[..., 0] < 150)
    assert 0.3 < white.mean() < 0.995, white.mean()  # a white background with something drawn on it
    green = (image[..., 1] > 120) & (image[..., 0] < 100) & (image[..., 2] < 100)
    assert red.sum() > 20 and green.sum() > 20 and grey.sum() > 20, (red.sum(), green.sum(), grey.sum())


def test_render_without_a_loadable_open3d_renderer_raises_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI's ``--render`` catches: a missing renderer module is a RuntimeError, not a traceback."""
    monkeypatch.setitem(sys.modules, "open3d.visualization", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="rendering is unavailable"):
        render_open3d(tmp_path / "r.png", np.zeros((3, 4)), np.zeros((0, 7)))
