"""Analytic MAC counts for token-compressed ViTs (the DiffRate/DeiT convention: "GFLOPs" = GMACs).

Per block, with width C and N tokens entering the block:

* attention: ``4 N C^2 + 2 N^2 C`` (qkv + output projection, then QK^T and AV) on the incoming N;
* MLP: ``2 r N' C^2`` (``8 N' C^2`` for mlp ratio r = 4) on the N' tokens left after compression.

Patch embedding (``N0 C in_chans p^2``, with N0 the token count *including* prefix tokens, as the
official code computes it) and the classifier head (``C classes``) are added once. Norms,
softmax, activations and the sort/gather/scatter work are not counted. With the published 2.9
schedule, DeiT-S comes out at 2.905 GMACs, the number in the DiffRate README.

:func:`differentiable_gmacs` is the same formula on tensors, with the official straight-through
``min`` so that the search loss ``(GMACs - target)^2`` sends gradient to every block's prune and
merge kept counts. The model-level entry points (:func:`token_rate.model_flops.gmacs` for a model, a published name or
a config, and :func:`token_rate.model_flops.counted_gmacs`, the ``torch.utils.flop_counter``
cross-check) sit above the patch in :mod:`token_rate.model_flops`; this module holds only formulas
and imports nothing from token_rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimkit.errors import BadInputError
from slimkit.report import ReportMixin

__all__ = [
    "ViTDims",
    "attention_macs",
    "mlp_macs",
    "analytic_macs",
    "differentiable_gmacs",
    "ste_min",
    "tome_token_counts",
]


@dataclass(frozen=True)
class ViTDims(ReportMixin):
    """The few numbers the analytic count needs (``to_dict`` / ``to_json`` from :class:`slimkit.report.ReportMixin`)."""

    depth: int
    embed_dim: int
    num_tokens: int
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    num_prefix_tokens: int = 1


def attention_macs(n: Any, c: int) -> Any:
    """qkv (3NC^2) + proj (NC^2) + QK^T (N^2 C) + AV (N^2 C)."""
    return 4 * n * c * c + 2 * n * n * c


def mlp_macs(n: Any, c: int, mlp_ratio: float = 4.0) -> Any:
    """fc1 + fc2: ``2 * ratio * N * C^2``."""
    return 2 * mlp_ratio * n * c * c


def _stem_head_macs(d: ViTDims) -> float:
    return d.num_tokens * d.embed_dim * d.in_chans * d.patch_size**2 + d.embed_dim * d.num_classes


def analytic_macs(dims: ViTDims, counts: Sequence[int] | None = None) -> float:
    """Total MACs given the tokens *leaving* each block (``None``: nothing compressed)."""
    if counts is None:
        counts = [dims.num_tokens] * dims.depth
    if len(counts) != dims.depth:
        raise BadInputError(f"{len(counts)} per-block counts for a model with {dims.depth} blocks")
    total = float(_stem_head_macs(dims))
    n_in = dims.num_tokens
    for n_out in counts:
        n_out = min(int(n_out), n_in)
        total += attention_macs(n_in, dims.embed_dim) + mlp_macs(n_out, dims.embed_dim, dims.mlp_ratio)
        n_in = n_out
    return total


class _SteMin(torch.autograd.Function):
    """Forward ``min(current, prune, merge)``; backward feeds both kept counts, never ``current``."""

    @staticmethod
    def forward(ctx: Any, current: Tensor, prune: Tensor, merge: Tensor) -> Tensor:  # type: ignore[override]
        return torch.minimum(torch.minimum(current, prune), merge)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor]:  # type: ignore[override]
        return None, grad, grad


def ste_min(current: Tensor, prune: Tensor, merge: Tensor) -> Tensor:
    return _SteMin.apply(current, prune, merge)  # type: ignore[no-any-return]


def differentiable_gmacs(dims: ViTDims, prune_kept: Sequence[Tensor], merge_kept: Sequence[Tensor]) -> Tensor:
    """GMACs as a differentiable function of the per-block kept counts (search loss).

    A block's counts get gradient from its own MLP term and from the next block's attention term.
    """
    if len(prune_kept) != dims.depth or len(merge_kept) != dims.depth:
        raise BadInputError(f"need {dims.depth} prune and merge counts, got {len(prune_kept)}/{len(merge_kept)}")
    ref = prune_kept[0]
    n_in: Tensor = torch.tensor(float(dims.num_tokens), device=ref.device)
    total = torch.tensor(float(_stem_head_macs(dims)), device=ref.device)
    c = dims.embed_dim
    for p, m in zip(prune_kept, merge_kept):
        total = total + attention_macs(n_in, c)
        n_out = ste_min(n_in.detach(), p.float(), m.float())
        total = total + mlp_macs(n_out, c, dims.mlp_ratio)
        n_in = n_out
    return total / 1e9


def tome_token_counts(dims: ViTDims, r: Sequence[int]) -> list[int]:
    """Tokens leaving each block under ToMe: ``r`` merges, capped at half the unprotected tokens."""
    out, n = [], dims.num_tokens
    for rl in r:
        n = n - min(int(rl), (n - dims.num_prefix_tokens) // 2)
        out.append(n)
    return out
