"""Shared fixtures: the tiny detector grid, tiny detectors and one small simulated KITTI folder per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kd3d.api import tiny_config
from kd3d.config import DetectorConfig
from kd3d.detector import CenterPointVoxel, build_detector
from kd3d.simulate import tiny_sim_config, write_kitti_folder


@pytest.fixture
def tiny_cfg() -> DetectorConfig:
    return tiny_config()


@pytest.fixture
def tiny_model(tiny_cfg: DetectorConfig) -> CenterPointVoxel:
    return build_detector(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four simulated scenes (seed 0) in KITTI layout."""
    folder = tmp_path_factory.mktemp("sim") / "train"
    write_kitti_folder(folder, 4, seed=0, cfg=tiny_sim_config())
    return folder


@pytest.fixture
def boxes_data() -> dict[str, Any]:
    """Two samples with one car and one pedestrian inside the tiny grid."""
    return {
        "boxes": [torch.tensor([[1.0, -2.0, -1.0, 4.0, 1.8, 1.5, 0.4]]), torch.tensor([[-3.0, 2.5, -1.0, 0.7, 0.6, 1.7, -1.0]])],
        "labels": [torch.tensor([0]), torch.tensor([1])],
    }
