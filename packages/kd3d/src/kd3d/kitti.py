"""KITTI object-detection files: velodyne ``.bin`` scans, ``label_2`` lines and ``calib`` matrices, plus open3d
point-cloud I/O (``.pcd`` / ``.ply`` with an intensity attribute).

Boxes inside kd3d are LiDAR-frame ``[x, y, z_centre, l, w, h, yaw]``; KITTI labels hold camera-frame bottom
centres and ``rotation_y``. :func:`velo_to_label` / :func:`label_to_velo` convert with the calib's
``R0_rect`` and ``Tr_velo_to_cam`` (``ry = -yaw - pi/2``), so the simulator's folders and real KITTI
folders read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kd3d.boxes import limit_period
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import atomic_write

__all__ = [
    "Calib",
    "KittiObject",
    "calib_text",
    "default_calib",
    "format_label",
    "label_to_velo",
    "parse_label_line",
    "read_bin",
    "read_calib",
    "read_labels",
    "read_points",
    "velo_to_label",
    "write_bin",
    "write_calib",
    "write_points",
]

Array = NDArray[np.float64]
LABEL_FIELDS = 15  # type, truncated, occluded, alpha, bbox (4), h, w, l, x, y, z, ry (score optional)
BIN_RECORD = 16  # x, y, z, intensity as float32


@dataclass
class Calib:
    """``P2`` (3 x 4), ``R0_rect`` (3 x 3) and ``Tr_velo_to_cam`` (3 x 4), as in KITTI's calib files."""

    P2: Array
    R0_rect: Array
    Tr_velo_to_cam: Array
    extra: dict[str, Array] = field(default_factory=dict)

    @property
    def velo_to_rect(self) -> Array:
        """4 x 4: LiDAR -> rectified camera frame."""
        r0 = np.eye(4)
        r0[:3, :3] = self.R0_rect
        tr = np.eye(4)
        tr[:3, :4] = self.Tr_velo_to_cam
        return r0 @ tr


def default_calib() -> Calib:
    """The simulator's calibration: KITTI's axis convention (camera x right, y down, z forward), no offsets,
    a KITTI-like ``P2`` (for the 2D boxes written to ``label_2``)."""
    tr = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    p2 = np.array([[721.5377, 0.0, 609.5593, 0.0], [0.0, 721.5377, 172.854, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return Calib(P2=p2, R0_rect=np.eye(3), Tr_velo_to_cam=tr)


def read_calib(path: str | Path) -> Calib:
    """Parse a KITTI calib file (``key: 12 or 9 numbers`` per line; ``Tr_velo_cam`` accepted as an alias)."""
    values: dict[str, Array] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, rest = line.partition(":")
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise CorruptFileError(f"calib {path} line {n}: {exc}") from exc
    tr = values.get("Tr_velo_to_cam", values.get("Tr_velo_cam"))
    if tr is None or tr.size != 12 or "R0_rect" not in values or values["R0_rect"].size != 9:
        raise CorruptFileError(f"calib {path} lacks R0_rect (9 numbers) or Tr_velo_to_cam (12 numbers)")
    p2 = values.get("P2", np.zeros(12))
    extra = {k: v for k, v in values.items() if k not in ("P2", "R0_rect", "Tr_velo_to_cam", "Tr_velo_cam")}
    return Calib(P2=p2.reshape(3, 4), R0_rect=values["R0_rect"].reshape(3, 3), Tr_velo_to_cam=tr.reshape(3, 4), extra=extra)


def _fmt(values: Array) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(values).flatten())


def calib_text(calib: Calib) -> str:
    lines = [f"P{i}: {_fmt(calib.P2)}" for i in range(4)]
    lines += [f"R0_rect: {_fmt(calib.R0_rect)}", f"Tr_velo_to_cam: {_fmt(calib.Tr_velo_to_cam)}",
              f"Tr_imu_to_velo: {_fmt(np.eye(4)[:3])}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_calib(path: str | Path, calib: Calib) -> None:
    with atomic_write(path) as f:  # never a half-written calib beside complete scans
        f.write(calib_text(calib))


def read_bin(path: str | Path, features: int = 4) -> NDArray[np.float32]:
    """A velodyne scan ``[N, features]`` float32; a size that is not whole records is refused."""
    p = Path(path)
    size = p.stat().st_size
    record = 4 * features
    if size % record:
        raise CorruptFileError(f"{p}: {size} bytes is not a multiple of {record} bytes "
                               f"({features} float32 per point)")  # fmt: skip
    return np.fromfile(p, dtype=np.float32).reshape(-1, features)


def write_bin(path: str | Path, points: NDArray[np.floating]) -> None:
    np.ascontiguousarray(points, dtype=np.float32).tofile(Path(path))


@dataclass
class KittiObject:
    """One ``label_2`` line."""

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: list[float]
    hwl: list[float]
    location: list[float]
    rotation_y: float
    score: float | None = None


def parse_label_line(line: str, where: str = "label") -> KittiObject:
    parts = line.split()
    if len(parts) < LABEL_FIELDS:
        raise CorruptFileError(f"{where} has {len(parts)} fields, expected {LABEL_FIELDS} "
                               "(type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry)")  # fmt: skip
    try:
        nums = [float(v) for v in parts[1:]]
    except ValueError as exc:
        raise CorruptFileError(f"{where}: {exc}") from exc
    return KittiObject(type=parts[0], truncated=nums[0], occluded=int(nums[1]), alpha=nums[2], bbox=nums[3:7],
                       hwl=nums[7:10], location=nums[10:13], rotation_y=nums[13],
                       score=nums[14] if len(nums) > 14 else None)  # fmt: skip


def read_labels(path: str | Path) -> list[KittiObject]:
    """Every object of a ``label_2`` file (an empty file: no objects)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path} is not a KITTI label text file ({exc.reason} at byte {exc.start})") from None
    return [parse_label_line(line, f"{path} line {n}") for n, line in enumerate(lines, 1) if line.strip()]


def label_to_velo(obj: KittiObject, calib: Calib) -> Array:
    """``[x, y, z_centre, l, w, h, yaw]`` in the LiDAR frame."""
    h, w, length = obj.hwl
    bottom = np.linalg.inv(calib.velo_to_rect) @ np.array([*obj.location, 1.0])
    yaw = float(limit_period(-obj.rotation_y - np.pi / 2))
    return np.array([bottom[0], bottom[1], bottom[2] + h / 2, length, w, h, yaw])


def _image_box(box: Array, calib: Calib) -> list[float]:
    x, y, z, length, w, h, yaw = box
    local = np.array([[sx * length / 2, sy * w / 2, sz * h / 2] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)])
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    corners = local @ rot.T + np.array([x, y, z])
    cam = (calib.velo_to_rect @ np.c_[corners, np.ones(8)].T)[:3]
    if (cam[2] <= 0.1).any():
        return [0.0, 0.0, 0.0, 0.0]
    uv = calib.P2 @ np.r_[cam, np.ones((1, 8))]
    u, v = uv[0] / uv[2], uv[1] / uv[2]
    return [float(np.clip(u.min(), 0, 1241)), float(np.clip(v.min(), 0, 374)),
            float(np.clip(u.max(), 0, 1241)), float(np.clip(v.max(), 0, 374))]  # fmt: skip


def velo_to_label(box: Sequence[float], name: str, calib: Calib, occluded: int = 0, score: float | None = None) -> KittiObject:
    """The ``label_2`` object of a LiDAR-frame box (the 2D box projected through ``P2``, zeros behind the camera)."""
    b = np.asarray(box, dtype=np.float64)
    bottom = calib.velo_to_rect @ np.array([b[0], b[1], b[2] - b[5] / 2, 1.0])
    ry = float(limit_period(-b[6] - np.pi / 2))
    alpha = float(limit_period(ry - np.arctan2(bottom[0], bottom[2])))
    return KittiObject(type=name, truncated=0.0, occluded=occluded, alpha=alpha, bbox=_image_box(b, calib),
                       hwl=[float(b[5]), float(b[4]), float(b[3])], location=[float(v) for v in bottom[:3]],
                       rotation_y=ry, score=score)  # fmt: skip


def format_label(obj: KittiObject) -> str:
    nums = [obj.truncated, obj.occluded, obj.alpha, *obj.bbox, *obj.hwl, *obj.location, obj.rotation_y]
    text = f"{obj.type} " + " ".join(f"{v:.2f}" if i != 1 else str(int(v)) for i, v in enumerate(nums))
    return text + (f" {obj.score:.4f}" if obj.score is not None else "")


# --------------------------------------------------------------------------- open3d point-cloud I/O

POINT_SUFFIXES = (".bin", ".pcd", ".ply")


def read_points(path: str | Path, features: int = 4) -> NDArray[np.float32]:
    """``[N, 4]`` (x, y, z, intensity) from a KITTI ``.bin`` or an open3d-readable ``.pcd`` / ``.ply`` (intensity
    from its ``intensity`` attribute, else 0)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".bin":
        return read_bin(p, features)
    if suffix not in POINT_SUFFIXES:
        raise BadInputError(f"cannot read {p}: use one of {', '.join(POINT_SUFFIXES)}")
    import open3d as o3d

    cloud = o3d.t.io.read_point_cloud(str(p))  # type: ignore[arg-type]
    if "positions" not in cloud.point:
        raise CorruptFileError(f"{p} holds no points")
    xyz = cloud.point["positions"].numpy().astype(np.float32)
    if "intensity" in cloud.point:
        inten = cloud.point["intensity"].numpy().astype(np.float32).reshape(-1, 1)
    else:
        inten = np.zeros((len(xyz), 1), dtype=np.float32)
    return np.concatenate([xyz, inten], axis=1)


def write_points(path: str | Path, points: NDArray[np.floating]) -> None:
    """Write ``[N, 4]`` points as ``.bin`` or, through open3d's tensor API, ``.pcd`` / ``.ply`` with intensity."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".bin":
        write_bin(p, points)
        return
    if suffix not in POINT_SUFFIXES:
        raise BadInputError(f"cannot write {p}: use one of {', '.join(POINT_SUFFIXES)}")
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud()
    cloud.point["positions"] = o3d.core.Tensor(np.ascontiguousarray(points[:, :3], dtype=np.float32))  # type: ignore[call-overload]
    cloud.point["intensity"] = o3d.core.Tensor(np.ascontiguousarray(points[:, 3:4], dtype=np.float32))  # type: ignore[call-overload]
    if not o3d.t.io.write_point_cloud(str(p), cloud):  # type: ignore[arg-type]
        raise BadInputError(f"open3d could not write {p}")
