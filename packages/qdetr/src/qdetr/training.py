"""Training a (quantized) DETR through :func:`slimkit.train.train`: the losses of every method and the two stages.

Methods (``train --method``):

- ``fp``: the full-precision DETR with its own loss (the teacher);
- ``lsq``: the quantized DETR (no distribution alignment) with the DETR loss: the paper's baseline;
- ``logit-kd``: the same plus plain logit distillation from the teacher, query by query (the
  student starts as the teacher's quantized copy, so query ``i`` of both models is the same slot);
- ``qdetr``: DA in the quantized decoder plus DRD (:mod:`qdetr.drd`): ``L = L_det + lambda L_DRD``.

The two stages of the paper: first a quantized backbone under a full-precision transformer
(``QDetrConfig(scope="backbone")``), then the whole model quantized, starting from the first
stage's weights (:func:`qdetr.quantize.apply_qdetr` extends a backbone-quantized model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from qdetr.config import DRDConfig, QDetrConfig
from qdetr.data import collate
from qdetr.drd import CoAttendedTap, drd_loss, drd_pairs
from qdetr.quantize import apply_qdetr, calibrate
from slimkit.distill import FrozenTeacher, kd_kl_loss
from slimkit.errors import BadInputError
from slimkit.train import TrainConfig, TrainResult, find_latest_checkpoint, train

__all__ = [
    "METHODS", "SCHEDULES", "FitSettings", "detr_loss", "fit", "follow_device", "logit_kd_loss", "method_loss",
    "qdetr_loss", "stage_resumes",
]  # fmt: skip

METHODS = ("fp", "lsq", "logit-kd", "qdetr")

#: Learning-rate schedules of :class:`FitSettings`: DETR's step drop (default), cosine, constant.
SCHEDULES = ("step", "cosine", "constant")

LossFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]


def _forward(model: nn.Module, batch: dict[str, Any]) -> Any:
    return model(pixel_values=batch["pixel_values"], pixel_mask=batch.get("pixel_mask"), labels=batch["labels"])


def _metrics(out: Any) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in out.loss_dict.items() if k in ("loss_ce", "loss_bbox", "loss_giou")}


def detr_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
    """DETR's own set loss (Hungarian matching, CE + L1 + GIoU, auxiliary layers)."""
    out = _forward(model, batch)
    return out.loss, _metrics(out)


def follow_device(teacher: nn.Module, device: torch.device) -> None:
    """Move ``teacher`` to ``device`` (the batch's) if it is elsewhere: :func:`slimkit.train.train`
    places the student and the batches only, so a teacher left on the CPU would meet GPU batches."""
    param = next(teacher.parameters(), None)
    if param is not None and param.device != device:
        teacher.to(device)


def logit_kd_loss(teacher: nn.Module, weight: float = 1.0, temperature: float = 1.0) -> LossFn:
    """``L_det + weight * KL(teacher || student)`` over every query's class distribution."""
    frozen = FrozenTeacher(teacher)

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        out = _forward(model, batch)
        follow_device(teacher, batch["pixel_values"].device)
        t_out = frozen(pixel_values=batch["pixel_values"], pixel_mask=batch.get("pixel_mask"))
        kd = kd_kl_loss(out.logits.flatten(0, 1), t_out.logits.flatten(0, 1), temperature)
        return out.loss + weight * kd, {**_metrics(out), "loss_kd": float(kd.detach())}

    return loss_fn


class _QDetrLoss:
    """The loss :func:`qdetr_loss` returns; :meth:`close` removes its hooks (``fit`` calls it at the end)."""

    def __init__(self, teacher: nn.Module, config: DRDConfig) -> None:
        self.teacher = teacher
        self.frozen = FrozenTeacher(teacher)
        self.config = config
        self.teacher_tap = CoAttendedTap(teacher, config.layers)
        self.taps: dict[int, CoAttendedTap] = {}

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        config = self.config
        inner = getattr(model, "module", model)
        tap = self.taps.get(id(inner))
        if tap is None or not tap.matches(inner):  # new model, or a stage that re-wrapped the decoder
            if tap is not None:
                tap.close()
            tap = self.taps[id(inner)] = CoAttendedTap(inner, config.layers)
        out = _forward(model, batch)
        follow_device(self.teacher, batch["pixel_values"].device)
        t_out = self.frozen(pixel_values=batch["pixel_values"], pixel_mask=batch.get("pixel_mask"))
        student_features, teacher_features = tap.take(), self.teacher_tap.take()
        pairs = drd_pairs(out.pred_boxes.detach(), t_out.pred_boxes, batch["labels"], config)
        kept = sum(int(s.numel()) for s, _ in pairs)
        losses = []
        for layer in tap.layers:
            student_d, teacher_d = student_features[layer], teacher_features[layer]
            s_rows = torch.cat([student_d[b, s] for b, (s, _) in enumerate(pairs)])
            t_rows = torch.cat([teacher_d[b, t] for b, (_, t) in enumerate(pairs)])
            losses.append(drd_loss(s_rows, t_rows))
        drd = torch.stack(losses).mean()
        total = out.loss + config.weight * drd
        return total, {**_metrics(out), "loss_drd": float(drd.detach()), "drd_pairs": float(kept)}

    def close(self) -> None:
        """Remove the forward hooks from the teacher and the students (the models compute as before)."""
        for tap in (self.teacher_tap, *self.taps.values()):
            tap.close()
        self.taps.clear()


def qdetr_loss(teacher: nn.Module, config: DRDConfig) -> LossFn:
    """``L_det + lambda * L_DRD`` (FQM on the final boxes; co-attended features of ``config.layers``).

    The student's taps are registered on the first call (the student passed to the loss is the
    model :func:`slimkit.train.train` prepared, possibly wrapped by DDP) and stay for the run; the
    returned callable's ``close()`` removes every hook (:func:`fit` calls it when it returns).
    """
    return _QDetrLoss(teacher, config)


@dataclasses.dataclass
class FitSettings:
    """How :func:`fit` trains: optimizer steps in all (``steps``), of which ``backbone_steps`` form the
    first stage (quantized methods), AdamW ``lr`` / ``weight_decay``, DETR's gradient clip 0.1."""

    steps: int = 300
    backbone_steps: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    max_grad_norm: float = 0.1
    warmup_steps: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    cpu: bool = True
    progress: bool = True
    resume: str | None = None
    kd_weight: float = 1.0
    schedule: str = "step"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise BadInputError("steps and batch size must be >= 1 and lr > 0")
        if self.schedule not in SCHEDULES:
            raise BadInputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.backbone_steps < self.steps:
            raise BadInputError(f"backbone steps must be in [0, steps), got {self.backbone_steps} of {self.steps}")

    def train_config(self, output_dir: Path, steps: int) -> TrainConfig:
        return TrainConfig(
            output_dir=str(output_dir), max_steps=steps, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, warmup_steps=min(self.warmup_steps, steps),
            checkpoint_every=self.checkpoint_every, seed=self.seed, cpu=self.cpu, progress=self.progress,
            resume_from=self.resume, log_every=max(1, steps // 20),
            scheduler=self.schedule,  # "step": DETR's lr x 0.1 after 2/3 of the steps (200 of 300 epochs)
            find_unused_parameters=True,  # under DDP: the FP layers a quantization stage left behind get no gradient
        )  # fmt: skip


def method_loss(method: str, teacher: nn.Module | None, drd: DRDConfig | None, kd_weight: float = 1.0) -> LossFn:
    """The loss of a ``train --method`` (see the module docstring)."""
    if method in ("fp", "lsq"):
        return detr_loss
    if teacher is None:
        raise BadInputError(f"--method {method} distils from a full-precision teacher; give one")
    if method == "logit-kd":
        return logit_kd_loss(teacher, kd_weight)
    if method == "qdetr":
        return qdetr_loss(teacher, drd or DRDConfig())
    raise BadInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def fit(
    model: nn.Module,
    train_set: Dataset[Any],
    method: str,
    output_dir: str | Path,
    settings: FitSettings,
    quant: QDetrConfig | None = None,
    teacher: nn.Module | None = None,
    drd: DRDConfig | None = None,
    calibration: Tensor | None = None,
) -> list[TrainResult]:
    """Train ``model`` in place with ``method``; quantized methods in the paper's two stages.

    ``fp``: one run of ``settings.steps`` in ``output_dir``. Otherwise ``quant`` (the full config)
    quantizes the backbone first (``scope="backbone"``, ``backbone_steps`` in ``output_dir/stage1``),
    then the rest (``output_dir/stage2``, the remaining steps); each stage starts by calibrating the
    quantizers it added on ``calibration`` (one batch of pixels every process shares);
    ``settings.resume`` resumes each stage as :func:`stage_resumes` says. The loss's hooks (DRD's
    taps on teacher and student) are removed when it returns.
    """
    out = Path(output_dir)
    if method != "fp" and (quant is None or calibration is None):
        raise BadInputError(f"--method {method} needs a quantization config and a calibration batch")
    loss_fn = method_loss(method, teacher, drd, settings.kd_weight)
    try:
        if method == "fp":
            return [train(model, train_set, settings.train_config(out, settings.steps), loss_fn=loss_fn,
                          collate_fn=collate)]  # fmt: skip
        assert quant is not None and calibration is not None
        results = []
        stages = [("stage1", "backbone", settings.backbone_steps),
                  ("stage2", "all", settings.steps - settings.backbone_steps)]  # fmt: skip
        resumes = stage_resumes(settings.resume, out, [folder for folder, _, steps in stages if steps])
        for folder, scope, steps in stages:
            if steps == 0:
                continue
            apply_qdetr(model, dataclasses.replace(quant, scope=scope))
            calibrate(model, [calibration])
            config = dataclasses.replace(settings.train_config(out / folder, steps), resume_from=resumes[folder])
            results.append(train(model, train_set, config, loss_fn=loss_fn, collate_fn=collate))
        return results
    finally:
        close = getattr(loss_fn, "close", None)
        if close is not None:
            close()


def stage_resumes(resume: str | None, out: Path, folders: list[str]) -> dict[str, str | None]:
    """What each stage folder (``out/<folder>``, in training order) resumes from.

    ``"latest"``: every stage that holds a checkpoint resumes from its newest one (a finished stage
    from its ``final`` checkpoint, so it trains no further), a stage without one starts afresh (the
    run was stopped before it began). A checkpoint path resumes its own stage; the stages before it
    had finished (``"latest"``), the ones after it start afresh. ``None``: every stage afresh.
    """
    if resume is None:
        return dict.fromkeys(folders)
    if resume == "latest":
        return {f: "latest" if find_latest_checkpoint(out / f) is not None else None for f in folders}
    path = Path(resume).resolve()
    owner = next((i for i, f in enumerate(folders) if path.is_relative_to((out / f).resolve())), None)
    if owner is None:
        raise BadInputError(f"--resume {resume} is not a checkpoint of this run's stages ({', '.join(folders)} in {out})")
    return {f: "latest" if i < owner else (resume if i == owner else None) for i, f in enumerate(folders)}
