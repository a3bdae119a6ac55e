"""One configuration dataclass per method.

The config's type picks the method (``arbitrary_quant.api.REGISTRY``). Configs are serialised
only through :mod:`slimkit.io` (``config_to_dict``, ``REGISTRY.config_from_dict``,
``save_config`` / ``load_config``); every field is JSON-typed, tuples are normalised so a
config equals itself after a JSON round trip.

- :class:`MultiQuantConfig`: the multi-branch any-bit network (arXiv 2305.08117).
- :class:`AnyPrecisionConfig`: the Any-Precision baseline (shared weights, DoReFa, switchable BN).
- :class:`LSQConfig`: one fixed bit-width, LSQ weights and LSQ+ activations (the per-bit baseline).
- :class:`DFSQConfig`: post-training subset quantization for super-resolution (arXiv 2305.05888).
- :class:`BiViTConfig`: binary ViT with learnable attention scale (arXiv 2305.12354).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from slimkit.errors import BadInputError

MAX_BITS = 8
SELECTIONS = ("amortized", "prefix")
#: MultiQuant's official branch table for 4 branches of 2-bit weights (``select()`` of its code):
#: every branch serves 2 or 3 of the bit-widths instead of branch 0 serving all four.
#: Odd bit-widths run the full branches of this table plus a narrow slice of one more branch.
AMORTIZED_BRANCHES: dict[int, tuple[int, ...]] = {
    2: (0,), 3: (0,), 4: (1, 2), 5: (1, 2), 6: (1, 2, 3), 7: (0, 1, 2), 8: (0, 1, 2, 3),
}
#: The branch whose leading channels form the narrow extra branch at odd bit-widths (official ``select()``).
AMORTIZED_NARROW: dict[int, int] = {3: 1, 5: 3, 7: 3}


def _bits_tuple(name: str, value: Any, low: int = 1) -> tuple[int, ...]:
    if isinstance(value, int) or not isinstance(value, (list, tuple)):
        raise BadInputError(f"{name} must be a list of bit-widths, got {value!r}")
    bits = tuple(value)
    if not bits:
        raise BadInputError(f"{name} is empty")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not low <= b <= MAX_BITS:
            raise BadInputError(f"{name} holds bit-widths {low}..{MAX_BITS}, got {b!r}")
    if len(set(bits)) != len(bits):
        raise BadInputError(f"{name} repeats a bit-width: {list(bits)}")
    return tuple(sorted(bits))


def _globs(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class MultiQuantConfig:
    """MultiQuant: the body widened ``groups`` times as grouped convs, one 2-bit branch per group.

    - A ``k``-bit forward runs ``k // 2`` branches (``W2Ak`` each): BOPs(k) = k^2 x MACs of the
      original layer, the cost of a W``k``A``k`` network.
    - An odd ``k`` adds the paper's narrower extra branch: the leading channels of one more
      branch (its weights, still 2-bit, are shared with that branch, as in the official code),
      ``round(narrow_width * C)`` of every ``C``-channel tensor. ``narrow_width=None`` picks
      ``sqrt(r / weight_bits)`` for the remainder ``r = k mod weight_bits`` (``sqrt(1/2)`` for 2-bit
      branches), which makes each layer's BOPs match ``k^2 x MACs`` up to rounding; the official
      code hard-codes narrower per-stage widths tuned on ResNet-18/50 (ratios 0.6-0.8).
    - ``selection="amortized"`` is the official branch table (2: {0}, 3: {0}+1, 4: {1,2},
      5: {1,2}+3, 6: {1,2,3}, 7: {0,1,2}+3, 8: {0,1,2,3}, "+j" the narrow slice of branch j: the
      first branch is not shared by every bit-width); ``"prefix"`` uses the first ``k // 2``
      branches and the next one as the narrow branch (any ``groups``).
    - ``weight_bits`` is the branches' weight precision (2 in the paper).
    - ``distill_weight``: every non-largest bit-width learns from
      ``w * softCE(largest, detached) + (1 - w) * CE(labels)``; the paper's 0.5.
    - ``shuffle``: channel-shuffle across the active branches at the output of residual blocks
      that have a downsample path and no third conv (the official BasicBlock does; its Bottleneck
      has the call commented out), the only mixing between branches inside the body. The shuffle
      interleaves channels, so a converted BasicBlock ResNet no longer computes its FP model's
      function at initialisation: pass ``shuffle=False`` to start from trained FP weights.
    - ``stem`` / ``head``: module names where the body starts (the stem module's output is tiled
      over the branches) and the classifier (its input is averaged over the branches). ``None``
      finds them: ``maxpool`` (torchvision / timm ResNets), ``features.0`` (MobileNets) or ``stem``
      (slimkit's SmallResNet), and the last ``nn.Linear``. Everything registered after the stem and before the head is body.
    - ``include``/``exclude``: globs on module names of the body convs to widen.
    """

    groups: int = 4
    bit_list: tuple[int, ...] = (2, 4, 6, 8)
    weight_bits: int = 2
    selection: str = "amortized"
    narrow_width: float | None = None
    distill_weight: float = 0.5
    shuffle: bool = True
    stem: str | None = None
    head: str | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self.bit_list = _bits_tuple("bit_list", self.bit_list, low=2)
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise BadInputError(f"groups must be a positive integer, got {self.groups!r}")
        if isinstance(self.weight_bits, bool) or self.weight_bits not in range(1, MAX_BITS + 1):
            raise BadInputError(f"weight_bits must be 1..{MAX_BITS}, got {self.weight_bits!r}")
        _one_of("selection", self.selection, SELECTIONS)
        if self.bit_list[-1] > self.groups * self.weight_bits:
            raise BadInputError(
                f"bit_list reaches {self.bit_list[-1]} bits but {self.groups} branches of "
                f"{self.weight_bits} bits give at most {self.groups * self.weight_bits}"
            )
        too_small = [b for b in self.bit_list if b < self.weight_bits]
        if too_small:
            raise BadInputError(f"bit_list {list(self.bit_list)}: {too_small} are below weight_bits={self.weight_bits}")
        if self.narrow_width is not None and (
            isinstance(self.narrow_width, bool)
            or not isinstance(self.narrow_width, (int, float))
            or not 0.0 < self.narrow_width <= 1.0
        ):
            raise BadInputError(f"narrow_width must be in (0, 1] or None, got {self.narrow_width!r}")
        if self.selection == "amortized" and (self.groups, self.weight_bits) != (4, 2):
            raise BadInputError("selection='amortized' is the official table for groups=4, weight_bits=2; use 'prefix'")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise BadInputError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.include is not None:
            self.include = _globs(self.include)
        self.exclude = _globs(self.exclude)

    def branches(self, bits: int) -> tuple[int, ...]:
        """The branches a ``bits``-bit forward runs (the official amortized table or a prefix)."""
        if bits not in self.bit_list:
            raise BadInputError(f"{bits} bits is not in the trained bit_list {list(self.bit_list)}")
        if self.selection == "amortized":
            return AMORTIZED_BRANCHES[bits]
        return tuple(range(bits // self.weight_bits))

    def narrow(self, bits: int) -> tuple[int, float] | None:
        """``(branch, width ratio)`` of the narrow extra branch at ``bits``; ``None`` for a multiple of ``weight_bits``."""
        full = self.branches(bits)
        rest = bits - self.weight_bits * len(full)
        if rest == 0:
            return None
        branch = AMORTIZED_NARROW[bits] if self.selection == "amortized" else len(full)
        ratio = self.narrow_width if self.narrow_width is not None else math.sqrt(rest / self.weight_bits)
        return branch, float(ratio)


@dataclass
class AnyPrecisionConfig:
    """Any-Precision DNNs (arXiv 1911.07346, see :mod:`arbitrary_quant.baselines`): one set of FP weights
    run at any bit-width ``k`` of ``bit_list``.

    - Every body conv / Linear (between ``stem`` and ``head``, found as MultiQuant does) quantizes its
      weights with DoReFa scaled by the detached ``E|w|`` and its input with DoReFa ``q_k(clip(x, 0, 1))``,
      both at ``k``; the stem and the classifier stay FP. Every body BatchNorm becomes one per bit-width.
    - ``include``/``exclude``: globs on the names of the body layers to quantize (the others stay FP;
      ``exclude=["*downsample*", "*shortcut*"]`` leaves the projection shortcuts FP as the official ResNets do).
    - Training: :func:`arbitrary_quant.baselines.recursive_loss` (each bit-width learns from the next higher).
    """

    bit_list: tuple[int, ...] = (2, 4, 6, 8)
    stem: str | None = None
    head: str | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self.bit_list = _bits_tuple("bit_list", self.bit_list)
        if self.include is not None:
            self.include = _globs(self.include)
        self.exclude = _globs(self.exclude)


@dataclass
class LSQConfig:
    """One fixed bit-width (the per-bit baseline, see :mod:`arbitrary_quant.baselines`): LSQ weights, LSQ+ inputs.

    - Weights: signed ``w_bits`` grid, one learned step per output channel (``per_channel``) or per layer,
      LSQ's gradient scale; ``weight_init`` is LSQ's ``"lsq"`` (``2 mean|w| / sqrt(Q_P)``) or LSQ+'s
      ``"sigma"`` (``max(|mu - 3 sd|, |mu + 3 sd|) / 2^(b-1)``).
    - Inputs: unsigned ``a_bits`` grid with LSQ+'s learnable offset, one step per layer.
    - The first conv and the last Linear stay full precision; ``include``/``exclude`` are globs on
      the other Conv2d / Linear names.
    """

    WEIGHT_INITS = ("lsq", "sigma")  # not a field: no annotation

    w_bits: int = 4
    a_bits: int = 4
    per_channel: bool = True
    weight_init: str = "lsq"
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_BITS:
                raise BadInputError(f"{name} must be 2..{MAX_BITS}, got {value!r}")
        if not isinstance(self.per_channel, bool):
            raise BadInputError(f"per_channel must be true or false, got {self.per_channel!r}")
        _one_of("weight_init", self.weight_init, self.WEIGHT_INITS)
        if self.include is not None:
            self.include = _globs(self.include)
        self.exclude = _globs(self.exclude)


@dataclass
class DFSQConfig:
    """DFSQ post-training quantization for super-resolution (see :mod:`arbitrary_quant.dfsq`).

    - ``bits``: activation bit-width; each input channel gets ``2^bits`` points of the universal set.
    - ``w_bits``: weight bit-width (per-output-channel MinMax); ``None`` = ``bits`` as in the paper.
    - ``words``: words of the universal set (4 in the paper: 377 values).
    - ``restarts`` / ``kmeans_iters`` / ``kmeans_tol``: the K-means selection (5 / 100 / 1e-3 officially).
    - ``max_samples``: calibration values per channel fed to K-means (a seeded random subset); 0 = all.
    - ``activation``: ``"subset"`` (DFSQ) or the static per-tensor uniform baselines ``"minmax"`` and
      ``"percentile"`` (range clipped to the ``100 - percentile`` / ``percentile`` percentiles).
    - ``include``/``exclude``: globs on conv names; by default the two 3x3 convs of every residual block.
    """

    ACTIVATIONS = ("subset", "minmax", "percentile")  # not a field: no annotation

    bits: int = 4
    w_bits: int | None = None
    words: int = 4
    restarts: int = 5
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-3
    max_samples: int = 0
    activation: str = "subset"
    percentile: float = 99.99
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bits", "w_bits"):
            value = getattr(self, name)
            if value is None and name == "w_bits":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_BITS:
                extra = " or None" if name == "w_bits" else ""
                raise BadInputError(f"{name} must be 2..{MAX_BITS}{extra}, got {value!r}")
        for name, low in (("words", 1), ("restarts", 1), ("kmeans_iters", 1), ("max_samples", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BadInputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.words > 8:
            raise BadInputError(f"words must be 1..8, got {self.words}")
        if isinstance(self.kmeans_tol, bool) or not isinstance(self.kmeans_tol, (int, float)):
            raise BadInputError(f"kmeans_tol must be a number >= 0, got {self.kmeans_tol!r}")
        if not (self.kmeans_tol >= 0 and math.isfinite(self.kmeans_tol)):
            raise BadInputError(f"kmeans_tol must be >= 0, got {self.kmeans_tol}")
        self.kmeans_tol = float(self.kmeans_tol)
        _one_of("activation", self.activation, self.ACTIVATIONS)
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise BadInputError(f"percentile must be a number in (50, 100], got {self.percentile!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise BadInputError(f"percentile must be in (50, 100], got {self.percentile}")
        self.percentile = float(self.percentile)
        if self.include is not None:
            self.include = _globs(self.include)
        self.exclude = _globs(self.exclude)

    @property
    def weight_bits(self) -> int:
        return self.bits if self.w_bits is None else self.w_bits


@dataclass
class BiViTConfig:
    """Bi-ViT binarization of a timm VisionTransformer (see :mod:`arbitrary_quant.bivit`).

    - ``attention``: ``"learnable"`` (Bi-ViT: q, k, v and the softmax map binarized with a learnable
      per-head scale ``alpha`` and offset ``z``), ``"sign"`` (the baseline: XNOR-style
      ``mean|x| * sign(x)`` with a fixed scale, whose attention gradient vanishes) or ``"fp"``
      (attention left in full precision; only the block Linears are binary).
    - ``attn_threshold``: the attention binarizer starts with ``z = -1`` and
      ``alpha = attn_threshold * mean(A)`` (``mean(A) = 1/N`` for softmax rows), so a key is kept
      (``A_hat = 2 alpha``) when its attention exceeds ``attn_threshold`` times the uniform share.
    - ``gelu_clip``: the MLP activation output is clipped to ``[-gelu_clip, gelu_clip]`` (10 in the code).
    - ``keep_fp``: globs on module names left in full precision (patch embedding and head by default;
      norms, tokens and position embeddings are never binarized).
    - Distillation (:func:`arbitrary_quant.bivit.bivit_loss`): ``L = CE + kd_weight * KD +
      rank_weight * sum_layers L_rank``; ``kd_temperature`` is KD's ``T``; ``ranking_loss`` is
      ``"pairwise"``, ``"listnet"`` or ``None``; ``top_k`` teacher keys per query row and temperature
      ``rank_temperature`` (``tau``) shape the ranking term.
    """

    attention: str = "learnable"
    keep_fp: list[str] = field(default_factory=lambda: ["patch_embed*", "head*"])
    attn_threshold: float = 1.0
    gelu_clip: float = 10.0
    ranking_loss: str | None = "pairwise"
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    rank_weight: float = 0.1
    top_k: int = 8
    rank_temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("attention", self.attention, ("learnable", "sign", "fp"))
        if self.ranking_loss is not None and self.ranking_loss not in ("pairwise", "listnet"):
            raise BadInputError(f"ranking_loss must be pairwise, listnet or null; got {self.ranking_loss!r}")
        self.keep_fp = _globs(self.keep_fp)
        for name in ("attn_threshold", "gelu_clip", "kd_temperature", "rank_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise BadInputError(f"{name} must be a positive number, got {value!r}")
        for name in ("kd_weight", "rank_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise BadInputError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise BadInputError(f"top_k must be a positive integer, got {self.top_k!r}")
