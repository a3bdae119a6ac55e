"""Quantized DETR attention with Q-DETR's distribution alignment (DA).

Q-DETR quantizes the inputs of the attention matmuls: ``A = softmax(Q(q) Q(k)^T / sqrt(d))`` and
``D = Q(A) Q(v)``, at ``attn_bits`` with one learned LSQ step per head (LSQ+ offsets for q, k, v;
the softmax output sits on an unsigned grid). ``D`` (the output projection's input) is the
"co-attended feature" that the distillation matches between student and teacher
(:class:`qdetr.drd.CoAttendedTap` reads it there, in quantized and FP models alike).

DA, the inner level of the paper's bi-level problem: the decoder queries lose entropy when
quantized, and a Gaussian's entropy depends on its variance only, so each query vector is
standardized per head before it is quantized and then given back a learnable scale ``gamma`` and
shift ``beta`` (BN-style, because the batch estimates are biased): ``q* = gamma (q - mu) /
sqrt(var + eps) + beta``. It is part of the forward pass, not a loss.

:class:`QuantAttention` wraps a Hugging Face ``DetrSelfAttention`` or ``DetrCrossAttention``
(v5 names) and reuses its projections (which :mod:`qdetr.quantize` wraps as LSQ layers), so
undoing the wrap gives back the original module untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimkit.quant import LSQQuantizer, QuantSpec
from slimkit.wrappers import WrapperModule

__all__ = ["DistributionAlignment", "QuantAttention", "head_quantizer"]


class DistributionAlignment(nn.Module):
    """Standardize the last dim (one head's features) of each vector, then ``gamma * . + beta``.

    ``unbiased`` picks the variance estimator (the released code uses ``torch.var``'s default,
    unbiased; the paper's entropy argument uses the plain second moment, our default).
    """

    def __init__(self, dim: int, eps: float = 1e-5, unbiased: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.unbiased = unbiased

    def extra_repr(self) -> str:
        return f"dim={self.gamma.numel()}, eps={self.eps}, unbiased={self.unbiased}"

    def forward(self, q: Tensor) -> Tensor:
        mean = q.mean(dim=-1, keepdim=True)
        var = q.var(dim=-1, keepdim=True, unbiased=self.unbiased)
        return (q - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta


def head_quantizer(bits: int, heads: int, offset: bool) -> LSQQuantizer:
    """An LSQ quantizer with one step per head of a ``[B, heads, N, d]`` tensor.

    ``offset=True`` (q, k, v): LSQ+ unsigned grid with a learned offset, min/max init, so signed
    inputs fit. ``offset=False`` (softmax probabilities in ``[0, 1]``): unsigned grid from 0, LSQ init.
    """
    spec = QuantSpec(bits=bits, signed=False, symmetric=not offset, granularity="channel", axis=1)
    return LSQQuantizer(spec, (1, heads, 1, 1), per_sample=True)


class QuantAttention(WrapperModule):
    """A DETR self- or cross-attention with ``attn_bits`` q / k / softmax / v and optional DA on q.

    ``w_bits`` / ``a_bits`` (both ``attn_bits``) declare the attention matmuls' precision to
    :func:`slimkit.opcount.count_ops`.
    """

    def __init__(self, base_layer: nn.Module, attn_bits: int, align: bool, eps: float = 1e-5, unbiased: bool = False) -> None:
        super().__init__(base_layer)
        head_dim = int(base_layer.head_dim)  # type: ignore[arg-type]
        hidden = _in_features(base_layer.get_submodule("o_proj"))
        self.heads = hidden // head_dim
        self.head_dim = head_dim
        self.attn_bits = attn_bits
        self.q_quant = head_quantizer(attn_bits, self.heads, offset=True)
        self.k_quant = head_quantizer(attn_bits, self.heads, offset=True)
        self.v_quant = head_quantizer(attn_bits, self.heads, offset=True)
        self.a_quant = head_quantizer(attn_bits, self.heads, offset=False)
        self.alignment = DistributionAlignment(head_dim, eps, unbiased) if align else None

    @property
    def w_bits(self) -> int:
        return self.attn_bits

    @property
    def a_bits(self) -> int:
        return self.attn_bits

    def extra_repr(self) -> str:
        return f"heads={self.heads}, attn_bits={self.attn_bits}, aligned={self.alignment is not None}"

    def _split(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: Tensor,
        key_value_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_embeddings: Tensor | None = None,
        encoder_position_embeddings: Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        base: Any = self.base_layer
        query_in = hidden_states + position_embeddings if position_embeddings is not None else hidden_states
        if key_value_states is None:  # self-attention: keys share the queries' input, values the plain states
            key_in, value_in = query_in, hidden_states
        else:  # cross-attention: keys get the encoder's positions, values none
            key_in = key_value_states + encoder_position_embeddings if encoder_position_embeddings is not None else key_value_states
            value_in = key_value_states
        q = base.q_proj(query_in).view(*query_in.shape[:-1], -1, self.head_dim)
        if self.alignment is not None:
            q = self.alignment(q)
        q = self.q_quant(q.transpose(1, 2))
        k = self.k_quant(self._split(base.k_proj(key_in)))
        v = self.v_quant(self._split(base.v_proj(value_in)))
        scores = torch.matmul(q, k.transpose(-1, -2)) * base.scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # True = attend (sdpa-style masks)
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:  # additive (eager-style masks)
                scores = scores + attention_mask
        probs = self.a_quant(torch.softmax(scores, dim=-1))
        probs = nn.functional.dropout(probs, p=float(base.attention_dropout), training=self.training)
        co_attended = torch.matmul(probs, v).transpose(1, 2).reshape(*query_in.shape[:-1], -1)
        return base.o_proj(co_attended), probs


def _in_features(layer: nn.Module) -> int:
    """``in_features`` of a Linear, also when it is already wrapped (its ``base_layer``)."""
    inner = getattr(layer, "base_layer", layer)
    if not isinstance(inner, nn.Linear):
        raise TypeError(f"expected an nn.Linear output projection, got {type(inner).__name__}")
    return int(inner.in_features)
