"""Knowledge-distillation losses and a frozen teacher.

Why: several methods (quantization-aware training, sparse training, token pruning) recover
accuracy by distilling from the uncompressed model. One tested copy of the Hinton loss (with
its ``T^2`` factor) and of "a teacher that never trains" avoids subtle differences between
packages (a teacher left in train mode silently updates its BatchNorm statistics).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.errors import BadInputError

__all__ = ["FrozenTeacher", "feature_mse", "kd_kl_loss", "soft_cross_entropy"]

_REDUCTIONS = ("batchmean", "sum", "mean", "none")


def _check(student: Tensor, teacher: Tensor, temperature: float) -> None:
    if student.shape != teacher.shape:
        raise BadInputError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    if not temperature > 0:
        raise BadInputError(f"temperature must be > 0, got {temperature}")


def kd_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last dim.

    ``reduction`` is that of :func:`torch.nn.functional.kl_div` (``batchmean``: sum divided
    by the batch size, the true KL mean). The ``T^2`` factor keeps gradient magnitudes
    comparable across temperatures. No gradient flows into the teacher.
    """
    _check(student_logits, teacher_logits, temperature)
    if reduction not in _REDUCTIONS:
        raise BadInputError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    flat_s = log_p_student.reshape(-1, log_p_student.shape[-1])
    flat_t = log_p_teacher.reshape(-1, log_p_teacher.shape[-1])
    kl = F.kl_div(flat_s, flat_t, reduction=reduction, log_target=True)  # type: ignore[arg-type]
    if reduction == "none":
        kl = kl.reshape(log_p_student.shape)
    return kl * (temperature**2)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross entropy of the student against the teacher's softened distribution, batch mean, times ``T^2``.

    Equals :func:`kd_kl_loss` plus the teacher's entropy (constant in the student), so both give
    the same gradient; this is the form DeiT-style soft distillation uses.
    """
    _check(student_logits, teacher_logits, temperature)
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_sample = -(p_teacher * log_p_student).sum(dim=-1)
    return per_sample.mean() * (temperature**2)


def feature_mse(student_feat: Tensor, teacher_feat: Tensor, adapter: nn.Module | None = None) -> Tensor:
    """Mean squared error between (adapted) student features and detached teacher features.

    ``adapter`` (say an ``nn.Linear`` or 1x1 conv) maps the student's width to the teacher's.
    """
    student = adapter(student_feat) if adapter is not None else student_feat
    if student.shape != teacher_feat.shape:
        raise BadInputError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher_feat.shape)} differ")
    return F.mse_loss(student, teacher_feat.detach())


class FrozenTeacher(nn.Module):
    """Wraps a teacher: always in eval mode, no parameter requires grad, forward under ``no_grad``.

    ``train()`` on a model containing it (or on it) leaves the teacher in eval mode, so its
    BatchNorm statistics and dropout never change during distillation.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        for param in teacher.parameters():
            param.requires_grad_(False)
        nn.Module.train(self, False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """No-op: the teacher stays in eval mode."""
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.teacher(*args, **kwargs)
