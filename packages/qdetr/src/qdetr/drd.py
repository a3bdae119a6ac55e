"""Distribution rectification distillation (DRD), the upper level: foreground-aware query matching (FQM).

Per image (see :class:`~qdetr.config.DRDConfig` for the options and their defaults):

1. :func:`fqm_select`: for each ground-truth box ``i`` the best GIoU any student box reaches,
   ``G_i``, sets the bar ``tau * G_i``; student queries whose box clears it (around at least one
   ground truth, or around all) are distilled, the rest dropped.
2. :func:`fqm_match`: each kept student query is paired with the teacher query maximizing
   ``mu_giou * GIoU - mu_l1 * L1`` between their boxes (argmax, as the paper; or a one-to-one
   Hungarian assignment).
3. :func:`drd_loss`: the mean over pairs of the L2 distance between the student's and the
   teacher's co-attended features ``D`` (the cross-attention output before its projection, read
   by :class:`CoAttendedTap`) at the configured decoder layers.

No kept query gives a zero loss (still in the graph), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from qdetr.boxes import cxcywh_to_xyxy, pairwise_giou
from qdetr.config import DRDConfig
from qdetr.ops import match_score
from slimkit.errors import BadInputError

__all__ = ["CoAttendedTap", "decoder_cross_attentions", "drd_loss", "drd_pairs", "fqm_match", "fqm_select"]


def fqm_select(student_boxes: Tensor, gt_boxes: Tensor, tau: float, select: str = "exists") -> Tensor:
    """Boolean mask ``[Q]`` of the student queries FQM distills (boxes normalized cxcywh)."""
    keep = torch.zeros(student_boxes.shape[0], dtype=torch.bool, device=student_boxes.device)
    if gt_boxes.numel() == 0 or student_boxes.numel() == 0:
        return keep
    giou = pairwise_giou(cxcywh_to_xyxy(student_boxes.detach().float()), cxcywh_to_xyxy(gt_boxes.float()))  # [Q, G]
    best = giou.max(dim=0).values  # G_i
    above = giou > tau * best
    return above.any(dim=1) if select == "exists" else above.all(dim=1)


def fqm_match(
    student_boxes: Tensor, teacher_boxes: Tensor, mu_giou: float = 2.0, mu_l1: float = 5.0, pairing: str = "argmax"
) -> tuple[Tensor, Tensor]:
    """``(student_index, teacher_index)`` pairs for the given (kept) student boxes.

    ``argmax``: every student query takes its best teacher query; ``hungarian``: a one-to-one
    assignment maximizing the total score (``min(K, T)`` pairs).
    """
    device = student_boxes.device
    k = student_boxes.shape[0]
    if k == 0 or teacher_boxes.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    score = match_score(student_boxes.detach().float(), teacher_boxes.detach().float(), mu_giou, mu_l1)
    if pairing == "argmax":
        return torch.arange(k, device=device), score.argmax(dim=1)
    rows, cols = linear_sum_assignment(score.cpu().numpy(), maximize=True)
    return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(cols, dtype=torch.long, device=device)


def drd_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Mean over rows of the L2 distance ``||D_s - D_t||_2``; zero rows give a zero that keeps the graph."""
    if student_features.shape != teacher_features.shape:
        raise BadInputError(f"student features {tuple(student_features.shape)} vs teacher {tuple(teacher_features.shape)}")
    if student_features.shape[0] == 0:
        return student_features.sum() * 0.0
    return (student_features - teacher_features.detach()).norm(dim=-1).mean()


def drd_pairs(
    student_boxes: Tensor, teacher_boxes: Tensor, labels: Sequence[dict[str, Any]], config: DRDConfig
) -> list[tuple[Tensor, Tensor]]:
    """FQM per image of a batch: ``[(student_index, teacher_index)]`` from ``[B, Q, 4]`` boxes and HF labels."""
    pairs = []
    for b, target in enumerate(labels):
        keep = fqm_select(student_boxes[b], target["boxes"], config.tau, config.select)
        kept = torch.nonzero(keep).flatten()
        s_idx, t_idx = fqm_match(student_boxes[b][kept], teacher_boxes[b], config.mu_giou, config.mu_l1, config.pairing)
        pairs.append((kept[s_idx], t_idx))
    return pairs


def decoder_cross_attentions(model: nn.Module) -> list[nn.Module]:
    """The decoder layers' cross-attention modules of a (quantized or FP) HF DETR, in layer order."""
    layers = getattr(getattr(getattr(model, "model", None), "decoder", None), "layers", None)
    if layers is None:
        raise BadInputError(f"{type(model).__name__} has no model.decoder.layers: not a transformers DETR")
    return [layer.encoder_attn for layer in layers]


class CoAttendedTap:
    """Reads the co-attended feature ``D`` (the cross-attention output projection's input, ``[B, Q, hidden]``)
    of the chosen decoder layers on every forward, by forward pre-hooks; a context manager.

    Works on the FP teacher and the quantized student alike (a :class:`~qdetr.attention.QuantAttention`
    keeps the original as ``base_layer``, whose ``o_proj`` it calls).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        attentions = decoder_cross_attentions(model)
        n = len(attentions)
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise BadInputError(f"decoder layers {bad} out of range for a {n}-layer decoder")
        self.layers = [i % n for i in layers]
        if len(set(self.layers)) != len(self.layers):  # e.g. [-1, 1] on a 2-layer decoder: one layer counted twice
            raise BadInputError(f"decoder layers {list(layers)} name one layer twice in a {n}-layer decoder")
        self.features: dict[int, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._hooked = self._projections(model)
        for i, o_proj in zip(self.layers, self._hooked, strict=True):
            self._handles.append(o_proj.register_forward_pre_hook(self._hook(i)))

    def _projections(self, model: nn.Module) -> list[nn.Module]:
        attentions = decoder_cross_attentions(model)
        return [getattr(attentions[i], "base_layer", attentions[i]).get_submodule("o_proj") for i in self.layers]

    def matches(self, model: nn.Module) -> bool:
        """Whether the hooked projections are still the ones ``model`` runs (quantizing replaces them)."""
        return all(a is b for a, b in zip(self._projections(model), self._hooked, strict=True))

    def take(self) -> dict[int, Tensor]:
        """The features of the last forward, handed over once (a stale feature is never reused)."""
        missing = [i for i in self.layers if i not in self.features]
        if missing:
            raise RuntimeError(f"no co-attended feature was recorded for decoder layers {missing}")
        features, self.features = self.features, {}
        return features

    def _hook(self, index: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self.features[index] = args[0]

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> CoAttendedTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
