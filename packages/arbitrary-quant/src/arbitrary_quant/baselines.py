"""The baselines MultiQuant is compared with: Any-Precision DNNs (one model, any bit-width) and per-bit LSQ.

Both conversions are in place and undoable like :func:`~arbitrary_quant.multiquant.multiquant`: every
wrapper keeps the original module as ``base_layer`` and trains its own copy of the weights, so
:func:`slimkit.wrappers.unwrap_modules` gives back exactly the original model.

**Any-Precision** (arXiv 1911.07346, code ``SHI-Labs/Any-Precision-DNNs``), :func:`any_precision`:

- one set of FP weights serves every bit-width ``k`` of ``bit_list``. Every body conv / Linear
  (between the stem and the classifier, split as MultiQuant splits, so both methods quantize the
  same layers) becomes an :class:`AnyPrecisionLayer`: DoReFa weights scaled back by the detached
  ``E|w|`` (:func:`any_precision_weight`) and DoReFa inputs ``q_k(clip(x, 0, 1))``, both at ``k``;
- every body BatchNorm becomes a :class:`PerBitBatchNorm`, one copy of the original per bit-width.
  The stem's BatchNorm stays shared: its input is FP, the same at every bit-width;
- the wrappers are MultiQuant's switchable wrappers with a single branch (the shared weights), so
  :func:`arbitrary_quant.multiquant.set_bits`, ``current_bits`` and
  :class:`arbitrary_quant.training.AllBitsForward` drive both methods;
- training: :func:`recursive_loss` on an ``AllBitsForward``, the official "recursive" supervision.

Where this differs from the official ResNets: their projection shortcuts are FP convs; here every
body conv is quantized (MultiQuant quantizes them too, and BOPs then compare layer for layer); pass
``exclude=["*downsample*", "*shortcut*"]`` for the official choice.

**Per-bit LSQ** (arXiv 1902.08153, LSQ+ arXiv 2004.09576), :func:`lsq_quantize`: one model per
bit-width. Every Conv2d / Linear but the first conv and the last Linear becomes a :class:`slimkit.qlayers.LSQLayer`:
signed LSQ weights (one step per output channel by default, LSQ's gradient scale) and LSQ+ inputs
(unsigned grid, learnable offset). The offset parameter always exists, so an optimizer built before
the first batch sees it; the first batch only picks its init: LSQ's ``2 mean|x| / sqrt(Q_P)`` with
offset 0 for a non-negative input (what LSQ does for post-ReLU inputs), LSQ+'s min/max otherwise.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arbitrary_quant.config import AnyPrecisionConfig, LSQConfig
from arbitrary_quant.multiquant import Switchable, body_modules, find_head, find_stem
from arbitrary_quant.registry import REGISTRY
from slimkit.distill import soft_cross_entropy
from slimkit.errors import BadInputError
from slimkit.qlayers import LSQLayer, own_params, plain_copy, run_layer
from slimkit.quant import dorefa_activation, dorefa_quantize_unit
from slimkit.report import ReportMixin
from slimkit.surgery import REASON_EXCLUDED, REASON_NOT_INCLUDED, explain_selection, is_glob, set_module
from slimkit.wrappers import WrapperModule, wrapped_modules

__all__ = [
    "AnyPrecisionLayer",
    "AnyPrecisionReport",
    "LSQLayer",
    "LSQReport",
    "PerBitBatchNorm",
    "any_precision",
    "any_precision_codes",
    "any_precision_weight",
    "apply_any_precision",
    "apply_lsq",
    "init_lsq",
    "lsq_quantize",
    "recursive_distillation",
    "recursive_loss",
]

_QUANTIZABLE = (nn.Conv2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)

LossFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]


# --------------------------------------------------------------------------- shared by both methods


def _check_layer(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise BadInputError(f"{name}: padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")


def _refuse_converted(model: nn.Module) -> None:
    if wrapped_modules(model, Switchable) or wrapped_modules(model, LSQLayer):
        raise BadInputError("the model is already quantized by arbitrary-quant; call arbitrary_quant.dequantize first")


# --------------------------------------------------------------------------- Any-Precision


def any_precision_codes(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """``(codes, scale)`` of :func:`any_precision_weight`: integer levels ``c`` in ``0..2^k-1`` and
    ``E|w|``, so that the quantized weight is ``(2 c / (2^k - 1) - 1) * scale``."""
    t = torch.tanh(w.detach())
    unit = t / (2 * t.abs().max().clamp_min(torch.finfo(t.dtype).tiny)) + 0.5
    return torch.round(unit * (2**bits - 1)).to(torch.int64), w.detach().abs().mean()


def any_precision_weight(w: Tensor, bits: int) -> Tensor:
    """Any-Precision's DoReFa weights ``(2 q_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1) * E|w|``, ``E`` detached.

    For ``bits >= 2`` this is ``slimkit.quant.dorefa_weight(w, bits, scale=True)``; the official code
    keeps the same formula at 1 bit (``{-E, +E}``, gradient through tanh), where slimkit switches to
    DoReFa's ``sign(w) * E``, hence one formula here for every ``k``.
    """
    t = torch.tanh(w)
    unit = t / (2 * t.abs().max().clamp_min(torch.finfo(t.dtype).tiny)) + 0.5
    return (2 * dorefa_quantize_unit(unit, bits) - 1) * w.detach().abs().mean()


class _PerBit(Switchable):
    """MultiQuant's switchable wrapper with a single branch: the weights every bit-width shares.

    MultiQuant's ``__init__`` builds a branch table from a MultiQuantConfig; this sets the same
    attributes (``groups``, ``bit_list``, ``table``, ``bits``) for one branch instead, so MultiQuant's
    ``set_bits`` / ``current_bits`` / ``AllBitsForward`` switch these wrappers too.
    """

    def __init__(self, base_layer: nn.Module, bit_list: Sequence[int]) -> None:
        WrapperModule.__init__(self, base_layer)
        self.groups = 1
        self.bit_list = tuple(sorted(bit_list))
        self.table = {b: (0,) for b in self.bit_list}
        self.bits = self.bit_list[-1]


class AnyPrecisionLayer(_PerBit):
    """A body Conv2d / Linear at the current bit-width ``k``: DoReFa ``k``-bit weights and inputs.

    ``latent_weight`` / ``latent_bias`` are trainable copies of the original's (``weight`` still reads
    the untouched original through ``base_layer``); ``w_bits`` / ``a_bits`` (both ``k``) declare the
    precision to :func:`slimkit.opcount.count_ops`.
    """

    latent_bias: nn.Parameter | None

    def __init__(self, base_layer: nn.Conv2d | nn.Linear, bit_list: Sequence[int]) -> None:
        super().__init__(base_layer, bit_list)
        self.latent_weight, self.latent_bias = own_params(base_layer)

    @property
    def fixed(self) -> bool:
        """Whether the layer runs weights fixed per bit-width (a model loaded from an export)."""
        return hasattr(self, f"fixed_weight_{self.bit_list[0]}")

    def fix_weights(self, weights: dict[int, Tensor], scale: Tensor) -> None:
        """Run these quantized weights (``(2 c / (2^k - 1) - 1) * scale``) at each bit-width from now on.

        What an export loads. They are non-persistent buffers: they follow ``.to()``, stay out of
        ``state_dict`` and leave ``latent_weight`` unused (an exported model is for inference; train
        from a checkpoint).
        """
        if sorted(weights) != list(self.bit_list):
            raise BadInputError(f"fixed weights for bit-widths {sorted(weights)}, the layer has {list(self.bit_list)}")
        for bits, w in weights.items():
            self.register_buffer(f"fixed_weight_{bits}", w.to(self.latent_weight), persistent=False)
        self.register_buffer("fixed_scale", scale.reshape(()).to(self.latent_weight), persistent=False)

    @property
    def w_bits(self) -> int:
        return self.bits

    @property
    def a_bits(self) -> int:
        return self.bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bit_list={list(self.bit_list)}"

    def quantized_weight(self) -> Tensor:
        """The ``k``-bit weights the forward uses (:func:`any_precision_weight`, or the fixed ones)."""
        if self.fixed:
            fixed: Tensor = getattr(self, f"fixed_weight_{self.bits}")
            return fixed
        return any_precision_weight(self.latent_weight, self.bits)

    def forward(self, x: Tensor) -> Tensor:
        return run_layer(self.base_layer, dorefa_activation(x, self.bits), self.quantized_weight(), self.latent_bias)

    def to_plain(self) -> nn.Module:
        """The original layer type with the current bit-width's weights (the input quantizer is not kept)."""
        return plain_copy(self.base_layer, self.quantized_weight().detach(), self.latent_bias)


class PerBitBatchNorm(_PerBit):
    """One copy of the original BatchNorm per bit-width (Any-Precision's switchable BN, original widths).

    MultiQuant's :class:`~arbitrary_quant.multiquant.SwitchableBN` sizes each copy to that bit-width's
    branches; Any-Precision keeps the original channels, so each copy is the original's clone
    (statistics and affine parameters), which starts a trained FP model where it was.
    """

    def __init__(self, base_layer: nn.BatchNorm1d | nn.BatchNorm2d | nn.SyncBatchNorm, bit_list: Sequence[int]) -> None:
        super().__init__(base_layer, bit_list)
        self.bns = nn.ModuleList(copy.deepcopy(base_layer) for _ in self.bit_list)

    def active(self) -> nn.Module:
        """The BatchNorm of the current bit-width."""
        bn: nn.Module = self.bns[self.bit_list.index(self.bits)]
        return bn

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.active()(x)
        return out

    def to_plain(self) -> nn.Module:
        """The current bit-width's BatchNorm."""
        return copy.deepcopy(self.active())


@dataclass
class AnyPrecisionReport(ReportMixin):
    """What :func:`any_precision` converted."""

    stem: str
    head: str
    layers: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bit_list: list[int] = field(default_factory=list)


def _stem_and_head(model: nn.Module, config: AnyPrecisionConfig) -> tuple[str, str]:
    """MultiQuant's stem / head detection, its hints naming this config."""
    try:
        return find_stem(model, config.stem), find_head(model, config.head)
    except BadInputError as err:
        raise BadInputError(str(err).replace("MultiQuantConfig", "AnyPrecisionConfig")) from None


def _left_out(name: str, include: list[str] | None, exclude: list[str]) -> str | None:
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return REASON_NOT_INCLUDED
    if any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return REASON_EXCLUDED
    return None


@REGISTRY.register(AnyPrecisionConfig)
def apply_any_precision(model: nn.Module, config: AnyPrecisionConfig) -> AnyPrecisionReport:
    """Convert ``model`` in place (see the module docstring); the handler behind :func:`any_precision`."""
    _refuse_converted(model)
    stem, head = _stem_and_head(model, config)
    body = body_modules(model, stem, head)
    report = AnyPrecisionReport(stem=stem, head=head, bit_list=list(config.bit_list))
    layer_names = {n for n, m in body if isinstance(m, _QUANTIZABLE)}
    missing = sorted(p for p in config.include or [] if not is_glob(p) and p not in layer_names)
    if missing:
        raise BadInputError(f"include names no Conv2d/Linear layer of the body: {', '.join(missing)}")
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in body:
        if isinstance(module, _QUANTIZABLE):
            reason = _left_out(name, config.include, config.exclude)
            if reason is not None:
                report.skipped.append((name, reason))
                continue
            _check_layer(name, module)
            replacements.append((name, AnyPrecisionLayer(module, config.bit_list)))
            report.layers.append(name)
        elif isinstance(module, _BATCHNORMS):
            replacements.append((name, PerBitBatchNorm(module, config.bit_list)))
            report.batchnorms.append(name)
    if not report.layers:
        raise BadInputError(f"no Conv2d/Linear layer of the body between {stem!r} and {head!r} is left to quantize")
    for name, new in replacements:  # every wrapper is built before the model changes
        set_module(model, name, new)
    return report


def any_precision(model: nn.Module, config: AnyPrecisionConfig | None = None) -> nn.Module:
    """Turn ``model`` into an Any-Precision network in place and return it.

    Runs at the largest bit-width of ``config.bit_list`` until :func:`arbitrary_quant.set_bits`
    says otherwise; undo with :func:`arbitrary_quant.dequantize`.
    """
    apply_any_precision(model, config or AnyPrecisionConfig())
    return model


def recursive_distillation(logits: Tensor, labels: Tensor, bit_list: Sequence[int]) -> tuple[Tensor, dict[str, float]]:
    """Any-Precision's recursive supervision on ``logits [n, B, classes]`` ordered as ``bit_list``, largest first.

    The largest bit-width learns from the labels (CE); each lower one from the next higher one's
    detached softmax (soft CE, no label term), as the official ``train.py``. Returns the sum (the
    official code accumulates every bit-width's gradients before one step) and ``loss_<k>bit`` metrics.
    """
    if logits.dim() != 3 or logits.shape[0] != len(bit_list):
        raise BadInputError(f"expected logits [{len(bit_list)}, batch, classes], got {list(logits.shape)}")
    if list(bit_list) != sorted(set(bit_list), reverse=True):
        raise BadInputError(f"bit_list must run largest first (AllBitsForward's order), got {list(bit_list)}")
    total = F.cross_entropy(logits[0], labels)
    metrics = {f"loss_{bit_list[0]}bit": float(total.detach())}
    for i in range(1, len(bit_list)):
        loss = soft_cross_entropy(logits[i], logits[i - 1].detach())
        metrics[f"loss_{bit_list[i]}bit"] = float(loss.detach())
        total = total + loss
    return total, metrics


def recursive_loss() -> LossFn:
    """``loss_fn`` for :func:`slimkit.train.train` on an :class:`~arbitrary_quant.training.AllBitsForward`.

    See :func:`recursive_distillation`; built by a factory like :func:`~arbitrary_quant.training.multibit_loss`.
    """

    def loss_fn(model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        inner = getattr(model, "module", model)  # DDP keeps the AllBitsForward in .module
        bit_list = getattr(inner, "bit_list", None)
        if not isinstance(bit_list, tuple):
            raise BadInputError("recursive_loss trains an AllBitsForward (arbitrary_quant.training) model")
        return recursive_distillation(model(x), y, bit_list)

    return loss_fn


# --------------------------------------------------------------------------- per-bit LSQ


@dataclass
class LSQReport(ReportMixin):
    """What :func:`lsq_quantize` converted."""

    w_bits: int
    a_bits: int
    per_channel: bool
    layers: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@REGISTRY.register(LSQConfig)
def apply_lsq(model: nn.Module, config: LSQConfig) -> LSQReport:
    """Wrap every Conv2d / Linear but the first conv and the last Linear; the handler behind :func:`lsq_quantize`."""
    _refuse_converted(model)
    report = LSQReport(w_bits=config.w_bits, a_bits=config.a_bits, per_channel=config.per_channel)
    chosen: list[tuple[str, nn.Module]] = []
    for name, module, reason in explain_selection(
        model, _QUANTIZABLE, config.include, config.exclude, keep_first=(nn.Conv2d,), keep_last=(nn.Linear,)
    ):
        if reason is not None:
            report.skipped.append((name, reason))
            continue
        _check_layer(name, module)
        chosen.append((name, module))
    if not chosen:
        raise BadInputError("no Conv2d/Linear layer is left to quantize (the first conv and the last Linear stay FP)")
    wrappers = [
        (name, LSQLayer(module, config.w_bits, config.a_bits, config.per_channel, config.weight_init))  # type: ignore[arg-type]
        for name, module in chosen
    ]
    for name, wrapper in wrappers:
        set_module(model, name, wrapper)
        report.layers.append(name)
    return report


def lsq_quantize(model: nn.Module, config: LSQConfig | None = None) -> nn.Module:
    """Quantize ``model`` in place at one bit-width with LSQ / LSQ+ and return it (undo: :func:`arbitrary_quant.dequantize`)."""
    apply_lsq(model, config or LSQConfig())
    return model


@torch.no_grad()
def init_lsq(model: nn.Module, x: Tensor) -> None:
    """Initialise every input quantizer not yet initialised from one batch (an eval-mode forward).

    Call it before training, every process on the same batch, so no step is initialised lazily
    from a process's own first batch; the train/eval mode is restored.
    """
    if not wrapped_modules(model, LSQLayer):
        raise BadInputError("the model has no LSQ layers: call arbitrary_quant.baselines.lsq_quantize first")
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
