"""KITTI-format scene folders as a torch Dataset, and the batch collation the detector and the losses read.

A scene folder is KITTI's ``training`` layout: ``velodyne/<id>.bin`` (required), ``label_2/<id>.txt`` and
``calib/<id>.txt`` (both required for labels; without ``label_2`` the scenes are unlabeled). The
simulator writes exactly this; real KITTI data reads the same way (``DontCare`` and classes outside
``classes`` are skipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kd3d.kitti import label_to_velo, read_bin, read_calib, read_labels
from slimkit.errors import BadInputError
from slimkit.paths import check_input_dir

__all__ = ["KittiScenes", "collate"]


class KittiScenes(Dataset[dict[str, Any]]):
    """Scenes of one KITTI-format folder: each item ``{"id", "points" [N, features], "boxes" [n, 7], "labels" [n]}``.

    Everything is validated on construction (missing folders, no scans, unreadable labels or calibs,
    scans whose size is not whole points), so a bad folder fails before training starts.
    """

    def __init__(self, folder: str | Path, classes: list[str], features: int = 4, what: str = "scene folder",
                 validate: bool = True) -> None:  # fmt: skip
        self.folder = check_input_dir(folder, what)
        velo = self.folder / "velodyne"
        if not velo.is_dir():
            raise BadInputError(f"{what} {self.folder} has no velodyne/ folder (KITTI layout: velodyne/, label_2/, calib/)")
        self.ids = sorted(p.stem for p in velo.glob("*.bin"))
        if not self.ids:
            raise BadInputError(f"{what} {self.folder} is empty: no .bin scans in velodyne/")
        self.classes = list(classes)
        self.features = features
        self.labeled = (self.folder / "label_2").is_dir()
        if validate:
            for i in self.ids:
                size = (velo / f"{i}.bin").stat().st_size
                if size % (4 * features):
                    raise BadInputError(f"{velo / (i + '.bin')}: {size} bytes is not a multiple of {4 * features} bytes "
                                        f"({features} float32 per point)")  # fmt: skip
                if self.labeled:
                    self._labels(i)

    def __len__(self) -> int:
        return len(self.ids)

    def _labels(self, scene_id: str) -> tuple[np.ndarray, np.ndarray]:
        label = self.folder / "label_2" / f"{scene_id}.txt"
        calib = self.folder / "calib" / f"{scene_id}.txt"
        if not label.is_file():
            raise BadInputError(f"label not found: {label}")
        if not calib.is_file():
            raise BadInputError(f"calib not found: {calib} (labels are camera-frame; the calib maps them to the LiDAR)")
        cal = read_calib(calib)
        boxes, labels = [], []
        for obj in read_labels(label):
            if obj.type in self.classes:
                boxes.append(label_to_velo(obj, cal))
                labels.append(self.classes.index(obj.type))
        return np.array(boxes, dtype=np.float64).reshape(-1, 7), np.array(labels, dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene_id = self.ids[index]
        points = read_bin(self.folder / "velodyne" / f"{scene_id}.bin", self.features)
        boxes, labels = self._labels(scene_id) if self.labeled else (np.zeros((0, 7)), np.zeros(0, dtype=np.int64))
        return {"id": scene_id, "points": torch.from_numpy(points.copy()),
                "boxes": torch.from_numpy(boxes).float(), "labels": torch.from_numpy(labels)}  # fmt: skip


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``points [sum N, 1 + F]`` with the batch index first, and per-sample ``boxes`` / ``labels`` lists."""
    pts: list[Tensor] = []
    for b, item in enumerate(items):
        p = item["points"]
        pts.append(torch.cat([torch.full((p.shape[0], 1), float(b)), p], dim=1))
    return {"points": torch.cat(pts), "boxes": [i["boxes"] for i in items], "labels": [i["labels"] for i in items],
            "ids": [i["id"] for i in items], "batch_size": len(items)}  # fmt: skip
