"""The entry point and its undo: ``attach(student, RDDConfig()) -> student`` and ``detach(student) -> student``.

* :func:`attach` prepares a student detector in place for a distillation method (the feature methods
  add their adapter psi as ``student.kd3d_adapter``); :func:`distill` does that and returns the loss module;
* :func:`detach` removes what was added: the student computes exactly what it computed before.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kd3d.config import DetectorConfig, RDDConfig
from kd3d.detector import build_detector
from kd3d.distillation import DistillLoss, attach, detach, distill
from kd3d.registry import REGISTRY

__all__ = ["ENTRY_POINT", "REGISTRY", "UNDO", "DistillLoss", "attach", "detach", "distill", "example", "load_config"]

ENTRY_POINT = attach
UNDO = detach

#: The tiny grid of :func:`example` and the tests: 12.8 m x 12.8 m, 0.4 m voxels -> a 4 x 4 BEV map.
TINY_GRID: dict[str, Any] = {"point_range": [-6.4, -6.4, -3.0, 6.4, 6.4, 1.0], "voxel_size": [0.4, 0.4, 0.1]}


def tiny_config(**overrides: Any) -> DetectorConfig:
    """A CPU-second detector: XXS-like widths on the tiny grid, one conv per stage."""
    base: dict[str, Any] = {
        **TINY_GRID, "encoder_channels": [4, 4, 8, 8, 16, 16], "encoder_layers": [1, 1, 1, 1, 1, 1],
        "bev_channels": [8, 16], "bev_layers": [1, 1], "up_channels": [8, 8], "head_channels": 8,
    }  # fmt: skip
    return DetectorConfig(**{**base, **overrides})


def load_config(data: Any) -> Any:
    """A distillation config from a tagged dict (``slimkit.io.config_to_dict`` output)."""
    return REGISTRY.config_from_dict(data)


def example(seed: int = 0) -> tuple[nn.Module, RDDConfig]:
    """A tiny random CenterPoint-Voxel (input: ``model.example_input()``) and the default RDD config."""
    return build_detector(tiny_config(), seed=seed), RDDConfig()
