"""qdetr.training.fit: the taps are removed when it returns, a resumed run resumes each stage; devices."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from qdetr.config import DRDConfig, QDetrConfig
from qdetr.data import CocoDetectionSet, collate, make_shapes
from qdetr.models import tiny_detr
from qdetr.quantize import calibrate
from qdetr.training import FitSettings, fit, follow_device, stage_resumes
from slimkit.errors import BadInputError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> CocoDetectionSet:
    folder = tmp_path_factory.mktemp("fit") / "d"
    make_shapes(folder, 4, seed=3)
    return CocoDetectionSet(folder)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def _fit(model: Any, teacher: Any, data: CocoDetectionSet, out: Path, **kw: Any) -> Any:
    settings = FitSettings(batch_size=2, progress=False, **kw)
    calibration = collate([data[i] for i in range(2)])["pixel_values"]
    return fit(model, data, "qdetr", out, settings, QDetrConfig(), teacher, DRDConfig(tau=0.0), calibration)


def test_fit_removes_the_drd_hooks_from_teacher_and_student(shapes: CocoDetectionSet, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = tiny_detr(shapes.num_labels).eval()
    student = copy.deepcopy(teacher)
    results = _fit(student, teacher, shapes, tmp_path / "run", steps=1, backbone_steps=0)
    assert [r.steps for r in results] == [1]
    assert _hooks(teacher) == 0 and _hooks(student) == 0  # the co-attended taps are gone


def test_resume_latest_after_a_stop_in_stage_one_starts_stage_two_afresh(
    shapes: CocoDetectionSet, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    teacher = tiny_detr(shapes.num_labels).eval()
    start = copy.deepcopy(teacher)
    out = tmp_path / "run"
    _fit(copy.deepcopy(start), teacher, shapes, out, steps=2, backbone_steps=1)
    shutil.rmtree(out / "stage2")  # as if the run had stopped at the end of stage 1
    assert stage_resumes("latest", out, ["stage1", "stage2"]) == {"stage1": "latest", "stage2": None}
    results = _fit(copy.deepcopy(start), teacher, shapes, out, steps=2, backbone_steps=1, resume="latest")
    assert [r.steps for r in results] == [1, 1] and (out / "stage2" / "checkpoints" / "final").is_dir()


def test_stage_resumes_of_a_checkpoint_path(tmp_path: Path) -> None:
    ckpt = str(tmp_path / "stage2" / "checkpoints" / "step_3")
    assert stage_resumes(ckpt, tmp_path, ["stage1", "stage2"]) == {"stage1": "latest", "stage2": ckpt}
    ckpt1 = str(tmp_path / "stage1" / "checkpoints" / "step_1")
    assert stage_resumes(ckpt1, tmp_path, ["stage1", "stage2"]) == {"stage1": ckpt1, "stage2": None}
    assert stage_resumes(None, tmp_path, ["stage2"]) == {"stage2": None}
    with pytest.raises(BadInputError, match="not a checkpoint of this run"):
        stage_resumes(str(tmp_path / "elsewhere"), tmp_path, ["stage1", "stage2"])


def test_teacher_follows_the_batches_device() -> None:
    teacher = nn.Linear(2, 2)
    follow_device(teacher, torch.device("meta"))
    assert teacher.weight.device.type == "meta"


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device="meta"))
        self.seen: list[torch.device] = []

    def forward(self, pixel_values: Tensor) -> None:
        self.seen.append(pixel_values.device)


def test_calibration_batches_go_to_the_models_device() -> None:
    model = _Recorder()
    assert calibrate(model, [torch.zeros(1, 3, 8, 8)]) == 1
    assert [d.type for d in model.seen] == ["meta"]
