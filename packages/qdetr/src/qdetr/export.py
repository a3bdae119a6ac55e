"""Export a quantized DETR as packed integer weight codes plus steps in one safetensors file, and load it back.

Why: a fake-quant DETR still holds float32 weights (and its untouched originals), so its
``model.safetensors`` is larger than the FP model. :func:`export` writes every quantized layer's
weights as their real ``w_bits`` signed codes packed into ``int32`` words (:mod:`slimkit.packing`),
with one float32 step per output channel, and keeps no float copy of them;
:func:`load_exported` rebuilds the model from the file alone and runs exactly what the exported
model ran.

**How a loaded layer runs** (the choice): the loader builds ``DetrForObjectDetection`` from the
stored DETR config, quantizes it with the stored :class:`~qdetr.config.QDetrConfig` (the same
wrapper classes as the exported model: it can be evaluated, fine-tuned or exported again) and
writes ``latent_weight = codes * step``. LSQ maps that latent weight back to the same codes
(``round(clip(codes * step / step)) = codes``), so the forward's weights are ``codes * step``, bit
for bit what the exported model used. :func:`export` checks this round trip for every layer and
refuses a model that fails it (non-finite weights or steps) rather than write a file that loads
into another model.

File layout (tensor names; ``L`` is an :class:`~slimkit.qlayers.LSQLayer`'s name in the quantized
model, e.g. ``model.decoder.layers.0.encoder_attn.base_layer.q_proj``):

- ``quant.L.codes`` int32 ``[C_out, words]``: the layer's signed ``w_bits`` codes (``int_weight()``),
  each row the flattened ``C_in * kh * kw`` weights of one output channel, packed with
  ``slimkit.packing.pack_bits(..., signed=True)``;
- ``quant.L.step`` float32 ``[C_out]`` (``per_channel``) or ``[1]``: the positive step the
  forward uses; the weight is ``codes * step``;
- ``state.<key>``: every other tensor of ``model.state_dict()`` in its own dtype: FP layers
  (input projection, heads, shortcuts), biases (``L.latent_bias``), LayerNorms, FrozenBatchNorm
  buffers, query embeddings, activation and attention quantizers' steps / offsets / flags, DA
  ``gamma`` / ``beta``. Left out per quantized layer: ``L.latent_weight`` and
  ``L.weight_quant.step`` (coded above) and ``L.base_layer.weight`` / ``L.base_layer.bias``, the
  original FP layer kept for ``dequantize``, which the forward never reads.

Metadata (``slimkit`` key of the safetensors header, JSON): ``format`` (:data:`FORMAT`),
``format_version``, ``package``, ``version``, ``torch``, ``config`` (the QDetrConfig through
``slimkit.io.config_to_dict``), ``detr_config`` (``DetrConfig.to_dict()``), ``categories`` (only when
given: the ``[{"id", "name"}, ...]`` COCO categories of the label indices, as in a model folder's
``qdetr.json``; the names are also the DETR config's ``id2label``), ``layers`` (one row per
quantized layer: name, shape, bits, sizes), ``tensors`` (every tensor name) and ``sha256`` over
the metadata and every tensor's name, dtype, shape and bytes: a truncated, edited or bit-flipped
file is refused, never loaded as another model.

Limits, by design: the original FP weights are not in the file. A loaded model's
``base_layer`` holds the decoded weights (``codes * step``) and the bias, so ``qdetr.dequantize``
on it gives a plain DETR with the quantized weights, not the FP model it was trained from.
Exactness is checked on CPU in float32.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DetrConfig, DetrForObjectDetection

from qdetr.api import quantize
from qdetr.attention import QuantAttention
from qdetr.checkpoints import CATEGORIES, categories_from_json, categories_to_json
from qdetr.config import QDetrConfig
from qdetr.models import trainable_detr
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import config_from_dict, config_to_dict, load_checked_state_dict, save_checked_state_dict, short_list
from slimkit.packing import pack_bits, packed_length, unpack_bits
from slimkit.qlayers import LSQLayer
from slimkit.report import ReportMixin

__all__ = ["FORMAT", "FORMAT_VERSION", "ExportReport", "LayerExport", "export", "export_info", "load_exported"]

FORMAT = "qdetr/packed"
FORMAT_VERSION = 1
STATE = "state."
QUANT = "quant."
#: A quantized layer's state-dict entries that the packed tensors replace (or that are not stored).
_CODED = ("latent_weight", "weight_quant.step", "base_layer.weight", "base_layer.bias")

try:
    __version__ = version("qdetr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"


# --------------------------------------------------------------------------- report


@dataclass
class LayerExport(ReportMixin):
    """One quantized layer as written: its FP32 weight bytes against what the file spends on it."""

    name: str
    shape: list[int]
    bits: int
    weights: int  # number of weights
    fp32_bytes: int  # 4 * weights
    code_bytes: int  # packed int32 words
    step_bytes: int  # float32 steps
    exported_bytes: int  # code_bytes + step_bytes
    bits_per_weight: float  # 8 * exported_bytes / weights


@dataclass
class ExportReport(ReportMixin):
    """What :func:`export` wrote: the quantized layers' fp32 bytes against their exported bytes, and the file."""

    path: str
    version: str
    bits: str  # "w-a-attn", e.g. "4-4-8"
    layers: list[LayerExport] = field(default_factory=list)
    weights_fp32_bytes: int = 0
    weights_exported_bytes: int = 0
    code_bytes: int = 0
    bits_per_weight: float = 0.0
    compression: float = 0.0  # weights_fp32_bytes / weights_exported_bytes
    other_bytes: int = 0  # every ``state.`` tensor (FP layers, biases, norms, quantizer parameters)
    file_bytes: int = 0


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


# --------------------------------------------------------------------------- helpers shared by export and load


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _lsq_layers(model: nn.Module) -> dict[str, LSQLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LSQLayer)}


def _coded_keys(layers: dict[str, LSQLayer], state: dict[str, Tensor]) -> set[str]:
    return {f"{n}.{k}" for n in layers for k in _CODED if f"{n}.{k}" in state}


def _structure(model: nn.Module) -> list[tuple[Any, ...]]:
    """What the state dict does not say about the quantized modules: bits, granularities, DA settings."""
    rows: list[tuple[Any, ...]] = []
    for name, m in model.named_modules():
        if isinstance(m, LSQLayer):
            rows.append((name, "lsq", m.w_bits, m.a_bits, m.weight_quant.spec.granularity, m.act_quant.spec.granularity))
        elif isinstance(m, QuantAttention):
            da = m.alignment
            rows.append((name, "attention", m.attn_bits, None if da is None else (float(da.eps), bool(da.unbiased))))
    return rows


def _detr_config(data: Any, where: str) -> DetrConfig:
    if not isinstance(data, dict):
        raise CorruptFileError(f"{where} holds no DETR config")
    try:
        return DetrConfig.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CorruptFileError(f"{where} holds an invalid DETR config ({_one_line(exc)[:200]})") from None


def _build(detr_config: DetrConfig, config: QDetrConfig, device: str | torch.device = "cpu") -> DetrForObjectDetection:
    """``DetrForObjectDetection(detr_config)`` quantized with ``config``; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        model = trainable_detr(detr_config)
        quantize(model, config)
    return model


# --------------------------------------------------------------------------- export


def _check_model(model: nn.Module, config: QDetrConfig, detr_dict: dict[str, Any]) -> dict[str, LSQLayer]:
    """Refuse a model the loader would not rebuild: compared with a skeleton built from the configs (no memory)."""
    layers = _lsq_layers(model)
    if not layers:
        raise BadInputError(f"{type(model).__name__} has no quantized layers: quantize it with a QDetrConfig first")
    skeleton = _build(_detr_config(detr_dict, "the model"), config, device="meta")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    problems = []
    if set(own) - set(want):
        problems.append(f"entries the config does not make: {short_list(set(own) - set(want))}")
    if set(want) - set(own):
        problems.append(f"entries the config makes that the model lacks: {short_list(set(want) - set(own))}")
    shapes = [f"{k} {list(own[k])} vs {list(want[k])}" for k in sorted(set(own) & set(want)) if own[k] != want[k]]
    if shapes:
        problems.append("shapes differ: " + ", ".join(shapes[:3]))
    if not problems:
        mine, theirs = _structure(model), _structure(skeleton)
        differ = [f"{a[0]} {a[2:]} vs {b[2:]}" for a, b in zip(mine, theirs) if a != b]
        if differ or len(mine) != len(theirs):
            problems.append("quantizer settings differ: " + ", ".join(differ[:3]))
    if problems:
        raise BadInputError(f"the model is not what {_bits(config)} QDetrConfig makes of its DETR: " + "; ".join(problems))
    return layers


def _bits(config: QDetrConfig) -> str:
    return f"{config.w_bits}-{config.a_bits}-{config.attn_bits}"


@torch.no_grad()
def _pack(name: str, layer: LSQLayer) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
    """One layer's packed codes and steps; refuses weights that do not survive ``codes * step`` exactly."""
    codes, step = layer.int_weight()
    w = layer.latent_weight
    if not bool(torch.isfinite(step).all()):
        raise BadInputError(f"{name}: its weight step is not finite; the layer cannot be exported")
    latent = codes.to(w.dtype) * step.to(w.dtype)
    again = layer.weight_quant.int_repr(latent, torch.int8)
    if not (torch.equal(again, codes) and torch.equal(latent, layer.quantized_weight())):
        raise BadInputError(
            f"{name}: its weights do not survive the integer round trip (non-finite weights or steps); not exported"
        )
    bits = int(layer.w_bits)
    rows = int(codes.shape[0])
    quant = {
        "codes": pack_bits(codes.reshape(rows, -1).cpu(), bits, signed=True),
        "step": step.reshape(-1).to(torch.float32).cpu().clone(),
    }
    weights = codes.numel()
    code_bytes, step_bytes = _nbytes(quant["codes"]), _nbytes(quant["step"])
    shape = [int(s) for s in codes.shape]
    entry = {"name": name, "shape": shape, "bits": bits, "weights": weights}
    report = LayerExport(
        name=name, shape=shape, bits=bits, weights=weights, fp32_bytes=4 * weights, code_bytes=code_bytes,
        step_bytes=step_bytes, exported_bytes=code_bytes + step_bytes,
        bits_per_weight=8 * (code_bytes + step_bytes) / max(1, weights),
    )  # fmt: skip
    return quant, entry, report


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    config: QDetrConfig,
    categories: Sequence[tuple[int, str]] | None = None,
) -> ExportReport:
    """Write ``model`` (a DETR quantized with ``config``) to ``path`` as packed codes plus float state; atomic.

    ``categories``: the ``(COCO category id, name)`` of each label index (a model folder's recorded
    ones, ``load_model_folder(...)[2]["categories"]``), stored in the metadata and as the stored
    DETR config's ``id2label`` / ``label2id`` (the model itself is not changed).

    Every check (the model is what ``config`` makes of its DETR, every layer's codes round-trip
    exactly) runs before the disk is touched, and the file is written through ``slimkit.io``
    (temp file + rename): a refusal leaves no file, and an existing file at ``path`` as it was.
    """
    if not isinstance(config, QDetrConfig):
        raise BadInputError(f"export takes the model's QDetrConfig, got {type(config).__name__}")
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{target} is a folder; give the path of the .safetensors file to write")
    detr: Any = getattr(model, "config", None)
    if not isinstance(detr, DetrConfig):
        raise BadInputError(f"{type(model).__name__} has no DetrConfig: export takes a quantized DetrForObjectDetection")
    detr_dict = json.loads(json.dumps(detr.to_dict()))
    labels = int(detr.num_labels or 0)
    recorded = None if categories is None else categories_to_json(categories, labels)
    if recorded is not None:  # the names as the stored config's labels, as a model folder's config.json has them
        detr_dict["id2label"] = {str(i): c["name"] for i, c in enumerate(recorded)}
        detr_dict["label2id"] = {c["name"]: i for i, c in enumerate(recorded)}
    layers = _check_model(model, config, detr_dict)
    state = model.state_dict()
    coded = _coded_keys(layers, state)
    tensors: dict[str, Tensor] = {}
    entries: list[dict[str, Any]] = []
    reports: list[LayerExport] = []
    for name, layer in layers.items():
        quant, entry, report = _pack(name, layer)
        tensors.update({f"{QUANT}{name}.{k}": v for k, v in quant.items()})
        entries.append(entry)
        reports.append(report)
    other = 0
    for key, value in state.items():
        if key not in coded:
            tensors[STATE + key] = value.detach().cpu().contiguous()
            other += _nbytes(value)
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package": "qdetr", "version": __version__,
        "torch": torch.__version__, "config": config_to_dict(config), "detr_config": detr_dict,
        "layers": entries,
    }  # fmt: skip
    if recorded is not None:
        meta[CATEGORIES] = recorded
    save_checked_state_dict(target, tensors, meta)  # adds the tensor list and the checksum
    fp32 = sum(r.fp32_bytes for r in reports)
    exported = sum(r.exported_bytes for r in reports)
    return ExportReport(
        path=str(target), version=__version__, bits=_bits(config), layers=reports, weights_fp32_bytes=fp32,
        weights_exported_bytes=exported, code_bytes=sum(r.code_bytes for r in reports),
        bits_per_weight=8 * exported / max(1, sum(r.weights for r in reports)), compression=fp32 / max(1, exported),
        other_bytes=other, file_bytes=target.stat().st_size,
    )  # fmt: skip


# --------------------------------------------------------------------------- load


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """The tensors and checked metadata of an export file; a one-line CorruptFileError for anything off."""
    tensors, meta, p = load_checked_state_dict(path, FORMAT, FORMAT_VERSION, "a qdetr export")
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(e, dict) for e in layers):
        raise CorruptFileError(f"{p} has corrupt export metadata (layer table)")
    if CATEGORIES in meta:
        categories_from_json(meta[CATEGORIES], str(p))
    return tensors, meta, p


def export_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked metadata of an export file (configs, layer table, version, checksum), without building a model."""
    return _read(path)[1]


def load_exported(path: str | os.PathLike[str]) -> DetrForObjectDetection:
    """The quantized DETR stored in ``path`` by :func:`export`, rebuilt from the file alone, in eval mode.

    Builds ``DetrForObjectDetection`` from the stored DETR config (the global RNG is left as it
    was), quantizes it with the stored QDetrConfig, checks that every tensor of the file fits
    (names, dtypes, shapes, codes that round-trip), and only then writes the decoded weights and
    the rest of the state, strictly. A damaged or mismatched file is a one-line
    :class:`CorruptFileError` / :class:`BadInputError` and no model is returned.
    """
    tensors, meta, p = _read(path)
    stored = meta.get("config")
    if not isinstance(stored, dict):
        raise CorruptFileError(f"{p} holds no QDetrConfig")
    try:
        config = config_from_dict(QDetrConfig, stored)
    except BadInputError as exc:
        raise CorruptFileError(f"{p} holds an invalid QDetrConfig: {_one_line(exc)}") from None
    detr_config = _detr_config(meta.get("detr_config"), str(p))
    if CATEGORIES in meta:
        categories_from_json(meta[CATEGORIES], str(p), int(detr_config.num_labels or 0))  # one per class
    try:
        model = _build(detr_config, config)
    except (BadInputError, TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CorruptFileError(f"{p}: its configs do not build a quantized DETR ({_one_line(exc)[:200]})") from None
    for write in _plan(model, tensors, meta, p):
        write()
    model.eval()
    return model


def _mismatch(p: Path, problem: str) -> CorruptFileError:
    return CorruptFileError(f"{p} does not fit the DETR its configs build: {problem}")


def _plan(model: nn.Module, tensors: dict[str, Tensor], meta: dict[str, Any], p: Path) -> list[Callable[[], None]]:
    """Check every tensor of the file against the rebuilt ``model`` and decode the codes; returns the writes."""
    layers = _lsq_layers(model)
    table = {str(e.get("name")): e for e in meta["layers"]}
    if set(table) != set(layers):
        problems = []
        if set(table) - set(layers):
            problems.append(f"quantized layer(s) the model lacks: {short_list(set(table) - set(layers))}")
        if set(layers) - set(table):
            problems.append(f"model layer(s) not in the file: {short_list(set(layers) - set(table))}")
        raise _mismatch(p, "; ".join(problems))
    for name, layer in layers.items():
        entry, shape = table[name], list(layer.latent_weight.shape)
        if entry.get("bits") != layer.w_bits or entry.get("shape") != shape:
            raise _mismatch(p, f"layer {name} is listed as {entry.get('bits')}-bit {entry.get('shape')}, "
                               f"the model's is {layer.w_bits}-bit {shape}")  # fmt: skip
    state = model.state_dict()
    coded = _coded_keys(layers, state)
    own = {k: v for k, v in state.items() if k not in coded}
    stored = {k[len(STATE) :]: v for k, v in tensors.items() if k.startswith(STATE)}
    if set(own) != set(stored):
        problems = []
        if set(stored) - set(own):
            problems.append(f"tensor(s) the model lacks: {short_list(set(stored) - set(own))}")
        if set(own) - set(stored):
            problems.append(f"model tensor(s) not in the file: {short_list(set(own) - set(stored))}")
        raise _mismatch(p, "; ".join(problems))
    for k, v in own.items():
        if stored[k].shape != v.shape or stored[k].dtype != v.dtype:
            got, want = f"{stored[k].dtype} {list(stored[k].shape)}", f"{v.dtype} {list(v.shape)}"
            raise _mismatch(p, f"{STATE}{k} is {got}, the model needs {want}")
    expected = {f"{QUANT}{n}.{s}" for n in layers for s in ("codes", "step")}
    unknown = {k for k in tensors if not k.startswith(STATE)} - expected
    if unknown:
        raise _mismatch(p, f"unknown tensor(s) {short_list(unknown)}")
    writes: list[Callable[[], None]] = [_state_write(model, stored)]
    writes += [_decode(p, name, layer, tensors) for name, layer in layers.items()]
    return writes


def _state_write(model: nn.Module, stored: dict[str, Tensor]) -> Callable[[], None]:
    @torch.no_grad()
    def write() -> None:
        result = model.load_state_dict(stored, strict=False)
        assert not result.unexpected_keys

    return write


def _decode(p: Path, name: str, layer: LSQLayer, tensors: dict[str, Tensor]) -> Callable[[], None]:
    """Validate and decode one layer; returns the (infallible) write into ``layer``."""
    w, step_param = layer.latent_weight, layer.weight_quant.step
    bits, rows, row = int(layer.w_bits), int(w.shape[0]), math.prod(w.shape[1:])
    want = {"codes": (torch.int32, (rows, packed_length(row, bits))), "step": (torch.float32, (max(1, step_param.numel()),))}
    got: dict[str, Tensor] = {}
    for short, (dtype, shape) in want.items():
        key = f"{QUANT}{name}.{short}"
        if key not in tensors:
            raise CorruptFileError(f"{p} is missing tensor {key}")
        t = tensors[key]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise _mismatch(p, f"{key} is {t.dtype} {list(t.shape)}, the layer needs {dtype} {list(shape)}")
        got[short] = t
    step = got["step"].to(step_param.dtype).reshape(step_param.shape)
    if not bool((torch.isfinite(step) & (step >= layer.weight_quant.eps)).all()):
        raise CorruptFileError(f"{p}: {QUANT}{name}.step holds steps that are not finite and positive")
    codes = unpack_bits(got["codes"], bits, row, signed=True).reshape(w.shape)
    latent = codes.to(w.dtype) * step
    spec = layer.weight_quant.spec  # the quantizer's int_repr with the stored step (the layer's is not written yet)
    again = torch.round(torch.clamp(latent * (1.0 / step), spec.qmin, spec.qmax)).to(torch.int8)
    if not torch.equal(again, codes):
        raise CorruptFileError(f"{p}: {QUANT}{name} codes and steps do not round-trip through the layer's quantizer")
    base: Any = layer.base_layer

    @torch.no_grad()
    def write() -> None:  # after the state: the FP original becomes the decoded layer (for dequantize)
        w.copy_(latent)
        step_param.copy_(step)
        base.weight.copy_(latent)
        if base.bias is not None and layer.latent_bias is not None:
            base.bias.copy_(layer.latent_bias)

    return write
