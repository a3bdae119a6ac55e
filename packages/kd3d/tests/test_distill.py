"""The distillation API: attach / detach (the entry point and its undo), the baselines, the frozen teacher."""

from __future__ import annotations

import pytest
import torch

from kd3d.api import ENTRY_POINT, REGISTRY, UNDO, example, tiny_config
from kd3d.config import FeatureKDConfig, LogitKDConfig, RDDConfig, SparseKDConfig, preset
from kd3d.detector import DetectorOutput, build_detector
from kd3d.distillation import ADAPTER_NAME, Adapter, distill
from kd3d.targets import build_targets
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict

ALL = [RDDConfig(score_threshold=0.0), LogitKDConfig(), FeatureKDConfig(), SparseKDConfig()]


def _teacher():
    return build_detector(tiny_config(bev_channels=[16, 32], up_channels=[16, 16], head_channels=16), seed=1)


def test_entry_point_attaches_an_adapter_and_undo_removes_it_exactly() -> None:
    model, config = example()
    x = model.example_input()
    model.eval()
    with torch.no_grad():
        before = model(x).logits
    keys = set(model.state_dict())
    assert ENTRY_POINT(model, config) is model
    assert isinstance(getattr(model, ADAPTER_NAME), Adapter)
    assert UNDO(model) is model and ADAPTER_NAME not in model._modules
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    assert set(model.state_dict()) == keys


@pytest.mark.parametrize("config", ALL, ids=lambda c: type(c).__name__)
def test_every_method_trains_the_student_only(config, boxes_data) -> None:
    teacher, student = _teacher(), build_detector(tiny_config(), seed=0)
    kd = distill(student, teacher, config)
    x = student.example_input()
    targets = build_targets(boxes_data["boxes"], boxes_data["labels"], student.config)
    loss, metrics = kd(student(x), kd.teacher(x), targets)
    assert torch.isfinite(loss) and loss.item() > 0 and metrics
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if isinstance(config, (RDDConfig, FeatureKDConfig)):
        assert getattr(student, ADAPTER_NAME).conv.out_channels == teacher.config.neck_channels
    assert REGISTRY.config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("config", [LogitKDConfig(), FeatureKDConfig(adapter="identity"), SparseKDConfig(),
                                    RDDConfig(adapter="identity", score_threshold=0.0)], ids=lambda c: type(c).__name__)  # fmt: skip
def test_student_equal_to_teacher_gives_zero_kd(config, boxes_data) -> None:
    model = build_detector(tiny_config(), seed=0).eval()
    twin = build_detector(tiny_config(), seed=0).eval()
    kd = distill(model, twin, config)
    x = model.example_input()
    targets = build_targets(boxes_data["boxes"], boxes_data["labels"], model.config)
    out = model(x)  # one forward for both sides: spconv's CPU rounding differs from call to call
    same = DetectorOutput(heatmap=out.heatmap.detach().clone(), regression=out.regression.detach().clone(),
                          neck=out.neck.detach().clone())  # fmt: skip
    loss, _ = kd(out, same, targets)
    assert loss.item() == 0.0


def test_a_wider_student_is_refused_and_sparsekd_needs_targets() -> None:
    small_teacher = build_detector(tiny_config(), seed=0)
    wide = build_detector(tiny_config(bev_channels=[16, 32], up_channels=[16, 16]), seed=0)
    with pytest.raises(BadInputError, match="wider than its teacher"):
        distill(wide, small_teacher, RDDConfig())
    kd = distill(small_teacher, build_detector(tiny_config(), seed=1), SparseKDConfig())
    x = small_teacher.example_input()
    with pytest.raises(BadInputError, match="targets"):
        kd(small_teacher(x), kd.teacher(x))
    with pytest.raises(BadInputError, match="identity"):
        distill(build_detector(tiny_config(), seed=0), wide, FeatureKDConfig(adapter="identity"))


def test_frozen_teacher_stays_in_eval_mode() -> None:
    teacher, student = _teacher(), build_detector(tiny_config(), seed=0)
    kd = distill(student, teacher, RDDConfig())
    kd.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert preset("S").neck_channels == 256
