"""Distillation behind one API: ``distill(student, teacher, config)`` returns the loss module training adds.

Configs (:mod:`kd3d.config`): :class:`RDDConfig` (RDD), :class:`LogitKDConfig` (heatmap-logit KD),
:class:`FeatureKDConfig` (FitNet-style feature KD with an adapter) and :class:`SparseKDConfig`
(SparseKD-style pivotal-position logit + regression KD). Each config's registered handler prepares the
student in place: the feature methods attach their adapter psi as ``student.kd3d_adapter`` (so
``slimkit.train`` optimises and checkpoints it with the student); :func:`detach` removes it again.

``kd = distill(student, teacher, cfg)``; per batch ``loss, metrics = kd(student(points), kd.teacher(points), targets)``.
The teacher is wrapped in :class:`slimkit.distill.FrozenTeacher` (eval, no grad): only the student and
its adapter receive gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kd3d.config import (
    DetectorConfig,
    FeatureKDConfig,
    KDConfig,
    LogitKDConfig,
    RDDConfig,
    SparseKDConfig,
    check_student_fits,
)
from kd3d.detector import DetectorOutput
from kd3d.rdd import proposal_rois, rdd_loss
from kd3d.registry import REGISTRY
from kd3d.targets import Targets, gather_cells
from slimkit.distill import FrozenTeacher
from slimkit.errors import BadInputError

__all__ = ["ADAPTER_NAME", "Adapter", "DistillLoss", "attach", "detach", "distill"]

ADAPTER_NAME = "kd3d_adapter"


class Adapter(nn.Module):
    """psi: a 1x1 conv + BN + ReLU from the student's neck channels to the teacher's (GID / FG / RDD)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def _neck_channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if isinstance(config, DetectorConfig):
        return config.neck_channels
    channels = getattr(model, "neck_channels", None)
    if isinstance(channels, int):
        return channels
    raise BadInputError(f"{type(model).__name__} has no DetectorConfig (.config) or int .neck_channels to size the adapter")


def _attach_adapter(model: nn.Module, kind: str, teacher_channels: int | None) -> nn.Module:
    detach(model)
    student = _neck_channels(model)
    target = teacher_channels if teacher_channels is not None else student
    if kind == "identity":
        if target != student:
            raise BadInputError(f"adapter='identity' needs equal neck widths, got student {student} vs teacher {target}")
        return model
    model.add_module(ADAPTER_NAME, Adapter(student, target))
    return model


@REGISTRY.register(RDDConfig)
def _prepare_rdd(model: nn.Module, config: RDDConfig) -> nn.Module:
    return _attach_adapter(model, config.adapter, config.teacher_channels)


@REGISTRY.register(FeatureKDConfig)
def _prepare_feature(model: nn.Module, config: FeatureKDConfig) -> nn.Module:
    return _attach_adapter(model, config.adapter, config.teacher_channels)


@REGISTRY.register(LogitKDConfig)
def _prepare_logit(model: nn.Module, config: LogitKDConfig) -> nn.Module:
    detach(model)  # logits need no adapter: the student stays as it is
    return model


@REGISTRY.register(SparseKDConfig)
def _prepare_sparsekd(model: nn.Module, config: SparseKDConfig) -> nn.Module:
    detach(model)
    return model


def attach(model: nn.Module, config: KDConfig) -> nn.Module:
    """Prepare ``model`` (the student) in place for ``config``'s distillation and return it (the entry point)."""
    result: nn.Module = REGISTRY.handler(config)(model, config)
    return result


def detach(model: nn.Module) -> nn.Module:
    """Remove what :func:`attach` added (the adapter) and return the same model: the plain student again."""
    if ADAPTER_NAME in model._modules:
        del model._modules[ADAPTER_NAME]
    return model


def _adapted(student: nn.Module, neck: Tensor) -> Tensor:
    adapter = student._modules.get(ADAPTER_NAME)
    return adapter(neck) if adapter is not None else neck


class DistillLoss(nn.Module):
    """The distillation term of one method: ``forward(student_out, teacher_out, targets=None) -> (loss, metrics)``.

    ``teacher`` is the frozen teacher (call it on the same points); the adapter is read from the student
    at every call, so the module has no parameters of its own (the student carries them).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: KDConfig) -> None:
        super().__init__()
        self.config = config
        self.teacher = FrozenTeacher(teacher)
        self._student = [student]  # not a submodule: the student is trained and saved by its own owner
        det = getattr(student, "config", None)
        self.detector_config = det if isinstance(det, DetectorConfig) else None

    @property
    def student(self) -> nn.Module:
        return self._student[0]

    def forward(
        self, student_out: DetectorOutput, teacher_out: DetectorOutput, targets: Targets | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        if student_out.heatmap.shape != teacher_out.heatmap.shape:
            raise BadInputError(f"student and teacher heatmaps differ: {list(student_out.heatmap.shape)} vs "
                                f"{list(teacher_out.heatmap.shape)} (same grid and classes needed)")  # fmt: skip
        cfg = self.config
        if isinstance(cfg, RDDConfig):
            return self._rdd(student_out, teacher_out, cfg)
        if isinstance(cfg, LogitKDConfig):
            kd = F.mse_loss(torch.sigmoid(student_out.heatmap), torch.sigmoid(teacher_out.heatmap.detach()))
            return cfg.weight * kd, {"kd_logit": float(kd.detach())}
        if isinstance(cfg, FeatureKDConfig):
            kd = F.mse_loss(_adapted(self.student, student_out.neck), teacher_out.neck.detach())
            return cfg.weight * kd, {"kd_feat": float(kd.detach())}
        return self._sparsekd(student_out, teacher_out, cfg, targets)

    def _rdd(self, s: DetectorOutput, t: DetectorOutput, cfg: RDDConfig) -> tuple[Tensor, dict[str, float]]:
        det = self.detector_config
        if det is None:
            raise BadInputError("RDD decodes proposals with the student's DetectorConfig (student.config)")
        rois = []
        for source, out in (("teacher", t), ("student", s)):
            if cfg.proposals in ("both", source):
                rois.append(proposal_rois(out.heatmap, out.regression, det, cfg.num_proposals, cfg.score_threshold,
                                          cfg.roi_scale, cfg.min_roi_cells))  # fmt: skip
        parts = rdd_loss(_adapted(self.student, s.neck), t.neck, s.heatmap, t.heatmap, torch.cat(rois), cfg)
        loss = cfg.alpha_feat * parts.feat + cfg.alpha_logit * parts.logit
        return loss, {"kd_feat": float(parts.feat.detach()), "kd_logit": float(parts.logit.detach()),
                      "kd_pairs": float(parts.pairs), "kd_selected": float(parts.selected)}  # fmt: skip

    def _sparsekd(
        self, s: DetectorOutput, t: DetectorOutput, cfg: SparseKDConfig, targets: Targets | None
    ) -> tuple[Tensor, dict[str, float]]:
        if targets is None:
            raise BadInputError("SparseKD-style KD needs the batch's targets (its foreground mask and centres)")
        s_prob, t_prob = torch.sigmoid(s.heatmap), torch.sigmoid(t.heatmap.detach())
        fg = (targets.heatmap.to(s_prob.device).amax(dim=1, keepdim=True) > cfg.fg_threshold).float()
        mask = t_prob.amax(dim=1, keepdim=True) * fg
        cls = ((s_prob - t_prob).pow(2) * mask).sum() / mask.sum().clamp_min(1e-4)
        index, obj = targets.index.to(s_prob.device), targets.mask.to(s_prob.device)[..., None]
        diff = torch.abs(gather_cells(s.regression, index) - gather_cells(t.regression.detach(), index)) * obj
        reg = diff.sum() / obj.sum().clamp_min(1e-4)
        loss = cfg.cls_weight * cls + cfg.reg_weight * reg
        return loss, {"kd_logit": float(cls.detach()), "kd_reg": float(reg.detach())}


def distill(student: nn.Module, teacher: nn.Module, config: KDConfig) -> DistillLoss:
    """Prepare ``student`` for ``config`` (its adapter sized to the teacher's neck) and return the loss module."""
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if isinstance(s_cfg, DetectorConfig) and isinstance(t_cfg, DetectorConfig):
        check_student_fits(s_cfg, t_cfg)
    if isinstance(config, (RDDConfig, FeatureKDConfig)) and config.teacher_channels is None:
        prepared: Any = type(config)(**{**config.__dict__, "teacher_channels": _neck_channels(teacher)})
    else:
        prepared = config
    attach(student, prepared)
    return DistillLoss(student, teacher, prepared)
