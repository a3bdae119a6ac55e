"""Q-DETR quantization of a Hugging Face DETR, in place and undoable: the handler behind :func:`qdetr.quantize`.

What is quantized (see :class:`~qdetr.config.QDetrConfig`): every conv and linear of the backbone,
encoder and decoder becomes a :class:`slimkit.qlayers.LSQLayer` (LSQ weights per output channel,
LSQ+ inputs), the backbone stem at ``stem_bits``; every attention becomes a
:class:`~qdetr.attention.QuantAttention` (q, k, softmax, v at ``attn_bits``, DA on the decoder
queries); the ``keep_fp`` layers (input projection, heads, shortcuts by default) stay FP.
Every wrapper keeps its original module as ``base_layer``, untouched, so
:func:`qdetr.api.dequantize` gives back exactly the model that came in.

The quantizers' steps start from data: :func:`calibrate` runs batches through the model
before training (every process on the same batch under ``accelerate launch``), as the paper's
calibration pass.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.models.detr.modeling_detr import DetrCrossAttention, DetrSelfAttention

from qdetr.attention import QuantAttention
from qdetr.config import QDetrConfig
from qdetr.registry import REGISTRY
from slimkit.errors import BadInputError
from slimkit.qlayers import LSQLayer
from slimkit.quant import LSQQuantizer
from slimkit.report import ReportMixin
from slimkit.surgery import set_module
from slimkit.wrappers import wrapped_modules

__all__ = ["QDetrReport", "apply_qdetr", "attention_modules", "calibrate", "quantizers"]

_BACKBONE = "model.backbone."
_STEM = "*embedder*"


@dataclass
class QDetrReport(ReportMixin):
    """What :func:`apply_qdetr` changed: layers with their (w_bits, a_bits), attentions, aligned ones, FP ones."""

    layers: list[tuple[str, int, int]] = field(default_factory=list)
    attentions: list[str] = field(default_factory=list)
    aligned: list[str] = field(default_factory=list)
    kept_fp: list[tuple[str, str]] = field(default_factory=list)


def _kept(name: str, config: QDetrConfig) -> str | None:
    """Why ``name`` stays FP, or ``None`` when it is quantized."""
    if any(fnmatch.fnmatchcase(name, g) for g in config.keep_fp):
        return "keep_fp"
    if config.scope == "backbone" and not name.startswith(_BACKBONE):
        return "scope=backbone"
    if fnmatch.fnmatchcase(name, _STEM) and config.stem_bits is None:
        return "stem_bits=None"
    return None


def _check_model(model: nn.Module, config: QDetrConfig) -> set[str]:
    """Refuse what cannot be quantized; returns the names of LSQ layers already there.

    A model quantized with ``scope="backbone"`` (the paper's first stage) may be quantized again
    with ``scope="all"``: the backbone keeps its trained quantized layers, the rest is added.
    """
    if not any(isinstance(m, (DetrSelfAttention, DetrCrossAttention)) for m in model.modules()):
        raise BadInputError(
            f"{type(model).__name__} has no DETR attention: qdetr quantizes transformers' DetrForObjectDetection"
        )
    wrapped = wrapped_modules(model)
    staged = all(isinstance(m, LSQLayer) and n.startswith(_BACKBONE) for n, m in wrapped)
    if wrapped and not (staged and config.scope == "all"):
        raise BadInputError("the model is already quantized; call qdetr.dequantize first")
    return {n for n, _ in wrapped}


def _inside(name: str, outers: set[str]) -> bool:
    return any(name == o or name.startswith(o + ".") for o in outers)


@REGISTRY.register(QDetrConfig)
def apply_qdetr(model: nn.Module, config: QDetrConfig) -> QDetrReport:
    """Quantize ``model`` in place as ``config`` says (see the module docstring)."""
    done = _check_model(model, config)
    report = QDetrReport()
    layers: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or _inside(name, done):
            continue
        reason = _kept(name, config)
        if reason is not None:
            report.kept_fp.append((name, reason))
            continue
        bits = config.stem_bits if fnmatch.fnmatchcase(name, _STEM) and config.stem_bits is not None else None
        w_bits, a_bits = (bits, bits) if bits is not None else (config.w_bits, config.a_bits)
        layers.append((name, LSQLayer(module, w_bits, a_bits, config.per_channel, act_granularity=config.act_granularity)))
        report.layers.append((name, w_bits, a_bits))
    attentions = []
    if config.scope == "all":
        for name, module in model.named_modules():
            if not isinstance(module, (DetrSelfAttention, DetrCrossAttention)):
                continue
            decoder = ".decoder." in f".{name}."
            align = decoder and (
                config.alignment == "both" or (config.alignment == "cross" and isinstance(module, DetrCrossAttention))
            )
            attentions.append((name, module, align))
    for name, wrapper in layers:  # inner modules first: the attention wrappers then hold the wrapped projections
        set_module(model, name, wrapper)
    for name, module, align in attentions:
        set_module(model, name, QuantAttention(module, config.attn_bits, align, config.da_eps, config.da_unbiased))
        report.attentions.append(name)
        if align:
            report.aligned.append(name)
    return report


def attention_modules(model: nn.Module) -> list[tuple[str, QuantAttention]]:
    """The quantized attentions by name (registration order: encoder layers, then decoder layers)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantAttention)]


def quantizers(model: nn.Module) -> Iterator[LSQQuantizer]:
    """Every LSQ quantizer of the quantized model (weights, inputs, attention)."""
    for module in model.modules():
        if isinstance(module, LSQQuantizer):
            yield module


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Initialise every quantizer's step (and offset) from data: the first batch each one sees sets it.

    Runs in eval mode (dropout off), restores the mode; returns the number of batches run. Each
    batch is moved to the model's device first. Under ``accelerate launch``, give every process
    the same batches so all start from the same steps.
    """
    was = model.training
    model.eval()
    first = next(model.parameters(), None)
    n = 0
    try:
        for x in batches:
            model(pixel_values=x if first is None else x.to(first.device))
            n += 1
    finally:
        model.train(was)
    if n == 0:
        raise BadInputError("calibrate needs at least one batch")
    return n
