"""A deterministic LiDAR simulator: cars, pedestrians and cyclists (cuboids with random poses) and a few unlabeled
poles on a ground plane, scanned by a 32-beam spinning LiDAR ray-cast with open3d's ``RaycastingScene``
(occlusion and range-dependent density come for free), with intensity and exact 3D boxes; written as
KITTI-format folders (``velodyne/*.bin``, ``label_2/*.txt``, ``calib/*.txt``) that :mod:`kd3d.data` reads.

Scene ``i`` of split ``s`` depends only on ``(seed, s, i)`` (``numpy.random.SeedSequence``): the held-out
split never shares a scene with training, whatever the sizes. Objects hit by fewer than ``min_hits``
rays are not labeled (nuScenes drops boxes without points the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kd3d.config import CLASSES
from kd3d.kitti import default_calib, format_label, velo_to_label, write_calib
from slimkit.errors import BadInputError
from slimkit.io import atomic_write, save_json
from slimkit.paths import claim_output_dir

__all__ = ["CLASS_SIZES", "Scene", "SimConfig", "simulate_scene", "tiny_sim_config", "write_kitti_folder", "write_splits"]

#: Mean (l, w, h) in metres and a relative jitter per class (KITTI-like sizes).
CLASS_SIZES = {"Car": ((4.2, 1.8, 1.55), 0.1), "Pedestrian": ((0.7, 0.65, 1.75), 0.1), "Cyclist": ((1.8, 0.6, 1.7), 0.1)}
REFLECTIVITY = {"ground": 0.25, "pole": 0.5, "Car": 0.7, "Pedestrian": 0.35, "Cyclist": 0.5}
SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}


@dataclass
class SimConfig:
    """The sensor and the scene distribution.

    - ``beams`` between ``elevation`` degrees (HDL-32E-like, -30.67 .. 10.67), ``azimuth_step`` degrees per
      column, ``sensor_height`` above the ground (m), ``range_noise`` (m, Gaussian), ``max_range`` (m).
    - ``area``: objects are placed at ``|x|, |y| <= area`` (m), at least ``min_distance`` from the sensor;
      ``objects`` (min, max) per class, ``poles`` unlabeled distractors, ``min_hits`` rays to be labeled.
    """

    beams: int = 32
    elevation: list[float] = field(default_factory=lambda: [-30.67, 10.67])
    azimuth_step: float = 0.33
    sensor_height: float = 1.73
    range_noise: float = 0.01
    max_range: float = 60.0
    area: float = 24.0
    min_distance: float = 3.0
    objects: dict[str, list[int]] = field(default_factory=lambda: {"Car": [3, 8], "Pedestrian": [1, 5], "Cyclist": [1, 3]})
    poles: int = 4
    min_hits: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.beams <= 256:
            raise BadInputError(f"beams must be 1..256, got {self.beams}")
        if not self.azimuth_step > 0 or not self.area > 0 or not self.max_range > 0:
            raise BadInputError("azimuth_step, area and max_range must be > 0")
        for name, (lo, hi) in self.objects.items():
            if name not in CLASS_SIZES or not 0 <= lo <= hi:
                raise BadInputError(f"objects[{name!r}] must be a known class with 0 <= min <= max, got {[lo, hi]}")


@dataclass
class Scene:
    """One scan: ``points [N, 4]`` (x, y, z, intensity), ``boxes [n, 7]``, ``names`` and each box's ray ``hits``."""

    points: NDArray[np.float32]
    boxes: NDArray[np.float64]
    names: list[str]
    hits: list[int]


def tiny_sim_config() -> SimConfig:
    """Scenes for the tiny test grid (12.8 m square): objects within 5.5 m, a coarse 1-degree sensor."""
    return SimConfig(area=5.5, min_distance=1.5, azimuth_step=1.0, poles=1, min_hits=3,
                     objects={"Car": [1, 2], "Pedestrian": [1, 2], "Cyclist": [0, 1]})  # fmt: skip


def _place_objects(rng: np.random.Generator, cfg: SimConfig) -> tuple[list[NDArray[np.float64]], list[str]]:
    boxes: list[NDArray[np.float64]] = []
    names: list[str] = []
    for name in CLASSES:
        lo, hi = cfg.objects.get(name, [0, 0])
        (ml, mw, mh), jitter = CLASS_SIZES[name]
        for _ in range(int(rng.integers(lo, hi + 1))):
            for _attempt in range(50):
                x, y = rng.uniform(-cfg.area, cfg.area, size=2)
                dims = np.array([ml, mw, mh]) * (1 + jitter * rng.uniform(-1, 1, size=3))
                radius = np.hypot(dims[0], dims[1]) / 2
                if np.hypot(x, y) < cfg.min_distance + radius:
                    continue
                if any(np.hypot(x - b[0], y - b[1]) < radius + np.hypot(b[3], b[4]) / 2 + 0.3 for b in boxes):
                    continue
                yaw = rng.uniform(-np.pi, np.pi)
                z = -cfg.sensor_height + dims[2] / 2
                boxes.append(np.array([x, y, z, dims[0], dims[1], dims[2], yaw]))
                names.append(name)
                break
    return boxes, names


def _box_mesh(box: NDArray[np.float64]) -> Any:
    import open3d as o3d

    x, y, z, length, w, h, yaw = box
    mesh = o3d.geometry.TriangleMesh.create_box(length, w, h)
    mesh.translate((-length / 2, -w / 2, -h / 2))
    mesh.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, float(yaw))), center=(0.0, 0.0, 0.0))
    mesh.translate((float(x), float(y), float(z)))
    return o3d.t.geometry.TriangleMesh.from_legacy(mesh)


def simulate_scene(seed: int, index: int, cfg: SimConfig | None = None, split: str = "train") -> Scene:
    """Scene ``index`` of ``split`` for ``seed``: place objects, ray-cast one LiDAR sweep, label what was hit."""
    import open3d as o3d

    cfg = cfg or SimConfig()
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_KEYS.get(split, 3), index]))
    boxes, names = _place_objects(rng, cfg)
    scene = o3d.t.geometry.RaycastingScene()
    kinds: dict[int, str] = {}
    ground = np.array([0.0, 0.0, -cfg.sensor_height - 0.05, 4 * cfg.max_range, 4 * cfg.max_range, 0.1, 0.0])
    kinds[scene.add_triangles(_box_mesh(ground))] = "ground"
    ids = []
    for box, name in zip(boxes, names, strict=True):
        gid = scene.add_triangles(_box_mesh(box))
        kinds[gid] = name
        ids.append(gid)
    for _ in range(cfg.poles):
        angle, dist = rng.uniform(-np.pi, np.pi), rng.uniform(cfg.min_distance + 2, cfg.area)
        px, py = dist * np.cos(angle), dist * np.sin(angle)
        if any(np.hypot(px - b[0], py - b[1]) < np.hypot(b[3], b[4]) / 2 + 0.5 for b in boxes):
            continue
        pole = np.array([px, py, -cfg.sensor_height + 2.0, 0.25, 0.25, 4.0, 0.0])
        kinds[scene.add_triangles(_box_mesh(pole))] = "pole"
    elev = np.deg2rad(np.linspace(cfg.elevation[0], cfg.elevation[1], cfg.beams))
    azim = np.deg2rad(np.arange(0.0, 360.0, cfg.azimuth_step))
    e, a = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    rays = np.concatenate([np.zeros_like(dirs), dirs], axis=1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))  # type: ignore[call-overload]
    t = hit["t_hit"].numpy()
    gid = hit["geometry_ids"].numpy().astype(np.int64)
    normals = hit["primitive_normals"].numpy()
    ok = np.isfinite(t) & (t <= cfg.max_range)
    t, gid, normals, dirs = t[ok], gid[ok], normals[ok], dirs[ok]
    rng_noise = t + rng.normal(0.0, cfg.range_noise, size=t.shape)
    xyz = dirs * rng_noise[:, None]
    refl = np.array([REFLECTIVITY[kinds.get(int(g), "pole")] for g in gid])
    cos_inc = np.abs((normals * dirs).sum(axis=1))
    intensity = np.clip(refl * (0.3 + 0.7 * cos_inc) * np.exp(-t / 100.0) + rng.normal(0, 0.02, size=t.shape), 0, 1)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    hits = [int((gid == g).sum()) for g in ids]
    keep = [i for i, h in enumerate(hits) if h >= cfg.min_hits]
    kept_boxes = np.array([boxes[i] for i in keep], dtype=np.float64).reshape(-1, 7)
    return Scene(points=points, boxes=kept_boxes, names=[names[i] for i in keep], hits=[hits[i] for i in keep])


def _occlusion(hits: int) -> int:
    return 0 if hits >= 100 else (1 if hits >= 20 else 2)


def write_kitti_folder(folder: str | Path, scenes: int, seed: int, cfg: SimConfig | None = None, split: str = "train",
                       progress: Any = None) -> dict[str, Any]:  # fmt: skip
    """Write ``scenes`` scans of ``split`` as a KITTI ``training``-style folder; returns counts per class."""
    out = Path(folder)
    for sub in ("velodyne", "label_2", "calib"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    calib = default_calib()
    counts = dict.fromkeys(CLASSES, 0)
    points = 0
    indices = range(scenes) if progress is None else progress(range(scenes), desc=f"simulate {split}")
    for i in indices:
        scene = simulate_scene(seed, i, cfg, split)
        name = f"{i:06d}"
        with atomic_write(out / "velodyne" / f"{name}.bin", "wb") as f:
            f.write(np.ascontiguousarray(scene.points, dtype=np.float32).tobytes())
        lines = [format_label(velo_to_label(b, n, calib, _occlusion(h)))
                 for b, n, h in zip(scene.boxes, scene.names, scene.hits, strict=True)]  # fmt: skip
        with atomic_write(out / "label_2" / f"{name}.txt") as f:
            f.write("".join(line + "\n" for line in lines))
        write_calib(out / "calib" / f"{name}.txt", calib)
        for n in scene.names:
            counts[n] += 1
        points += len(scene.points)
    return {"folder": str(out), "scenes": scenes, "objects": counts, "points_per_scene": points / max(1, scenes)}


def write_splits(output: str | Path, train: int, val: int, seed: int, cfg: SimConfig | None = None,
                 progress: Any = None) -> dict[str, Any]:  # fmt: skip
    """``output/train`` and ``output/val`` KITTI folders and ``output/simulate.json`` (the claimed output kind)."""
    out = claim_output_dir(output, "kd3d simulate")
    cfg = cfg or SimConfig()
    result = {"output": str(out), "seed": seed,
              "train": write_kitti_folder(out / "train", train, seed, cfg, "train", progress),
              "val": write_kitti_folder(out / "val", val, seed, cfg, "val", progress)}  # fmt: skip
    save_json(out / "simulate.json", {**result, "config": cfg.__dict__})
    return result

