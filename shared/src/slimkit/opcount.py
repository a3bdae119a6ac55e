"""MACs, FP FLOPs, BOPs and binary-network OPs of one forward pass, per layer, with per-layer bit-widths.

Why: low-bit papers compare models by cost, not by wall time: BOPs for quantized layers and
"OPs = FLOPs + BOPs / 64" for binary networks. Counting those by hand for every architecture is
where comparisons go wrong, so the counter runs the model once and records every product it does.

Definitions (the Bi-Real Net / ReActNet / Bi-ViT convention):

- **MACs** (multiply-accumulates) of one call:
  conv ``out.numel() * (C_in / groups) * prod(kernel)`` (= ``C_out * H_out * W_out * C_in/groups * kh * kw``
  per sample); transposed conv ``in.numel() * (C_out / groups) * prod(kernel)``; linear
  ``tokens * in * out``; a matmul ``out.numel() * K``; attention ``B*h * (L*S*d + L*S*d_v)`` (QK^T and AV).
  Element-wise work (bias, norms, softmax, activations) is not counted.
- **FP FLOPs** = MACs of the full-precision rows (``w_bits == a_bits == 32``): **one MAC counts as
  one FLOP**, as in those papers (ResNet-18: 1.8e9 FLOPs). ``torch.utils.flop_counter`` and
  :func:`slimkit.bench.count_flops` count 2 per MAC.
- **BOPs** = ``MACs * b_w * b_a`` summed over the other (quantized) rows; a 32-bit side counts as 32.
- **OPs** (binary-network papers) = ``FP FLOPs + BOPs / 64``.

How products are found: :func:`count_ops` runs the model under a ``torch.overrides.TorchFunctionMode``
that sees every call of ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d/3d``, ``F.linear``,
``torch.matmul`` / ``@`` / ``mm`` / ``bmm`` / ``addmm`` / ``baddbmm``, ``F.scaled_dot_product_attention``
and ``F.multi_head_attention_forward``, while forward pre-/post-hooks on every submodule keep the
name of the innermost running module. So a product is counted where it really happens, with the
tensors it really uses (a layer that slices its weight, as MultiQuant's branches do, is counted on
the slice):

- ``nn.Conv*`` / ``nn.Linear`` call ``F.conv*`` / ``F.linear``: rows ``"conv"`` / ``"linear"`` named
  after the layer;
- timm's ``Attention`` (and any module like it) computes ``q @ k^T`` and ``attn @ v``, or calls
  ``F.scaled_dot_product_attention`` (timm's ``fused_attn``): one ``"matmul"`` row named after the
  attention module, the same count either way; its ``qkv`` / ``proj`` Linears are their own rows;
- ``nn.MultiheadAttention`` (torchvision's ViT) calls ``F.multi_head_attention_forward``, whose
  insides the mode cannot see: it is counted from shapes, a ``"linear"`` row for the in/out
  projections and a ``"matmul"`` row for QK^T and AV, both named after the module;
- a matmul with an ``nn.Parameter`` operand is a ``"linear"`` row (weight x activation); any other
  matmul is activation x activation, a ``"matmul"`` row whose two operands both take ``a_bits``.

Not counted: ``torch.einsum`` and other products outside the list above. Eager mode only (a
``torch.compile``'d module is not looked into). Counts are for the input given:
pass one sample for per-image numbers.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from slimkit.errors import BadInputError
from slimkit.report import ReportMixin

__all__ = ["FP_BITS", "KINDS", "LayerBits", "OpCount", "OpRow", "binary_ops", "count_ops", "resolve_bits"]

FP_BITS = 32
KINDS = ("conv", "linear", "matmul")

LayerBits = Mapping[str, tuple[int, int]] | Callable[[str, nn.Module], tuple[int, int] | None] | None
"""A bit assignment: ``{name or fnmatch pattern: (w_bits, a_bits)}`` or ``fn(name, module) -> (w, a) | None``."""


@dataclass
class OpRow(ReportMixin):
    """One module's products of one kind, summed over its calls."""

    name: str
    kind: str
    calls: int
    macs: int
    w_bits: int
    a_bits: int
    fp_flops: int = 0
    bops: int = 0

    @property
    def is_fp(self) -> bool:
        """Both operands at 32 bits: counted in FP FLOPs, not BOPs."""
        return self.w_bits == FP_BITS and self.a_bits == FP_BITS


@dataclass
class OpCount(ReportMixin):
    """Totals and per-layer rows of :func:`count_ops`; ``to_dict()`` / ``to_json()`` / :meth:`from_dict`."""

    rows: list[OpRow] = field(default_factory=list)
    macs: int = 0
    fp_flops: int = 0
    bops: int = 0
    ops: float = 0.0

    @classmethod
    def from_rows(cls, rows: list[OpRow]) -> OpCount:
        """Totals from rows: ``fp_flops`` = FP MACs, ``bops`` = sum of ``MACs * w * a``, ``ops = fp_flops + bops / 64``."""
        fp = sum(r.fp_flops for r in rows)
        bops = sum(r.bops for r in rows)
        return cls(rows=list(rows), macs=sum(r.macs for r in rows), fp_flops=fp, bops=bops, ops=binary_ops(fp, bops))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpCount:
        """Rebuild from :meth:`to_dict` output (totals recomputed from the rows and checked)."""
        try:
            rows = [
                OpRow(**{k: r[k] for k in ("name", "kind", "calls", "macs", "w_bits", "a_bits", "fp_flops", "bops")})
                for r in data["rows"]
            ]
        except (KeyError, TypeError) as exc:
            raise BadInputError(f"not an OpCount dict: {exc}") from None
        out = cls.from_rows(rows)
        for key in ("macs", "fp_flops", "bops"):
            if key in data and data[key] != getattr(out, key):
                raise BadInputError(f"OpCount {key} {data[key]} does not match its rows ({getattr(out, key)})")
        return out

    def by_kind(self) -> dict[str, int]:
        """MACs per kind (``conv``, ``linear``, ``matmul``)."""
        out = dict.fromkeys(KINDS, 0)
        for r in self.rows:
            out[r.kind] += r.macs
        return out


def binary_ops(fp_flops: int | float, bops: int | float) -> float:
    """Binary-network OPs: ``FP FLOPs + BOPs / 64`` (a 64-bit XNOR-popcount does 64 one-bit MACs)."""
    return float(fp_flops) + float(bops) / 64


def _check_pair(bits: Any, where: str) -> tuple[int, int]:
    if not isinstance(bits, tuple | list) or len(bits) != 2:
        raise BadInputError(f"{where}: bits must be a pair (w_bits, a_bits), got {bits!r}")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= FP_BITS:
            raise BadInputError(f"{where}: bit-widths must be integers in 1..{FP_BITS}, got {bits!r}")
    return int(bits[0]), int(bits[1])


def resolve_bits(
    name: str,
    modules: Mapping[str, nn.Module],
    layer_bits: LayerBits = None,
    default: tuple[int, int] = (FP_BITS, FP_BITS),
) -> tuple[int, int]:
    """The ``(w_bits, a_bits)`` of the products run inside module ``name``.

    The module and then its ancestors are tried, nearest first (so a key naming a block covers
    everything inside it); at each: (1) ``layer_bits`` -- a mapping's exact key, else its first
    fnmatch pattern that matches, or a callable's non-``None`` answer; (2) the module's own integer
    attributes ``w_bits`` and ``a_bits`` (how a quantized layer declares itself). Nothing found:
    ``default``.
    """
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        cand = ".".join(parts[:depth])
        module = modules.get(cand)
        if module is None:
            continue
        if callable(layer_bits) and not isinstance(layer_bits, Mapping):
            got = layer_bits(cand, module)
            if got is not None:
                return _check_pair(got, f"layer_bits({cand!r})")
        elif layer_bits is not None:
            if cand in layer_bits:
                return _check_pair(layer_bits[cand], f"layer_bits[{cand!r}]")
            for pattern, bits in layer_bits.items():
                if fnmatch.fnmatchcase(cand, pattern):
                    return _check_pair(bits, f"layer_bits[{pattern!r}]")
        w, a = getattr(module, "w_bits", None), getattr(module, "a_bits", None)
        if isinstance(w, int) and isinstance(a, int) and not isinstance(w, bool) and not isinstance(a, bool):
            return _check_pair((w, a), f"{cand or 'model'}.w_bits/a_bits")
    return default


# --------------------------------------------------------------------------- products of one call

_CONVS = frozenset({F.conv1d, F.conv2d, F.conv3d})
_CONV_T = frozenset({F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d})
_MATMULS = frozenset(
    {
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.mm,
        torch.Tensor.mm,
        torch.bmm,
        torch.Tensor.bmm,
    }
)
_ADDMMS = frozenset({torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm})
_MHA_SIG = inspect.signature(F.multi_head_attention_forward)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _is_param(t: Any) -> bool:
    return isinstance(t, nn.Parameter)


def _products(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> list[tuple[str, int]]:
    """``[(kind, MACs), ...]`` of one intercepted call (empty for anything not counted)."""
    if func in _CONVS:
        w = _arg(args, kwargs, 1, "weight")
        return [("conv", out.numel() * _numel(w.shape[1:]))]
    if func in _CONV_T:
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        return [("conv", x.numel() * _numel(w.shape[1:]))]
    if func is F.linear:
        w = _arg(args, kwargs, 1, "weight")
        return [("linear", out.numel() * int(w.shape[-1]))]
    if func in _MATMULS or func in _ADDMMS:
        first = 1 if func in _ADDMMS else 0
        a, b = args[first], args[first + 1]
        kind = "linear" if _is_param(a) or _is_param(b) else "matmul"
        return [(kind, out.numel() * int(a.shape[-1]))]
    if func is F.scaled_dot_product_attention:
        q, k, v = args[0], args[1], args[2]
        rows = _numel(q.shape[:-1])
        return [("matmul", rows * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1])))]
    if func is F.multi_head_attention_forward:
        return _mha_products(args, kwargs)
    return []


def _mha_products(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, int]]:
    p = _MHA_SIG.bind(*args, **kwargs).arguments
    query, key, value = p["query"], p["key"], p["value"]
    e = int(p["embed_dim_to_check"])
    batch = int(query.shape[1]) if query.dim() == 3 else 1
    tgt, src = int(query.shape[0]), int(key.shape[0])
    proj = tgt * e * e  # q projection
    proj += src * int(key.shape[-1]) * e if p.get("static_k") is None else 0
    proj += src * int(value.shape[-1]) * e if p.get("static_v") is None else 0
    proj += tgt * e * e  # output projection
    if p.get("static_k") is not None:
        src = int(p["static_k"].shape[1])
    src += int(p.get("bias_k") is not None) + int(bool(p.get("add_zero_attn", False)))
    attn = 2 * tgt * src * e  # QK^T and AV over all heads (heads * head_dim = e)
    return [("linear", batch * proj), ("matmul", batch * attn)]


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[str], record: Callable[[str, str, int], None]) -> None:
        super().__init__()
        self.stack = stack
        self.record = record

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        found = _products(func, args, kwargs, out)
        if found:
            owner = self.stack[-1] if self.stack else ""
            for kind, macs in found:
                self.record(owner, kind, macs)
        return out


def count_ops(
    model: nn.Module,
    *args: Any,
    layer_bits: LayerBits = None,
    default_bits: tuple[int, int] = (FP_BITS, FP_BITS),
    **kwargs: Any,
) -> OpCount:
    """Run ``model(*args, **kwargs)`` once (eval mode, ``no_grad``; the previous mode is restored) and count.

    ``layer_bits`` assigns ``(w_bits, a_bits)`` per module (see :func:`resolve_bits`; 32 = FP);
    products in modules without an assignment get ``default_bits``. Rows come in first-call order,
    one per (module, kind); a ``"matmul"`` row (activation x activation) uses ``(a_bits, a_bits)``.
    """
    default = _check_pair(default_bits, "default_bits")
    if isinstance(layer_bits, Mapping):
        for key, bits in layer_bits.items():
            _check_pair(bits, f"layer_bits[{key!r}]")
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    stack: list[str] = []
    rows: dict[tuple[str, str], OpRow] = {}

    def record(owner: str, kind: str, macs: int) -> None:
        row = rows.get((owner, kind))
        if row is None:
            w, a = resolve_bits(owner, modules, layer_bits, default)
            if kind == "matmul":
                w = a
            row = rows[(owner, kind)] = OpRow(owner, kind, 0, 0, w, a)
        row.calls += 1
        row.macs += int(macs)

    def push(module: nn.Module, _args: Any) -> None:
        stack.append(names[id(module)])

    def pop(module: nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    handles = []
    for module in modules.values():
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop, always_call=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Recorder(stack, record):
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out_rows = list(rows.values())
    for r in out_rows:
        if r.is_fp:
            r.fp_flops = r.macs
        else:
            r.bops = r.macs * r.w_bits * r.a_bits
    return OpCount.from_rows(out_rows)
