"""Export a quantized model as packed integer codes / sign bits plus scales, and load it back.

Why: a fake-quant model still holds float32 weights (research notes §4.7 items 6 and 12: users
find their "exported" model is floats). :func:`export` writes one ``.safetensors`` file in which
every quantized layer's weights are real ``k``-bit codes packed into ``int32`` words
(:mod:`slimkit.packing`) and no float copy of them is kept; :func:`load_exported` rebuilds a
runnable model from it whose eval output equals the fake-quant model's.

**How a loaded layer runs** (the choice): the loader re-applies the stored config to a freshly
built FP model (the user builds it, as with Hugging Face ``from_pretrained``) and writes *latent*
weights decoded from the codes, chosen so the method's own quantizer maps them back to exactly the
stored codes and scales. The loaded model is therefore the same wrapper classes as the exported
one, runs bit for bit what it ran (checked on CPU; see each codec's ``_latent``), and
can be fine-tuned further. No new module type, no forward that only the loader knows.

File layout (tensor names; ``L`` is a quantized layer's module name in the *quantized* model):

- ``state.<key>``: every tensor of ``model.state_dict()`` that is not a quantized weight (FP
  stem / head / patch embedding, BatchNorms, biases, activation bounds, attention binarizers,
  flags), in its own dtype.
- MultiQuant (:class:`~arbitrary_quant.multiquant.MultiBranchConv`):
  ``quant.L.codes`` int32 ``[G, C_out, words]``: the ``weight_bits`` level indices
  ``c = round((2^b - 1) * clip((w - l) / (u - l), 0, 1))`` of all ``G`` branches, each row the
  flattened ``C_in/g * kh * kw`` weights (unsigned); ``quant.L.lower`` / ``quant.L.upper`` float32
  ``[G]``: the per-branch interval. The quantized weight is ``2 c / (2^b - 1) - 1`` (the scale is
  absorbed by the following BatchNorm, as in MultiQuant).
- DFSQ (:class:`~arbitrary_quant.dfsq.DFSQConv`): ``quant.L.codes`` int32 ``[C_out, words]``:
  signed ``weight_bits`` codes ``q`` of the flattened ``C_in * kh * kw`` row; ``quant.L.scale``
  float32 and ``quant.L.zero_point`` int32 ``[C_out]``: ``w = (q + zero_point) * scale``;
  ``quant.L.range`` float32 ``[C_out, 2]``: the MinMax range (so the loader restores weights whose
  min/max give the same scale and zero point bit for bit); ``quant.L.points`` float32
  ``[C_in, 2^bits]`` (``activation="subset"``) or ``quant.L.act_range`` float32 ``[2]`` (baselines).
- Bi-ViT (:class:`~arbitrary_quant.bivit.BinaryLinear`): ``quant.L.signs`` int32
  ``[out, ceil(in / 32)]``: sign bits (``+1`` = bit 1) of ``latent_weight``; ``quant.L.alpha`` float32
  ``[out]``: ``W = alpha * sign``. The attention binarizers' ``alpha`` / ``zero_point`` are in ``state.``.
- Any-Precision baseline (:class:`~arbitrary_quant.baselines.AnyPrecisionLayer`): ``quant.L.codes``
  int32 ``[C_out, words]``: for every ``k`` of the bit list in turn, the packed DoReFa levels
  ``c = round((2^k - 1) * (tanh(w) / (2 max|tanh w|) + 1/2))`` of the flattened row; ``quant.L.scale``
  float32 ``[1]``: ``E|w|``; the weight at ``k`` bits is ``(2 c / (2^k - 1) - 1) * scale``. One set
  of FP weights serves every bit-width, so a packed file stores each bit-width's codes
  (``sum(bit_list)`` bits per weight, 20 for 2/4/6/8, against MultiQuant's ``G x 2 = 8``); the
  loaded layers run those fixed weights (inference only).
- LSQ baseline (:class:`~arbitrary_quant.baselines.LSQLayer`): ``quant.L.codes`` int32
  ``[C_out, words]``: signed ``w_bits`` codes of the flattened row; ``quant.L.step`` float32
  ``[C_out]`` (per channel) or ``[1]``: ``w = codes * step`` (the positive step the forward uses).
  The input quantizer's step / offset are in ``state.``.

Metadata (``slimkit`` key of the safetensors header, JSON): ``format`` (``"arbitrary-quant/packed"``),
``format_version``, ``package``, ``version``, ``torch``, ``method`` (``multiquant`` / ``dfsq`` /
``bivit`` / ``lsq``), ``config`` (``slimkit.io.config_to_dict``), ``model`` (class name, informative),
``method_state`` (MultiQuant: the bit-width the model ran at), ``layers`` (one row per quantized
layer: name, shape, bits, sizes; DFSQ adds ``post_relu``), ``tensors`` (every tensor name) and
``sha256`` (over the metadata and every tensor's name, dtype, shape and bytes), so a truncated,
edited or bit-flipped file is refused rather than loaded as a different model.

Limits, by design: the original FP weights are not in the file, so ``dequantize`` on a loaded
model does not give the FP model back (MultiQuant / LSQ keep the freshly built model's
``base_layer.weight``, unused by their forward; DFSQ hands back the decoded latent weights).
Exactness is checked on CPU in float32; elsewhere a reduction may differ by an ulp.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from arbitrary_quant.baselines import AnyPrecisionLayer, LSQLayer, any_precision_codes, apply_any_precision, apply_lsq
from arbitrary_quant.bivit import BinaryLinear, apply_bivit
from arbitrary_quant.config import AnyPrecisionConfig, BiViTConfig, DFSQConfig, LSQConfig, MultiQuantConfig
from arbitrary_quant.dfsq import DFSQConv, apply_dfsq
from arbitrary_quant.multiquant import MultiBranchConv, apply_multiquant, current_bits, set_bits
from arbitrary_quant.reference import minmax_weight_quantize_reference
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import config_from_dict, config_to_dict, load_checked_state_dict, save_checked_state_dict
from slimkit.packing import pack_bits, pack_signs, packed_length, unpack_bits, unpack_signs
from slimkit.quant import interval_codes
from slimkit.report import ReportMixin
from slimkit.wrappers import unwrap_modules

__all__ = ["FORMAT", "FORMAT_VERSION", "ExportReport", "LayerExport", "export", "export_info", "load_exported"]

FORMAT = "arbitrary-quant/packed"
FORMAT_VERSION = 1
STATE = "state."
QUANT = "quant."
_INTERVAL_EPS = 1e-8  # slimkit.quant.interval_codes floor on ``upper - lower``
_ULP_SEARCH = 4  # Bi-ViT: how many float32 ulps either side of alpha * n the loader tries

try:
    __version__ = version("arbitrary-quant")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"


# --------------------------------------------------------------------------- report


@dataclass
class LayerExport(ReportMixin):
    """One quantized layer as written: what its FP weights cost against what the file spends on it."""

    name: str
    kind: str
    shape: list[int]  # the coded weight tensor (MultiQuant: [G, C_out, C_in/g, kh, kw])
    bits: int  # bits per stored code
    original_weights: int  # weights of the FP layer the wrapper replaced
    fp32_bytes: int  # 4 * original_weights
    code_bytes: int  # the packed int32 words
    param_bytes: int  # scales, zero points, bounds, point sets of this layer
    exported_bytes: int  # code_bytes + param_bytes
    bits_per_weight: float  # 8 * exported_bytes / original_weights
    packing_ratio: float  # fp32 bytes of the coded values / code_bytes (~ 32 / bits)


@dataclass
class ExportReport(ReportMixin):
    """What :func:`export` wrote: per layer and in total, fp32 bytes of the original weights vs bytes exported."""

    path: str
    method: str
    version: str
    layers: list[LayerExport] = field(default_factory=list)
    weights_fp32_bytes: int = 0
    weights_exported_bytes: int = 0
    bits_per_weight: float = 0.0
    compression: float = 0.0  # weights_fp32_bytes / weights_exported_bytes
    other_bytes: int = 0  # every non-quantized tensor stored (``state.``)
    file_bytes: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer plus a total row (for ``slimkit.cli.format_table``)."""
        cols = ("name", "bits", "original_weights", "fp32_bytes", "exported_bytes", "bits_per_weight")
        out = [{c: getattr(layer, c) for c in cols} for layer in self.layers]
        out.append({
            "name": "total", "bits": "", "original_weights": sum(x.original_weights for x in self.layers),
            "fp32_bytes": self.weights_fp32_bytes, "exported_bytes": self.weights_exported_bytes,
            "bits_per_weight": self.bits_per_weight,
        })
        return out


def _layer_report(name: str, kind: str, shape: Iterable[int], bits: int, original: int,
                  quant: dict[str, Tensor], code_key: str) -> LayerExport:
    code_bytes = _nbytes(quant[code_key])
    param_bytes = sum(_nbytes(t) for k, t in quant.items() if k != code_key)
    shape = [int(s) for s in shape]
    exported = code_bytes + param_bytes
    return LayerExport(
        name=name, kind=kind, shape=shape, bits=bits, original_weights=original, fp32_bytes=4 * original,
        code_bytes=code_bytes, param_bytes=param_bytes, exported_bytes=exported,
        bits_per_weight=8 * exported / max(1, original),
        packing_ratio=4 * math.prod(shape) / max(1, code_bytes),
    )


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


# --------------------------------------------------------------------------- per-method codecs


class _Codec:
    """How one method's quantized layers become packed tensors, and how they are put back."""

    method = ""
    config_type: type = object
    wrapper: type[nn.Module] = nn.Module
    replaced: tuple[str, ...] = ()  # a layer's state-dict keys that its packed tensors replace

    def apply(self, model: nn.Module, config: Any) -> None:
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, self.wrapper)]

    def consumed(self, name: str, module: nn.Module) -> list[str]:
        """State-dict keys of ``module`` replaced by the packed tensors (those present)."""
        own = module.state_dict(keep_vars=True)
        return [f"{name}.{k}" for k in self.replaced if k in own]

    def check(self, name: str, module: Any, config: Any) -> None:
        """Refuse a layer that does not match ``config`` (the loader would build a different one)."""

    def pack(self, name: str, module: Any) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
        raise NotImplementedError

    def expected(self, module: Any, entry: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """The tensors (short name -> dtype, shape) a layer of this fresh ``module`` needs."""
        raise NotImplementedError

    def decode(self, module: Any, tensors: dict[str, Tensor], entry: dict[str, Any]) -> Callable[[], None]:
        """Validate and decode one layer; returns the (infallible) step that writes it into ``module``."""
        raise NotImplementedError

    def method_state(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def finish(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Model-level state not held in tensors (MultiQuant's current bit-width)."""


def _weight(module: Any) -> Tensor:
    weight = module.base_layer.weight
    assert isinstance(weight, Tensor)
    return weight


class _MultiQuant(_Codec):
    method = "multiquant"
    config_type = MultiQuantConfig
    wrapper = MultiBranchConv
    # base_layer.weight is the original FP conv weight: unused by the forward, and never written
    replaced = ("branch_weight", "w_lower", "w_upper", "base_layer.weight")

    def apply(self, model: nn.Module, config: Any) -> None:
        apply_multiquant(model, config)

    def check(self, name: str, module: Any, config: Any) -> None:
        if not module.quantize:
            raise BadInputError(f"{name} runs unquantized: set_quantization(model, True) before exporting")
        got = (module.groups, list(module.bit_list), module.weight_bits)
        want = (config.groups, list(config.bit_list), config.weight_bits)
        if got != want:
            raise BadInputError(f"{name} has groups/bit_list/weight_bits {got}, the config says {want}")

    @staticmethod
    def _latent(codes: Tensor, lo: Tensor, up: Tensor, bits: int) -> Tensor:
        """The centre of each code's rounding bin: interval_quantize maps it back to the same code."""
        levels = 2**bits - 1
        width = (up - lo).clamp_min(_INTERVAL_EPS)
        return lo + width * (codes.float() / levels)

    def pack(self, name: str, module: Any) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
        bits = int(module.weight_bits)
        w = module.branch_weight.detach().float().cpu()
        lo = module.w_lower.detach().float().cpu()
        up = module.w_upper.detach().float().cpu()
        codes = interval_codes(w, lo, up, bits)
        if not torch.equal(interval_codes(self._latent(codes, lo, up, bits), lo, up, bits), codes):
            raise BadInputError(f"{name}: the weight interval is degenerate (upper - lower too small to export)")
        g = w.shape[0]
        quant = {
            "codes": pack_bits(codes.reshape(g, w.shape[1], -1), bits),
            "lower": lo.reshape(g).clone(),
            "upper": up.reshape(g).clone(),
        }
        entry = {"name": name, "kind": self.method, "shape": list(w.shape), "bits": bits}
        report = _layer_report(name, self.method, w.shape, bits, _weight(module).numel(), quant, "codes")
        return quant, entry, report

    def expected(self, module: Any, entry: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        g, c_out = module.branch_weight.shape[:2]
        row = math.prod(module.branch_weight.shape[2:])
        words = packed_length(row, int(module.weight_bits))
        return {"codes": (torch.int32, (g, c_out, words)), "lower": (torch.float32, (g,)), "upper": (torch.float32, (g,))}

    def decode(self, module: Any, tensors: dict[str, Tensor], entry: dict[str, Any]) -> Callable[[], None]:
        bits = int(module.weight_bits)
        shape = module.branch_weight.shape
        g = shape[0]
        row = math.prod(shape[2:])
        codes = unpack_bits(tensors["codes"], bits, row, dtype=torch.int64).reshape(shape)
        lo = tensors["lower"].view(g, *([1] * (len(shape) - 1)))
        up = tensors["upper"].view(g, *([1] * (len(shape) - 1)))
        latent = self._latent(codes, lo, up, bits)

        @torch.no_grad()
        def write() -> None:
            module.branch_weight.copy_(latent)
            module.w_lower.copy_(lo)
            module.w_upper.copy_(up)
            module.quantize = True

        return write

    def method_state(self, model: nn.Module) -> dict[str, Any]:
        return {"bits": current_bits(model)}

    def finish(self, model: nn.Module, state: dict[str, Any]) -> None:
        bits = state.get("bits")
        if isinstance(bits, int) and not isinstance(bits, bool):
            set_bits(model, bits)


class _DFSQ(_Codec):
    method = "dfsq"
    config_type = DFSQConfig
    wrapper = DFSQConv
    replaced = ("base_layer.weight", "points", "act_range")

    def apply(self, model: nn.Module, config: Any) -> None:
        apply_dfsq(model, config)

    def check(self, name: str, module: Any, config: Any) -> None:
        if not module.calibrated or module.mode != "quant":
            raise BadInputError(f"DFSQ layer {name} is not calibrated: run calibrate_dfsq before exporting")
        got = (module.bits, module.weight_bits, module.activation)
        want = (config.bits, config.weight_bits, config.activation)
        if got != want:
            raise BadInputError(f"{name} has bits/weight_bits/activation {got}, the config says {want}")

    @staticmethod
    def _minmax(flat: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(lo, hi, constant, delta, z)`` per row, as minmax_weight_quantize_reference computes them."""
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        constant = hi <= lo
        delta = torch.where(constant, torch.ones_like(hi), (hi - lo) / (2**bits - 1))
        z = torch.round(lo / delta) + 2 ** (bits - 1)
        return lo, hi, constant, delta, z

    @classmethod
    def _latent(cls, q: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
        """Weights with min ``lo`` and max ``hi`` per row whose MinMax codes are ``q`` (so the same w_hat)."""
        half = 2 ** (bits - 1)
        constant = hi <= lo
        delta = torch.where(constant, torch.ones_like(hi), (hi - lo) / (2**bits - 1))
        z = torch.round(lo / delta) + half
        top = torch.clamp(torch.round(hi / delta) - z, -half, half - 1)  # the code of the row's maximum
        w = (q.float() + z[:, None]) * delta[:, None]
        w = torch.where(q == -half, lo[:, None], w)  # the minimum's code is always -half
        w = torch.where(q == top[:, None].to(q.dtype), hi[:, None], w)
        return torch.where(constant[:, None], lo[:, None], w)

    def pack(self, name: str, module: Any) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
        bits = int(module.weight_bits)
        weight = _weight(module).detach().float().cpu()
        flat = weight.reshape(weight.shape[0], -1)
        lo, hi, constant, delta, z = self._minmax(flat, bits)
        half = 2 ** (bits - 1)
        q = torch.clamp(torch.round(flat / delta[:, None]) - z[:, None], -half, half - 1).to(torch.int64)
        if float(z.abs().max()) >= 2**31:
            raise BadInputError(f"{name}: a weight channel's zero point does not fit int32 (range far from 0)")
        latent = self._latent(q, lo, hi, bits).reshape(weight.shape)
        if not torch.equal(minmax_weight_quantize_reference(latent, bits), minmax_weight_quantize_reference(weight, bits)):
            raise BadInputError(f"{name}: its MinMax weights cannot be exported exactly")
        # a constant channel (w_hat = lo) is q = -half, zero_point = half + 1, scale = lo: the same formula
        scale = torch.where(constant, lo, delta)
        zero_point = torch.where(constant, torch.full_like(z, half + 1), z).to(torch.int32)
        quant = {
            "codes": pack_bits(q, bits, signed=True),
            "scale": scale.clone(),
            "zero_point": zero_point,
            "range": torch.stack([lo, hi], dim=1),
        }
        if module.activation == "subset":
            quant["points"] = module.points.detach().float().cpu().clone()
        else:
            quant["act_range"] = module.act_range.detach().float().cpu().clone()
        entry = {
            "name": name, "kind": self.method, "shape": list(weight.shape), "bits": bits,
            "act_bits": int(module.bits), "activation": module.activation, "post_relu": bool(module.post_relu),
        }
        report = _layer_report(name, self.method, weight.shape, bits, weight.numel(), quant, "codes")
        return quant, entry, report

    def expected(self, module: Any, entry: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        weight = _weight(module)
        c_out, c_in = weight.shape[:2]
        words = packed_length(math.prod(weight.shape[1:]), int(module.weight_bits))
        out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
            "codes": (torch.int32, (c_out, words)),
            "scale": (torch.float32, (c_out,)),
            "zero_point": (torch.int32, (c_out,)),
            "range": (torch.float32, (c_out, 2)),
        }
        if module.activation == "subset":
            out["points"] = (torch.float32, (c_in, 2 ** int(module.bits)))
        else:
            out["act_range"] = (torch.float32, (2,))
        return out

    def decode(self, module: Any, tensors: dict[str, Tensor], entry: dict[str, Any]) -> Callable[[], None]:
        post_relu = entry.get("post_relu")
        if not isinstance(post_relu, bool):
            raise CorruptFileError(f"layer {entry.get('name')} has no post_relu flag")
        bits = int(module.weight_bits)
        weight = _weight(module)
        row = math.prod(weight.shape[1:])
        q = unpack_bits(tensors["codes"], bits, row, signed=True, dtype=torch.int64)
        rng = tensors["range"]
        latent = self._latent(q, rng[:, 0], rng[:, 1], bits).reshape(weight.shape)
        points, act_range = tensors.get("points"), tensors.get("act_range")

        @torch.no_grad()
        def write() -> None:
            weight.copy_(latent)
            # a freshly wrapped DFSQConv registers points / act_range as None buffers, so
            # load_state_dict cannot restore them: set them (and what calibration decided) here
            device = weight.device
            module.points = None if points is None else points.to(device)
            module.act_range = None if act_range is None else act_range.to(device)
            module.post_relu = post_relu
            module._inputs.clear()
            module.set_mode("quant")

        return write


class _BiViT(_Codec):
    method = "bivit"
    config_type = BiViTConfig
    wrapper = BinaryLinear
    # base_layer.weight is the untouched original: the forward runs latent_weight
    replaced = ("latent_weight", "base_layer.weight")

    def apply(self, model: nn.Module, config: Any) -> None:
        apply_bivit(model, config)

    def pack(self, name: str, module: Any) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
        w = module.latent_weight.detach().float().cpu()
        quant = {"signs": pack_signs(w), "alpha": w.abs().mean(dim=1)}
        entry = {"name": name, "kind": self.method, "shape": list(w.shape), "bits": 1}
        report = _layer_report(name, self.method, w.shape, 1, w.numel(), quant, "signs")
        return quant, entry, report

    def expected(self, module: Any, entry: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        out_f, in_f = module.latent_weight.shape
        return {"signs": (torch.int32, (out_f, packed_length(in_f, 1))), "alpha": (torch.float32, (out_f,))}

    @staticmethod
    def _latent(signs: Tensor, alpha: Tensor) -> Tensor:
        """Rows ``m_i * sign_i`` whose ``mean|.|`` is exactly ``alpha`` (BinaryLinear recomputes it from them).

        ``n`` copies of ``alpha`` do not always average to ``alpha`` in float32 (the rounded sum can
        skip it), so each row's magnitudes are integer multiples of ``q = ulp(S)`` summing to a chosen
        float32 ``S``: every partial sum is then exact in any order, the mean is ``fl(S / n)``, and
        ``S`` is searched among the few floats around ``alpha * n`` (the original row's sum is one of
        them). A row with no hit (not seen in practice) keeps ``alpha * sign``, one ulp off at most.
        """
        n = signs.shape[1]
        cols = torch.arange(n)
        best = alpha[:, None] * signs
        found = torch.zeros_like(alpha, dtype=torch.bool)
        total = alpha * n
        sums, up, down = [total], total, total
        for _ in range(_ULP_SEARCH):
            up = torch.nextafter(up, torch.full_like(up, math.inf))
            down = torch.nextafter(down, torch.full_like(down, -math.inf))
            sums += [up, down]
        for s in sums:
            q = torch.ldexp(torch.ones_like(s), torch.frexp(s).exponent - 24)  # ulp(s): s / q < 2^24
            m = torch.round(s / q).to(torch.int64)
            k, r = m // n, m % n
            mags = (k[:, None] + (cols[None, :] < r[:, None]).to(torch.int64)).float() * q[:, None]
            rows = mags * signs
            hit = (rows.abs().mean(dim=1) == alpha) & ~found
            best = torch.where(hit[:, None], rows, best)
            found |= hit
        return best

    def decode(self, module: Any, tensors: dict[str, Tensor], entry: dict[str, Any]) -> Callable[[], None]:
        weight = module.latent_weight
        signs = unpack_signs(tensors["signs"], weight.shape[1])
        latent = self._latent(signs, tensors["alpha"])

        @torch.no_grad()
        def write() -> None:
            weight.copy_(latent)

        return write


class _LSQ(_Codec):
    method = "lsq"
    config_type = LSQConfig
    wrapper = LSQLayer
    # base_layer.weight is the untouched original: the forward runs latent_weight
    replaced = ("latent_weight", "weight_quant.step", "base_layer.weight")

    def apply(self, model: nn.Module, config: Any) -> None:
        apply_lsq(model, config)

    def check(self, name: str, module: Any, config: Any) -> None:
        got = (module.w_bits, module.a_bits, module.weight_quant.spec.granularity == "channel")
        want = (config.w_bits, config.a_bits, config.per_channel)
        if got != want:
            raise BadInputError(f"{name} has w_bits/a_bits/per_channel {got}, the config says {want}")

    def pack(self, name: str, module: Any) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
        bits = int(module.w_bits)
        codes, step = module.int_weight()
        codes = codes.to(torch.int64).cpu()
        step = step.float().cpu()
        latent = codes.float() * step
        if not torch.equal(module.weight_quant.int_repr(latent.to(module.latent_weight), torch.int64).cpu(), codes):
            raise BadInputError(f"{name}: its LSQ weights cannot be exported exactly")
        quant = {"codes": pack_bits(codes.reshape(codes.shape[0], -1), bits, signed=True), "step": step.reshape(-1).clone()}
        entry = {"name": name, "kind": self.method, "shape": list(codes.shape), "bits": bits}
        report = _layer_report(name, self.method, codes.shape, bits, codes.numel(), quant, "codes")
        return quant, entry, report

    def expected(self, module: Any, entry: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        w = module.latent_weight
        words = packed_length(math.prod(w.shape[1:]), int(module.w_bits))
        return {"codes": (torch.int32, (w.shape[0], words)), "step": (torch.float32, (max(1, module.weight_quant.step.numel()),))}

    def decode(self, module: Any, tensors: dict[str, Tensor], entry: dict[str, Any]) -> Callable[[], None]:
        w, step_param = module.latent_weight, module.weight_quant.step
        codes = unpack_bits(tensors["codes"], int(module.w_bits), math.prod(w.shape[1:]), signed=True, dtype=torch.int64)
        step = tensors["step"].reshape(step_param.shape)
        # the step stored is the one the forward used (|step| floored at eps): a fixed point of that rule
        latent = codes.reshape(w.shape).float() * step

        @torch.no_grad()
        def write() -> None:
            w.copy_(latent)
            step_param.copy_(step)

        return write


class _AnyPrecision(_Codec):
    method = "any-precision"
    config_type = AnyPrecisionConfig
    wrapper = AnyPrecisionLayer
    # the shared FP weights are not exported: each bit-width's DoReFa codes are
    replaced = ("latent_weight", "base_layer.weight")

    def apply(self, model: nn.Module, config: Any) -> None:
        apply_any_precision(model, config)

    def check(self, name: str, module: Any, config: Any) -> None:
        if list(module.bit_list) != list(config.bit_list):
            raise BadInputError(f"{name} has bit_list {list(module.bit_list)}, the config says {list(config.bit_list)}")

    @staticmethod
    def _codes(module: Any, bits: int) -> tuple[Tensor, Tensor]:
        """Level indices and ``E|w|`` at ``bits``: from the latent weights, or back from fixed ones."""
        if not module.fixed:
            codes, scale = any_precision_codes(module.latent_weight.float().cpu(), bits)
            return codes, scale.reshape(1)
        w = getattr(module, f"fixed_weight_{bits}").float().cpu()
        scale = module.fixed_scale.float().cpu().reshape(1)
        return torch.round((w / scale + 1) * (2**bits - 1) / 2).to(torch.int64), scale

    def pack(self, name: str, module: Any) -> tuple[dict[str, Tensor], dict[str, Any], LayerExport]:
        rows = module.latent_weight.shape[0]
        parts, scale = [], None
        for bits in module.bit_list:
            codes, scale = self._codes(module, bits)
            parts.append(pack_bits(codes.reshape(rows, -1), bits))
        assert scale is not None
        if not float(scale) > 0:
            raise BadInputError(f"{name}: its weights are all zero (nothing to export)")
        quant = {"codes": torch.cat(parts, dim=1), "scale": scale.float().clone()}
        total = sum(module.bit_list)
        entry = {"name": name, "kind": self.method, "shape": list(module.latent_weight.shape), "bits": list(module.bit_list)}
        report = _layer_report(name, self.method, module.latent_weight.shape, total, module.latent_weight.numel(), quant, "codes")
        return quant, entry, report

    def expected(self, module: Any, entry: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        w = module.latent_weight
        words = sum(packed_length(math.prod(w.shape[1:]), b) for b in module.bit_list)
        return {"codes": (torch.int32, (w.shape[0], words)), "scale": (torch.float32, (1,))}

    def decode(self, module: Any, tensors: dict[str, Tensor], entry: dict[str, Any]) -> Callable[[], None]:
        w = module.latent_weight
        row = math.prod(w.shape[1:])
        scale = tensors["scale"].reshape(())
        weights, start = {}, 0
        for bits in module.bit_list:
            words = packed_length(row, bits)
            codes = unpack_bits(tensors["codes"][:, start : start + words].contiguous(), bits, row, dtype=torch.int64)
            weights[bits] = ((2 * codes.float() / (2**bits - 1) - 1) * scale).reshape(w.shape)
            start += words

        def write() -> None:
            module.fix_weights(weights, scale.clone())

        return write


_CODECS: dict[type, _Codec] = {c.config_type: c for c in (_MultiQuant(), _DFSQ(), _BiViT(), _LSQ(), _AnyPrecision())}
_BY_METHOD: dict[str, _Codec] = {c.method: c for c in _CODECS.values()}


def _codec_for(config: Any) -> _Codec:
    codec = _CODECS.get(type(config))
    if codec is None:
        known = ", ".join(t.__name__ for t in _CODECS)
        raise BadInputError(f"cannot export a {type(config).__name__} model (exportable configs: {known})")
    return codec


# --------------------------------------------------------------------------- export


def export(model: nn.Module, path: str | os.PathLike[str], config: Any) -> ExportReport:
    """Write ``model`` (quantized with ``config``) to ``path`` as packed codes plus float state; atomic.

    Every check runs before anything touches the disk, and the file is written through
    ``slimkit.io`` (temp file + rename), so a failure leaves no file and never a partial one
    (an existing file at ``path`` stays as it was).
    """
    codec = _codec_for(config)
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{target} is a folder; give the path of the .safetensors file to write")
    layers = codec.layers(model)
    if not layers:
        raise BadInputError(f"the model has no {codec.wrapper.__name__} layers: quantize it with the {type(config).__name__} first")
    state = model.state_dict()
    consumed: set[str] = set()
    tensors: dict[str, Tensor] = {}
    entries: list[dict[str, Any]] = []
    reports: list[LayerExport] = []
    for name, module in layers:
        codec.check(name, module, config)
        quant, entry, report = codec.pack(name, module)
        for key, value in quant.items():
            tensors[f"{QUANT}{name}.{key}"] = value
        entries.append(entry)
        reports.append(report)
        consumed.update(codec.consumed(name, module))
    other = 0
    for key, value in state.items():
        if key not in consumed:
            tensors[STATE + key] = value.detach().contiguous().cpu()
            other += _nbytes(value)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package": "arbitrary-quant",
        "version": __version__,
        "torch": torch.__version__,
        "method": codec.method,
        "config": config_to_dict(config),
        "model": type(model).__name__,
        "method_state": codec.method_state(model),
        "layers": [{**e, **{k: getattr(r, k) for k in ("original_weights", "fp32_bytes", "exported_bytes")}}
                   for e, r in zip(entries, reports)],
    }
    save_checked_state_dict(target, tensors, meta)  # adds the tensor list and the checksum
    fp32 = sum(r.fp32_bytes for r in reports)
    exported = sum(r.exported_bytes for r in reports)
    return ExportReport(
        path=str(target),
        method=codec.method,
        version=__version__,
        layers=reports,
        weights_fp32_bytes=fp32,
        weights_exported_bytes=exported,
        bits_per_weight=8 * exported / max(1, sum(r.original_weights for r in reports)),
        compression=fp32 / max(1, exported),
        other_bytes=other,
        file_bytes=target.stat().st_size,
    )


# --------------------------------------------------------------------------- load


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """Tensors and checked metadata of an export file; CorruptFileError for anything that is off."""
    tensors, meta, p = load_checked_state_dict(path, FORMAT, FORMAT_VERSION, "an arbitrary-quant export")
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(e, dict) for e in layers):
        raise CorruptFileError(f"{p} has corrupt export metadata (layer table)")
    if meta.get("method") not in _BY_METHOD or not isinstance(meta.get("config"), dict):
        raise CorruptFileError(f"{p} has an unknown method {meta.get('method')!r} or no config")
    return tensors, meta, p


def export_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked metadata of an export file (method, config, layer table, version), without a model."""
    return _read(path)[1]


def load_exported(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Rebuild the exported quantized model on ``model``, a freshly built FP model of the same architecture.

    Re-applies the stored config, checks that every tensor fits, then writes the float state and
    the weights decoded from the packed codes (see the module docstring); returns ``model`` in
    eval mode. On any mismatch ``model`` is put back as it was (wrappers removed) and a one-line
    :class:`BadInputError` (wrong model) or :class:`CorruptFileError` (bad file) is raised.
    """
    tensors, meta, p = _read(path)
    codec = _BY_METHOD[meta["method"]]
    try:
        config: Any = config_from_dict(codec.config_type, meta["config"])
    except BadInputError as exc:
        raise CorruptFileError(f"{p} holds an invalid config: {_one_line(exc)}") from None
    try:
        codec.apply(model, config)
    except BadInputError as exc:
        raise BadInputError(f"the model does not fit {p.name} ({type(config).__name__}): {_one_line(exc)}") from None
    try:
        writes = _plan(model, codec, tensors, meta, p)
    except BaseException:
        unwrap_modules(model)  # leave the user's model as it was given
        raise
    for write in writes:
        write()
    codec.finish(model, meta.get("method_state") or {})
    return model.eval()


def _mismatch(p: Path, problem: str) -> BadInputError:
    return BadInputError(f"the model does not match {p.name}: {problem}")


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def _plan(model: nn.Module, codec: _Codec, tensors: dict[str, Tensor], meta: dict[str, Any], p: Path) -> list[Callable[[], None]]:
    """Check the converted ``model`` against the file and decode everything; returns the writes to run."""
    layers = dict(codec.layers(model))
    table = {str(e.get("name")): e for e in meta["layers"]}
    if set(table) != set(layers):
        problems = []
        if set(table) - set(layers):
            problems.append(f"quantized layer(s) not in the model: {_listed(set(table) - set(layers))}")
        if set(layers) - set(table):
            problems.append(f"model layer(s) not in the file: {_listed(set(layers) - set(table))}")
        raise _mismatch(p, "; ".join(problems))
    consumed = {k for n, m in layers.items() for k in codec.consumed(n, m)}
    own = {k: v for k, v in model.state_dict().items() if k not in consumed}
    stored = {k[len(STATE):]: v for k, v in tensors.items() if k.startswith(STATE)}
    if set(own) != set(stored):
        problems = []
        if set(stored) - set(own):
            problems.append(f"tensor(s) the model lacks: {_listed(set(stored) - set(own))}")
        if set(own) - set(stored):
            problems.append(f"model tensor(s) not in the file: {_listed(set(own) - set(stored))}")
        raise _mismatch(p, "; ".join(problems))
    shapes = [f"{k} {list(stored[k].shape)} vs {list(v.shape)}" for k, v in own.items() if stored[k].shape != v.shape]
    if shapes:
        raise _mismatch(p, "shape(s) differ: " + ", ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    writes: list[Callable[[], None]] = []
    for name, module in layers.items():
        entry = table[name]
        want = codec.expected(module, entry)
        quant: dict[str, Tensor] = {}
        for short, (dtype, shape) in want.items():
            key = f"{QUANT}{name}.{short}"
            if key not in tensors:
                raise CorruptFileError(f"{p} is missing tensor {key}")
            t = tensors[key]
            if t.dtype != dtype:
                raise CorruptFileError(f"{p}: {key} is {t.dtype}, expected {dtype}")
            if tuple(t.shape) != shape:
                raise _mismatch(p, f"{key} has shape {list(t.shape)}, the model's layer needs {list(shape)}")
            quant[short] = t
        writes.append(codec.decode(module, quant, entry))

    @torch.no_grad()
    def write_state() -> None:
        result = model.load_state_dict(stored, strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) <= consumed

    return [write_state, *writes]

