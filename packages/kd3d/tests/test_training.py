"""Training through slimkit.train (with distillation), exact resume, model folders, evaluation."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from kd3d.api import tiny_config
from kd3d.config import RDDConfig
from kd3d.data import KittiScenes
from kd3d.detector import build_detector
from kd3d.distillation import ADAPTER_NAME
from kd3d.training import FitSettings, evaluate, fit, load_detector, save_detector
from slimkit.errors import BadInputError

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def test_fit_with_rdd_resumes_and_drops_the_adapter(scene_folder: Path, tmp_path: Path) -> None:
    scenes = KittiScenes(scene_folder, CLASSES)
    teacher = build_detector(tiny_config(bev_channels=[16, 32], up_channels=[16, 16]), seed=1)
    settings = FitSettings(steps=2, batch_size=2, progress=False, checkpoint_every=1)
    full = build_detector(tiny_config(), seed=0)
    done = fit(full, scenes, tmp_path / "full", settings, teacher=teacher, kd=RDDConfig(score_threshold=0.0))
    assert done.steps == 2 and ADAPTER_NAME not in full._modules
    assert {"kd_feat", "kd_logit", "kd_pairs"} <= set(done.metrics[-1])
    # a run stopped after step 1 (its step_1 checkpoint) and resumed ends with exactly the same weights
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_1", tmp_path / "resumed" / "checkpoints" / "step_1")
    resumed = build_detector(tiny_config(), seed=5)
    again = dataclasses.replace(settings, resume="latest")
    second = fit(resumed, scenes, tmp_path / "resumed", again, teacher=teacher, kd=RDDConfig(score_threshold=0.0))
    assert second.steps == 2 and [m["step"] for m in second.metrics] == [2]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_kd_without_teacher_is_refused(scene_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="teacher"):
        fit(build_detector(tiny_config()), KittiScenes(scene_folder, CLASSES), tmp_path, FitSettings(steps=1), kd=RDDConfig())


def test_model_folder_round_trip_and_evaluate(scene_folder: Path, tmp_path: Path) -> None:
    model = build_detector(tiny_config(), seed=3)
    save_detector(tmp_path / "m", model, {"role": "teacher"})
    again, meta = load_detector(tmp_path / "m")
    assert meta["role"] == "teacher" and again.config == model.config
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    metrics = evaluate(again, KittiScenes(scene_folder, CLASSES), batch_size=2)
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["NDS"] <= 1.0 and metrics["scenes"] == 4
    with pytest.raises(BadInputError, match="not a kd3d model folder"):
        load_detector(scene_folder)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_on_another_device_moves_the_model(scene_folder: Path) -> None:
    """``kd3d eval --device cuda`` loads the model on the CPU and asks for CUDA: the model must follow."""
    model = build_detector(tiny_config(), seed=3)
    metrics = evaluate(model, KittiScenes(scene_folder, CLASSES), batch_size=2, device=torch.device("cuda"))
    assert 0.0 <= metrics["NDS"] <= 1.0 and next(model.parameters()).is_cuda
