"""Fake-quantized layers shared by the quantization packages: a Conv2d / Linear with LSQ weights and LSQ+ inputs.

Why here: per-bit LSQ is arbitrary-quant's baseline and Q-DETR's quantizer (qdetr); both wrap a
layer the same way, so the wrapper lives once, in slimkit.

:class:`LSQLayer` keeps the original module as ``base_layer`` (untouched, so undo is exact) and
trains its own copies ``latent_weight`` / ``latent_bias``:

- weights: signed ``w_bits`` grid, a learned step per output channel (``per_channel``) or per
  layer, LSQ's gradient scale ``1/sqrt(N_W * Q_P)``; ``weight_init`` ``"lsq"`` (``2 mean|w| /
  sqrt(Q_P)``) or LSQ+'s ``"sigma"``;
- inputs: LSQ+ (unsigned ``a_bits`` grid with a learned offset, so signed inputs fit too), one
  step and offset per tensor or per channel (``act_granularity``, channel = dim 1 for convs, the
  last dim for linears), gradient scale with the paper's ``N_F`` (per sample). The first batch
  picks the init: LSQ's rule for a non-negative input, LSQ+'s min/max otherwise.

``w_bits`` / ``a_bits`` declare the precision to :func:`slimkit.opcount.count_ops`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.errors import BadInputError
from slimkit.quant import LSQQuantizer, QuantSpec
from slimkit.wrappers import WrapperModule

__all__ = ["ACT_GRANULARITIES", "WEIGHT_INITS", "LSQLayer", "own_params", "plain_copy", "run_layer"]

WEIGHT_INITS = ("lsq", "sigma")
ACT_GRANULARITIES = ("tensor", "channel")


def own_params(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Copies of ``layer``'s weight and bias that training changes instead of the original.

    Each copy keeps its original's ``requires_grad``: a frozen layer (a DETR backbone's first
    stages) stays frozen once wrapped.
    """
    w = layer.weight
    if not isinstance(w, Tensor):
        raise BadInputError(f"{type(layer).__name__} has no weight tensor")
    weight = nn.Parameter(w.detach().clone(), requires_grad=bool(w.requires_grad))
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, Tensor):
        return weight, None
    return weight, nn.Parameter(bias.detach().clone(), requires_grad=bool(bias.requires_grad))


def run_layer(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``layer``'s op (conv2d with its geometry, or linear) on other weights."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight, bias)


def plain_copy(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A copy of ``layer`` carrying ``weight`` / ``bias`` (for :meth:`WrapperModule.to_plain`)."""
    plain = copy.deepcopy(layer)
    with torch.no_grad():
        plain.weight.copy_(weight)  # type: ignore[operator]
        if bias is not None:
            plain.bias.copy_(bias)  # type: ignore[operator]
    return plain


class LSQLayer(WrapperModule):
    """A Conv2d / Linear at one bit-width: LSQ weights (signed) and LSQ+ inputs (see the module docstring).

    ``pairs_with_bn = False``: folding a BatchNorm into quantized weights would move them off their grid.
    """

    pairs_with_bn = False
    latent_bias: nn.Parameter | None

    def __init__(
        self,
        base_layer: nn.Conv2d | nn.Linear,
        w_bits: int,
        a_bits: int,
        per_channel: bool = True,
        weight_init: str = "lsq",
        act_granularity: str = "tensor",
    ) -> None:
        if not isinstance(base_layer, (nn.Conv2d, nn.Linear)):
            raise BadInputError(f"LSQLayer wraps nn.Conv2d or nn.Linear, got {type(base_layer).__name__}")
        if isinstance(base_layer, nn.Conv2d) and base_layer.padding_mode != "zeros":
            raise BadInputError(f"padding_mode={base_layer.padding_mode!r} is not supported (only 'zeros')")
        if weight_init not in WEIGHT_INITS:
            raise BadInputError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {weight_init!r}")
        if act_granularity not in ACT_GRANULARITIES:
            raise BadInputError(f"act_granularity must be one of {', '.join(ACT_GRANULARITIES)}, got {act_granularity!r}")
        super().__init__(base_layer)
        self.latent_weight, self.latent_bias = own_params(base_layer)
        self.w_bits = w_bits
        self.a_bits = a_bits
        granularity = "channel" if per_channel else "tensor"
        wspec = QuantSpec(bits=w_bits, signed=True, symmetric=True, granularity=granularity, axis=0)
        self.weight_quant = LSQQuantizer(wspec, tuple(self.latent_weight.shape), init=weight_init)
        if act_granularity == "channel":
            channels = base_layer.in_channels if isinstance(base_layer, nn.Conv2d) else base_layer.in_features
            axis = 1 if isinstance(base_layer, nn.Conv2d) else -1
            aspec = QuantSpec(bits=a_bits, signed=False, symmetric=False, granularity="channel", axis=axis)
            shape = (1, channels, 1, 1) if isinstance(base_layer, nn.Conv2d) else (1, channels)
            self.act_quant = LSQQuantizer(aspec, shape, per_sample=True)
        else:
            aspec = QuantSpec(bits=a_bits, signed=False, symmetric=False)
            self.act_quant = LSQQuantizer(aspec, per_sample=True)  # g = 1 / sqrt(N_F * Q_P), N_F per sample
        self.weight_quant.to(self.latent_weight.device)
        self.act_quant.to(self.latent_weight.device)
        self.weight_quant.init_from(self.latent_weight)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}"

    @torch.no_grad()
    def init_activation(self, x: Tensor) -> None:
        """Init the input step and offset from ``x``: LSQ's rule if ``x >= 0`` everywhere, LSQ+'s min/max else."""
        self.act_quant.init = "lsq" if bool((x >= 0).all()) else "minmax"
        self.act_quant.init_from(x)

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weights the forward uses (``int_weight()`` codes times steps)."""
        out: Tensor = self.weight_quant(self.latent_weight)
        return out

    @torch.no_grad()
    def int_weight(self) -> tuple[Tensor, Tensor]:
        """``(codes, step)``: int8 codes shaped as the weight and the step broadcasting against them
        (``[C_out, 1, ...]`` per channel, ``[]`` per layer); ``codes * step`` is :meth:`quantized_weight`."""
        codes = self.weight_quant.int_repr(self.latent_weight, torch.int8)
        return codes, self.weight_quant.positive_step().detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.act_quant.initialized):
            self.init_activation(x)
        return run_layer(self.base_layer, self.act_quant(x), self.quantized_weight(), self.latent_bias)

    def to_plain(self) -> nn.Module:
        """The original layer type with the fake-quantized weights (the input quantizer is not kept)."""
        return plain_copy(self.base_layer, self.quantized_weight().detach(), self.latent_bias)
