"""Common base of the N:M wrappers: the original module stays reachable as ``base_layer``.

The base class is :class:`slimkit.wrappers.WrapperModule`. A wrapper owns no copy of the weights: ``wrapper.base_layer.weight`` is the dense latent
weight the optimizer updates, and attributes the wrapper does not define (``weight``,
``in_features``, ``stride``, ...) are read from the base layer, PEFT-style, so model code
that inspects ``self.proj.weight`` keeps working.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nm_sparse.pattern import NMPattern
from nm_sparse.reference import to_gemm_matrix
from slimkit.wrappers import WrapperModule


def module_weight(module: nn.Module) -> Tensor:
    """``module.weight`` typed as a Tensor (Linear/Conv/BatchNorm)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


#: Module types the wrappers accept.
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


class NMLayer(WrapperModule):
    """Base wrapper (:class:`slimkit.wrappers.WrapperModule`): subclasses define :meth:`forward_mask` and :meth:`forward`."""

    method: ClassVar[str] = "base"
    #: SR-STE-style decay ``lambda`` on the pruned weights (0 for methods without one).
    decay: float = 0.0
    #: Where the decay enters: ``True`` inside the backward pass, as the official codes do (right for a plain
    #: fp32 loop); ``False`` when :meth:`add_decay_grad` adds it once per optimizer step instead, which
    #: :class:`nm_sparse.callbacks.NMSparseCallback` arranges: in the backward the term would be neither
    #: loss-scaled (fp16: GradScaler's unscale divides it by the scale) nor averaged over accumulated
    #: micro-batches (it would be added once per micro-batch).
    decay_in_backward: bool = True

    def __init__(self, base_layer: nn.Module, pattern: NMPattern, layout: str = "cin") -> None:
        if not isinstance(base_layer, SUPPORTED_TYPES):
            raise TypeError(f"{type(self).__name__} wraps Linear/Conv1d/Conv2d, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self.n = pattern.n
        self.m = pattern.m
        self.layout = layout

    @property
    def pattern(self) -> NMPattern:
        return NMPattern(self.n, self.m)

    @property
    def dense_weight(self) -> Tensor:
        return module_weight(self.base_layer)

    @property
    def dense_bias(self) -> Tensor | None:
        bias = self.base_layer.bias
        assert bias is None or isinstance(bias, Tensor)
        return bias

    def forward_mask(self) -> Tensor:
        """Boolean mask (weight shape) applied in the forward pass right now."""
        raise NotImplementedError

    @torch.no_grad()
    def effective_weight(self) -> Tensor:
        """The weight the forward pass uses (dense latent weight times mask)."""
        return self.dense_weight * self.forward_mask()

    @torch.no_grad()
    def effective_bias(self) -> Tensor | None:
        bias = self.dense_bias
        return None if bias is None else bias.detach().clone()

    def displaced(self) -> dict[str, nn.Module]:
        """Other modules of the model this wrapper absorbed, by qualified name (SpRe: its BatchNorm).

        :func:`nm_sparse.sparsify` puts ``nn.Identity`` in their place; :func:`nm_sparse.unsparsify`
        puts them back.
        """
        return {}

    @property
    def backward_decay(self) -> float:
        """The decay the backward pass adds (0 while :meth:`add_decay_grad` is in charge)."""
        return self.decay if self.decay_in_backward else 0.0

    @torch.no_grad()
    def add_decay_grad(self) -> None:
        """``grad += decay * (1 - mask) * W`` on the dense weight: once per optimizer step, on unscaled gradients."""
        weight = self.dense_weight
        if self.decay and weight.grad is not None:
            weight.grad.add_((~self.forward_mask()).to(weight.grad.dtype) * weight, alpha=self.decay)

    def on_step(self) -> None:
        """Called once per optimizer step (by the callback); most methods need nothing."""

    def refresh(self) -> None:
        """Recompute cached masks from the current weights without advancing any counter."""

    def to_plain(self) -> nn.Module:
        """A plain copy of the base layer holding the effective (N:M) weight, for deployment."""
        plain = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            module_weight(plain).copy_(self.effective_weight())
            bias = self.effective_bias()
            if bias is not None:
                if isinstance(plain.bias, Tensor):
                    plain.bias.copy_(bias)
                else:
                    plain.bias = nn.Parameter(bias)
        return plain

    def gemm_matrix(self, weight: Tensor) -> Tensor:
        return to_gemm_matrix(weight, self.layout)

    def extra_repr(self) -> str:
        return f"method={self.method}, pattern={self.n}:{self.m}, layout={self.layout}"


def inside_wrapper(model: nn.Module, name: str) -> bool:
    """Whether the module at ``name`` lives inside an N:M wrapper (e.g. a wrapper's ``base_layer``)."""
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), NMLayer) for i in range(1, len(parts)))


def apply_layer(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Run ``layer``'s operation with a substitute weight/bias (padding modes included)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return layer._conv_forward(x, weight, bias)
    raise TypeError(f"unsupported layer type {type(layer).__name__}")


class SRSTEFunction(torch.autograd.Function):
    """``W ⊙ mask`` forward; backward = dense straight-through gradient + ``decay·(1-mask)⊙W``."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, mask: Tensor, decay: float) -> Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, None, None]:
        (grad,) = grads
        weight, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return grad + ctx.decay * (~mask).to(weight.dtype) * weight, None, None


def srste(weight: Tensor, mask: Tensor, decay: float) -> Tensor:
    """Functional SR-STE (see :class:`SRSTEFunction`)."""
    out = SRSTEFunction.apply(weight, mask, decay)
    assert isinstance(out, Tensor)
    return out
