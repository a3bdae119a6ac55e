"""Configurations: how a DETR is quantized (:class:`QDetrConfig`) and how it is distilled (:class:`DRDConfig`).

Serialized only through :mod:`slimkit.io` (``config_to_dict`` / ``REGISTRY.config_from_dict``);
every field is JSON-typed and lists are normalised so a config equals itself after a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimkit.errors import BadInputError

MAX_BITS = 8
SCOPES = ("all", "backbone")
ALIGNMENTS = ("cross", "both", "none")
ACT_GRANULARITIES = ("tensor", "channel")
SELECTIONS = ("exists", "all")
PAIRINGS = ("argmax", "hungarian")

#: Layers kept in full precision by default, as in the released Q-DETR code: the input projection,
#: the class and box heads, and the backbone's projection shortcuts (names of HF DetrForObjectDetection).
DEFAULT_KEEP_FP = ["model.input_projection", "class_labels_classifier", "bbox_predictor.*", "*shortcut*"]


def _bits(name: str, value: Any, low: int = 2) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_BITS:
        raise BadInputError(f"{name} must be {low}..{MAX_BITS}, got {value!r}")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _globs(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise BadInputError(f"{name} must be a list of module-name globs, got {value!r}")
    return list(items)


@dataclass
class QDetrConfig:
    """Q-DETR quantization of a Hugging Face ``DetrForObjectDetection`` ("W-A-Attention" bits, e.g. 4-4-8).

    - ``w_bits`` / ``a_bits``: every quantized conv / linear: LSQ weights (one step per output channel
      with ``per_channel``) and LSQ+ inputs (learned offset; one step per tensor or per input channel,
      ``act_granularity``; the released code uses per channel).
    - ``attn_bits``: the attention inputs q, k, v and the softmax output, one LSQ step per head (8 in the paper).
    - ``stem_bits``: the backbone's first conv (8 in the released code; ``None`` keeps it FP).
    - ``keep_fp``: module-name globs left in full precision (default: input projection, class and box
      heads, backbone shortcuts, as the released code; the paper's "MLPs quantized" ablation is
      ``keep_fp=["model.input_projection", "*shortcut*"]``).
    - ``scope``: ``"all"`` or ``"backbone"`` (the paper's first training stage: a quantized backbone,
      a full-precision transformer).
    - ``alignment``: distribution alignment (DA) of the decoder queries before they are quantized:
      ``"cross"`` (cross-attention queries, the paper's figures), ``"both"`` (self-attention too, as
      the released code) or ``"none"`` (the LSQ baseline). Each query vector is standardized over each
      head's features (``da_eps``; ``da_unbiased`` picks the variance estimator), then scaled and shifted
      by learnable ``gamma`` / ``beta`` per feature.
    """

    w_bits: int = 4
    a_bits: int = 4
    attn_bits: int = 8
    stem_bits: int | None = 8
    per_channel: bool = True
    act_granularity: str = "tensor"
    keep_fp: list[str] = field(default_factory=lambda: list(DEFAULT_KEEP_FP))
    scope: str = "all"
    alignment: str = "cross"
    da_eps: float = 1e-5
    da_unbiased: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "attn_bits"):
            _bits(name, getattr(self, name))
        if self.stem_bits is not None:
            _bits("stem_bits", self.stem_bits)
        if not isinstance(self.per_channel, bool) or not isinstance(self.da_unbiased, bool):
            raise BadInputError("per_channel and da_unbiased must be true or false")
        _one_of("act_granularity", self.act_granularity, ACT_GRANULARITIES)
        _one_of("scope", self.scope, SCOPES)
        _one_of("alignment", self.alignment, ALIGNMENTS)
        self.keep_fp = _globs("keep_fp", self.keep_fp)
        if isinstance(self.da_eps, bool) or not isinstance(self.da_eps, (int, float)) or not self.da_eps > 0:
            raise BadInputError(f"da_eps must be > 0, got {self.da_eps!r}")


@dataclass
class DRDConfig:
    """Distribution rectification distillation's upper level: foreground-aware query matching (FQM).

    - ``tau``: a student query is distilled when its box reaches ``GIoU > tau * G_i`` with a ground-truth
      box ``i``, ``G_i`` the best GIoU any student query reaches on ``i`` (``tau=0`` keeps every query
      overlapping an object; the paper finds distilling every query worse than none).
    - ``select``: ``"exists"`` (around at least one ground truth, the paper's text) or ``"all"`` (the
      printed formula's "for all i").
    - ``pairing``: each kept student query takes the teacher query maximizing
      ``mu_giou * GIoU - mu_l1 * L1`` (``"argmax"``, the paper; a teacher query may serve two) or a
      one-to-one Hungarian assignment on the same score (``"hungarian"``).
    - ``weight``: lambda in ``L = L_det + lambda * L_DRD``; ``layers``: the decoder layers whose
      cross-attention outputs are distilled (``-1`` = last, the released code's choice).
    """

    tau: float = 0.5
    weight: float = 1.0
    layers: list[int] = field(default_factory=lambda: [-1])
    select: str = "exists"
    pairing: str = "argmax"
    mu_giou: float = 2.0
    mu_l1: float = 5.0

    def __post_init__(self) -> None:
        for name in ("tau", "weight", "mu_giou", "mu_l1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BadInputError(f"{name} must be a number >= 0, got {value!r}")
        if self.tau > 1:
            raise BadInputError(f"tau must be in [0, 1], got {self.tau}")
        layers = [self.layers] if isinstance(self.layers, int) else self.layers
        if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers
        ):
            raise BadInputError(f"layers must be a non-empty list of decoder layer indices, got {self.layers!r}")
        self.layers = list(layers)
        _one_of("select", self.select, SELECTIONS)
        _one_of("pairing", self.pairing, PAIRINGS)
