"""MultiQuant (arXiv 2305.08117): one network that runs at any bit-width of a list, built from 2-bit branches.

The conversion is in place and undoable. The body of a CNN (everything between the stem and
the classifier) is widened ``G = groups`` times: every body conv becomes a grouped conv with one
channel slice per branch, initialised by tiling the original weights, so a trained FP model is
the starting point (the official ResNet-50 path meant to do this is broken; this one is tested).

- :class:`BranchTile` wraps the stem's last module and tiles its output over the active branches.
- :class:`MultiBranchConv` wraps a body conv: weights ``[G, C_out, C_in/g, kh, kw]``, 2-bit per branch
  through MultiQuant's learned interval ``[l, u]`` (one pair per branch); its input through the same
  quantizer at ``k`` bits, one ``[l, u]`` pair per branch and per bit-width. As in the official
  ``QConv`` the scale is not multiplied back: the following (switchable) BatchNorm absorbs it.
- :class:`SwitchableBN` wraps a body BatchNorm: one BatchNorm per bit-width, sized to that
  bit-width's active channels, initialised from the original.
- :class:`BranchShuffle` wraps a BasicBlock with a downsample path and channel-shuffles its output
  across the active branches (``config.shuffle``).
- :class:`BranchMerge` wraps the classifier and averages its input over the branches (the official
  code averages the branch chunks after the last block; global pooling is linear, so it is the same).

A ``k``-bit forward runs the ``k // 2`` branches of :meth:`MultiQuantConfig.branches` (the official
amortized table by default): a grouped conv of ``k/2`` W2A``k`` slices costs ``(k/2) * 2 * k * M = k^2 M``
BOPs, exactly a W``k``A``k`` layer's. Switch with :func:`set_bits`.

Odd ``k`` adds the narrow extra branch (:meth:`MultiQuantConfig.narrow`): every ``C``-channel
tensor of the body carries ``n * C + m(C)`` channels, the last ``m(C) = round(ratio * C)`` of them
the narrow branch, whose conv uses the leading ``m(C_out) x m(C_in)`` weights of one more branch
(shared storage, 2-bit, that branch's interval) at ``k``-bit inputs with bounds of their own. One
rule for every tensor keeps residual sums aligned in any architecture. Where the official
ResNets special-case the ends, this generic form differs deliberately: the narrow branch reads
the first ``m`` channels of the stem output (official: all of them in the first block's convs)
and ends at ``m`` channels, zero-padded to ``C`` before the average over ``n + 1`` branch chunks
(official: its last conv widens it to ``C``); the channel shuffle permutes the full branches and
leaves the narrow chunk in place (official: a reshape that depends on divisibility).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arbitrary_quant.config import MultiQuantConfig
from arbitrary_quant.registry import REGISTRY
from slimkit.errors import BadInputError
from slimkit.quant import interval_quantize
from slimkit.report import ReportMixin
from slimkit.surgery import set_module
from slimkit.wrappers import WrapperModule, wrapped_modules

__all__ = [
    "BranchMerge",
    "BranchShuffle",
    "BranchTile",
    "MultiBranchConv",
    "MultiQuantReport",
    "Switchable",
    "SwitchableBN",
    "body_modules",
    "bound_parameters",
    "current_bits",
    "find_head",
    "find_stem",
    "init_bounds",
    "multiquant",
    "narrow_channels",
    "set_bits",
    "set_quantization",
    "storage_bits",
]

_ACT_STD_FACTOR = 1.0 / math.sqrt(1.0 - 2.0 / math.pi)  # official init: u_A = 3 std(x) / sqrt(1 - 2/pi)


def narrow_channels(channels: int, ratio: float) -> int:
    """Channels of the narrow extra branch for a ``channels``-wide tensor: ``round(ratio * C)``, at least 1."""
    return max(1, min(channels, round(ratio * channels)))


class Switchable(WrapperModule):
    """A MultiQuant wrapper: knows the bit-width list, the current bit-width and its branches."""

    pairs_with_bn = False

    def __init__(self, base_layer: nn.Module, config: MultiQuantConfig) -> None:
        super().__init__(base_layer)
        self.groups = config.groups
        self.bit_list = tuple(config.bit_list)
        self.table = {b: config.branches(b) for b in self.bit_list}
        self.narrow_table = {b: config.narrow(b) for b in self.bit_list}
        self.bits = self.bit_list[-1]

    @property
    def branches(self) -> tuple[int, ...]:
        """The full branches the current bit-width runs."""
        return self.table[self.bits]

    @property
    def narrow_branch(self) -> int | None:
        """The branch whose leading channels form the narrow extra branch (odd bit-widths), else ``None``."""
        spec = self.narrow_table[self.bits]
        return None if spec is None else spec[0]

    def narrow_of(self, channels: int, bits: int | None = None) -> int:
        """Channels of the narrow branch for a ``channels``-wide tensor (0 without one)."""
        spec = self.narrow_table[self.bits if bits is None else bits]
        return 0 if spec is None else narrow_channels(channels, spec[1])

    def active_width(self, channels: int, bits: int | None = None) -> int:
        """Channels a ``channels``-wide tensor of the original model has at ``bits`` (default: current)."""
        b = self.bits if bits is None else bits
        return len(self.table[b]) * channels + self.narrow_of(channels, b)

    def set_bits(self, bits: int) -> None:
        if bits not in self.table:
            raise BadInputError(f"{bits} bits is not in the trained bit_list {list(self.bit_list)}")
        self.bits = bits


class BranchTile(Switchable):
    """The stem's last module; its output is repeated once per active branch along the channels."""

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        out: Tensor = self.base_layer(*args, **kwargs)
        tiled = out.repeat(1, len(self.branches), *([1] * (out.dim() - 2)))
        m = self.narrow_of(out.shape[1])
        return torch.cat([tiled, out[:, :m]], dim=1) if m else tiled


class BranchMerge(Switchable):
    """The classifier; its input ``[B, n * C]`` is averaged over the ``n`` active branch chunks first."""

    def forward(self, x: Tensor) -> Tensor:
        head = self.base_layer
        assert isinstance(head, nn.Linear)
        c, n = head.in_features, len(self.branches)
        if x.shape[-1] != self.active_width(c):
            raise RuntimeError(f"classifier input has {x.shape[-1]} features, expected {self.active_width(c)} at {self.bits} bits")
        chunks = x[..., : n * c].unflatten(-1, (n, c))
        m = self.narrow_of(c)
        if m:  # the narrow chunk, zero-padded to C, is one more chunk of the average
            narrow = F.pad(x[..., n * c :], (0, c - m)).unsqueeze(-2)
            chunks = torch.cat([chunks, narrow], dim=-2)
        out: Tensor = head(chunks.mean(dim=-2))
        return out


class BranchShuffle(Switchable):
    """A residual block with a downsample path; its output channels are shuffled across the active branches."""

    def __init__(self, base_layer: nn.Module, config: MultiQuantConfig) -> None:
        super().__init__(base_layer, config)
        conv2 = base_layer.get_submodule("conv2")
        conv = conv2.base_layer if isinstance(conv2, WrapperModule) else conv2
        assert isinstance(conv, nn.Conv2d)
        self.channels = conv.out_channels

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        out: Tensor = self.base_layer(*args, **kwargs)
        n = len(self.branches)
        if n == 1:
            return out
        full = out[:, : n * self.channels]
        b, c = full.shape[:2]
        shuffled = full.reshape(b, n, c // n, *full.shape[2:]).transpose(1, 2).reshape(full.shape)
        return torch.cat([shuffled, out[:, n * self.channels :]], dim=1)  # the narrow chunk stays in place


class SwitchableBN(Switchable):
    """One BatchNorm per bit-width, each over that bit-width's active channels (``n_k * C``), tiled from the original."""

    def __init__(self, base_layer: nn.BatchNorm2d, config: MultiQuantConfig) -> None:
        super().__init__(base_layer, config)
        c = base_layer.num_features
        self.bns = nn.ModuleList(self._tiled(base_layer, len(self.table[b]), self.narrow_of(c, b)) for b in self.bit_list)
        self.train(base_layer.training)  # new BatchNorms start in the mode of the one they replace

    @staticmethod
    def _tiled(bn: nn.BatchNorm2d, n: int, m: int) -> nn.BatchNorm2d:
        """``n`` copies of ``bn``'s channels, then its first ``m`` (the narrow branch)."""
        out = nn.BatchNorm2d(n * bn.num_features + m, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        out.to(device=bn.weight.device if bn.affine else None)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                src, dst = getattr(bn, name), getattr(out, name)
                if src is not None and dst is not None:
                    dst.copy_(torch.cat([src.detach().repeat(n), src.detach()[:m]]))
            if bn.num_batches_tracked is not None and out.num_batches_tracked is not None:
                out.num_batches_tracked.copy_(bn.num_batches_tracked)
        return out

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.bns[self.bit_list.index(self.bits)](x)
        return out


class MultiBranchConv(Switchable):
    """A body conv widened into ``G`` branches with 2-bit weights and ``k``-bit inputs (see the module docstring).

    ``w_bits`` / ``a_bits`` declare the precision to :func:`slimkit.opcount.count_ops`.
    ``quantize = False`` runs the tiled FP weights and inputs (the converted model then computes
    what the original did, whatever the bit-width).
    """

    act_ready: Tensor

    def __init__(self, base_layer: nn.Conv2d, config: MultiQuantConfig) -> None:
        super().__init__(base_layer, config)
        g = self.groups
        w = base_layer.weight.detach()
        self.branch_weight = nn.Parameter(w.unsqueeze(0).repeat(g, *([1] * w.dim())).clone())
        self.branch_bias = (
            nn.Parameter(base_layer.bias.detach().repeat(g).view(g, -1).clone()) if base_layer.bias is not None else None
        )
        self.weight_bits = config.weight_bits
        sd = w.std() if w.numel() > 1 else w.abs().mean()
        self.w_lower = nn.Parameter((-3 * sd).expand(g).clone().view(g, 1, 1, 1, 1))
        self.w_upper = nn.Parameter((3 * sd).expand(g).clone().view(g, 1, 1, 1, 1))
        nb = len(self.bit_list)
        self.act_lower = nn.Parameter(torch.zeros(nb, g, device=w.device))
        self.act_upper = nn.Parameter(torch.ones(nb, g, device=w.device))
        self.register_buffer("act_ready", torch.zeros(nb, g, dtype=torch.bool, device=w.device))
        self.quantize = True

    @property
    def w_bits(self) -> int:
        return self.weight_bits if self.quantize else 32

    @property
    def a_bits(self) -> int:
        return self.bits if self.quantize else 32

    def extra_repr(self) -> str:
        return f"groups={self.groups}, bits={self.bits}, branches={list(self.branches)}, weight_bits={self.weight_bits}"

    def bound_parameters(self) -> list[nn.Parameter]:
        """The quantizer bounds (MultiQuant trains them with their own Adam, lr 1e-4)."""
        return [self.w_lower, self.w_upper, self.act_lower, self.act_upper]

    @torch.no_grad()
    def _init_act(self, row: int, parts: list[tuple[int, Tensor]]) -> None:
        """Official init of the input bounds of each active ``(branch, input)`` not yet initialised at this bit-width."""
        for branch, x in parts:
            if bool(self.act_ready[row, branch]):
                continue
            v = x.detach().float()
            self.act_upper[row, branch] = 3 * v.std() * _ACT_STD_FACTOR
            self.act_lower[row, branch] = v.min()
            self.act_ready[row, branch] = True

    def quantized_weight(self, idx: Tensor) -> Tensor:
        """The active branches' 2-bit weights in ``{-1, -1/3, 1/3, 1}`` (2 bits), ``[n, C_out, C_in/g, kh, kw]``."""
        w = self.branch_weight[idx]
        if not self.quantize:
            return w
        return interval_quantize(w, self.w_lower[idx], self.w_upper[idx], self.weight_bits, "weight")

    def _quantize_input(self, x: Tensor, branches: list[int]) -> Tensor:
        """``x`` holds one input slice per branch along dim 1 (``[B, len(branches), C, H, W]``)."""
        row = self.bit_list.index(self.bits)
        self._init_act(row, [(b, x[:, j]) for j, b in enumerate(branches)])
        shape = (1, len(branches), *([1] * (x.dim() - 2)))
        lo = self.act_lower[row, branches].view(shape)
        up = self.act_upper[row, branches].view(shape)
        return interval_quantize(x, lo, up, self.bits, "activation")

    def forward(self, x: Tensor) -> Tensor:
        conv = self.base_layer
        assert isinstance(conv, nn.Conv2d)
        if conv.padding_mode != "zeros":
            raise RuntimeError(f"padding_mode={conv.padding_mode!r} is not supported")
        branches, narrow = list(self.branches), self.narrow_branch
        n, cin = len(branches), conv.in_channels
        if x.shape[1] != self.active_width(cin):
            raise RuntimeError(
                f"MultiBranchConv expected {self.active_width(cin)} input channels at {self.bits} bits, got {x.shape[1]}"
            )
        idx = torch.tensor(branches + ([] if narrow is None else [narrow]), device=self.branch_weight.device)
        weights = self.quantized_weight(idx)
        xf = x[:, : n * cin]
        if self.quantize:
            xf = self._quantize_input(xf.unflatten(1, (n, cin)), branches).flatten(1, 2)
        bias = self.branch_bias[idx[:n]].flatten() if self.branch_bias is not None else None
        out = F.conv2d(xf, weights[:n].flatten(0, 1), bias, conv.stride, conv.padding, conv.dilation, n * conv.groups)
        if narrow is None:
            return out
        m_in, m_out = self.narrow_of(cin), self.narrow_of(conv.out_channels)
        xn = x[:, n * cin :]
        if self.quantize:
            xn = self._quantize_input(xn.unsqueeze(1), [narrow]).squeeze(1)
        depthwise = conv.groups > 1  # only depthwise grouped convs take a narrow branch (checked at conversion)
        wn = weights[n, :m_out] if depthwise else weights[n, :m_out, :m_in]
        bn = self.branch_bias[narrow, :m_out] if self.branch_bias is not None else None
        narrow_out = F.conv2d(xn, wn, bn, conv.stride, conv.padding, conv.dilation, m_in if depthwise else 1)
        return torch.cat([out, narrow_out], dim=1)


# --------------------------------------------------------------------------- model-level switches

def _switchables(model: nn.Module) -> Iterator[Switchable]:
    for module in model.modules():
        if isinstance(module, Switchable):
            yield module


def set_bits(model: nn.Module, bits: int) -> nn.Module:
    """Run ``model`` (converted by :func:`multiquant`) at ``bits`` from now on; returns the model."""
    found = list(_switchables(model))
    if not found:
        raise BadInputError("the model has no MultiQuant layers: call arbitrary_quant.multiquant first")
    for module in found:
        module.set_bits(bits)
    return model


def current_bits(model: nn.Module) -> int:
    """The bit-width the converted model runs at."""
    bits = {m.bits for m in _switchables(model)}
    if len(bits) != 1:
        raise BadInputError("the model has no MultiQuant layers" if not bits else f"layers disagree on bits: {bits}")
    return bits.pop()


def set_quantization(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn the fake-quantization of every :class:`MultiBranchConv` on or off (off: the tiled FP network)."""
    for module in model.modules():
        if isinstance(module, MultiBranchConv):
            module.quantize = enabled
    return model


@torch.no_grad()
def init_bounds(model: nn.Module, x: Tensor) -> None:
    """Initialise every input quantizer at every bit-width from one batch, as the official ``init_quant_model``.

    Run it before training (every process on the same batch) so no bound is initialised lazily from
    a process's own first batch; the model's bit-width and train/eval mode are restored.
    """
    was_training, bits = model.training, current_bits(model)
    model.eval()
    try:
        for b in next(iter(_switchables(model))).bit_list:
            set_bits(model, b)
            model(x)
    finally:
        set_bits(model, bits)
        model.train(was_training)


def storage_bits(model: nn.Module) -> dict[str, int]:
    """Bits to store the body: ``G * weight_bits`` per original weight of every :class:`MultiBranchConv`."""
    layers = [m for m in model.modules() if isinstance(m, MultiBranchConv)]
    originals = sum(m.branch_weight[0].numel() for m in layers)  # one branch = the original layer's weights
    stored = sum(m.branch_weight.numel() * m.weight_bits for m in layers)
    return {"original_weights": originals, "stored_bits": stored, "bits_per_weight": stored // max(1, originals)}


# --------------------------------------------------------------------------- conversion


@dataclass
class MultiQuantReport(ReportMixin):
    """What :func:`multiquant` converted."""

    stem: str
    head: str
    convs: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    shuffled: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    groups: int = 4
    bit_list: list[int] = field(default_factory=list)


_NOT_BRANCHABLE = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.BatchNorm1d, nn.Linear, nn.Conv1d, nn.Conv3d)


#: Where known CNN families end their stem: torchvision / timm ResNets, MobileNets, slimkit's SmallResNet.
_STEMS = ("maxpool", "features.0", "stem")


def find_stem(model: nn.Module, name: str | None) -> str:
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules or name == "":
            raise BadInputError(f"stem {name!r} names no module of the model")
        return name
    for candidate in _STEMS:
        if candidate in modules:
            return candidate
    raise BadInputError(
        f"cannot tell where the stem ends (no module named {', '.join(_STEMS)}): pass MultiQuantConfig(stem=...)"
    )


def find_head(model: nn.Module, name: str | None) -> str:
    modules = dict(model.named_modules())
    if name is not None:
        if not isinstance(modules.get(name), nn.Linear):
            raise BadInputError(f"head {name!r} names no nn.Linear of the model")
        return name
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInputError("the model has no nn.Linear classifier: pass MultiQuantConfig(head=...)")
    return linears[-1]


def _inside(name: str, outer: str) -> bool:
    return name == outer or name.startswith(outer + ".")


def body_modules(model: nn.Module, stem: str, head: str) -> list[tuple[str, nn.Module]]:
    """Modules registered after the stem module and before the head (registration order = forward order)."""
    names = [n for n, _ in model.named_modules()]
    start = max(i for i, n in enumerate(names) if _inside(n, stem)) + 1
    stop = names.index(head)
    if start >= stop:
        raise BadInputError(f"no body between the stem {stem!r} and the head {head!r}")
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in names[start:stop] if n]


def _selected(name: str, config: MultiQuantConfig) -> bool:
    if config.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in config.exclude)


def _is_downsample_basic_block(module: nn.Module) -> bool:
    """A two-conv residual block whose shortcut is a projection (``downsample`` or a non-identity ``shortcut``).

    An ``nn.Identity`` or an empty ``nn.Sequential()`` (the CIFAR ResNets' identity shortcut) is no projection.
    """

    def projection(m: object) -> bool:
        return isinstance(m, nn.Module) and not isinstance(m, nn.Identity) and not (
            isinstance(m, nn.Sequential) and len(m) == 0
        )

    return (
        (projection(getattr(module, "downsample", None)) or projection(getattr(module, "shortcut", None)))
        and isinstance(getattr(module, "conv2", None), nn.Conv2d)
        and not hasattr(module, "conv3")
    )


@REGISTRY.register(MultiQuantConfig)
def apply_multiquant(model: nn.Module, config: MultiQuantConfig) -> MultiQuantReport:
    """Convert ``model`` in place (see the module docstring); the handler behind :func:`multiquant`."""
    if wrapped_modules(model, Switchable):
        raise BadInputError("the model is already converted by MultiQuant; call arbitrary_quant.dequantize first")
    stem, head = find_stem(model, config.stem), find_head(model, config.head)
    body = body_modules(model, stem, head)
    report = MultiQuantReport(stem=stem, head=head, groups=config.groups, bit_list=list(config.bit_list))
    bad = [(n, type(m).__name__) for n, m in body if isinstance(m, _NOT_BRANCHABLE)]
    if bad:
        listed = ", ".join(f"{n} ({t})" for n, t in bad[:3])
        raise BadInputError(f"the body between {stem!r} and {head!r} holds layers MultiQuant cannot branch: {listed}")
    convs = [(n, m) for n, m in body if isinstance(m, nn.Conv2d)]
    odd = [b for b in config.bit_list if config.narrow(b) is not None]
    grouped = [n for n, m in convs if m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)]
    if odd and grouped:
        raise BadInputError(
            f"bit-widths {odd} need the narrow extra branch, which takes plain and depthwise convs only; "
            f"grouped: {', '.join(grouped[:3])}"
        )
    for name, _ in convs:
        if not _selected(name, config):
            report.skipped.append((name, "excluded by include/exclude"))
    chosen = [(n, m) for n, m in convs if _selected(n, config)]
    if len(chosen) != len(convs):
        raise BadInputError(
            "every body conv must be branched (the channels of the whole body are widened); "
            f"excluded: {', '.join(n for n, _ in report.skipped)}"
        )
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in body:
        if isinstance(module, nn.Conv2d):
            replacements.append((name, MultiBranchConv(module, config)))
            report.convs.append(name)
        elif isinstance(module, nn.BatchNorm2d):
            replacements.append((name, SwitchableBN(module, config)))
            report.batchnorms.append(name)
    blocks = [(n, m) for n, m in body if config.shuffle and _is_downsample_basic_block(m)]
    # inner modules first, so a block wrapper holds the already-wrapped convs in its base layer
    for name, new in replacements:
        set_module(model, name, new)
    for name, block in blocks:
        set_module(model, name, BranchShuffle(block, config))
        report.shuffled.append(name)
    modules = dict(model.named_modules())
    set_module(model, stem, BranchTile(modules[stem], config))
    set_module(model, head, BranchMerge(modules[head], config))
    return report


def multiquant(model: nn.Module, config: MultiQuantConfig | None = None) -> nn.Module:
    """Turn ``model`` into MultiQuant's multi-branch any-bit network in place and return it.

    Runs at the largest bit-width of ``config.bit_list`` until :func:`set_bits` says otherwise.
    Undo with :func:`arbitrary_quant.dequantize` (the original modules come back untouched).
    """
    apply_multiquant(model, config or MultiQuantConfig())
    return model


def bound_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every quantizer bound of the converted model (for the separate bounds optimizer)."""
    return [p for m in model.modules() if isinstance(m, MultiBranchConv) for p in m.bound_parameters()]
