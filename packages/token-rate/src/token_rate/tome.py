"""ToMe (Bolya et al., ICLR 2023) as a baseline inside the same patch.

Per block, after the attention residual: keys averaged over heads are the metric; the non-prefix
tokens are split by alternating position (A = even, B = odd sequence index, as in the official
code where the class token sits in A with a -inf row), each A token finds its most similar B token,
and the r A tokens with the most similar matches are merged into their partners by a size-weighted
average. Prefix tokens (class, distillation, register tokens) are never merged and stay in front;
the output order is ``[prefix, unmerged A (original order), B]``, which for a single class token is
exactly the official order. r is capped at half of the unprotected tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from token_rate.config import ToMeConfig
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.ops import best_match, merge
from token_rate.reference import merge_source, take_rows
from token_rate.registry import REGISTRY

__all__ = ["parse_r", "bipartite_merge", "build_tome"]


def parse_r(depth: int, r: Any) -> list[int]:
    """Per-block merge counts from an int, ``(r, inflection)`` or a list (zero-padded to ``depth``)."""
    if isinstance(r, list):
        r = [int(v) for v in r][:depth]
        return r + [0] * (depth - len(r))
    inflection = 0.0
    if isinstance(r, tuple):
        r, inflection = int(r[0]), float(r[1])
    r = int(r)
    # Linear ramp centred on r: from r*(1 - inflection) at the first block to r*(1 + inflection) at the last.
    first = int(r * (1.0 - inflection))
    last = 2 * r - first
    if depth == 1:
        return [first]
    step = (last - first) / (depth - 1)
    return [int(first + step * i) for i in range(depth)]


def bipartite_merge(x: Tensor, metric: Tensor, r: int, num_prefix: int, size: Tensor | None,
                    source: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Merge ``r`` tokens of ``x`` [B, N, C]; returns ``(x, size, source)`` with N - r tokens."""
    b, n, _ = x.shape
    r = min(r, (n - num_prefix) // 2)
    if r <= 0:
        return x, size, source
    # Strided views (no copies): A starts at the first even index >= prefix, B at the first odd one.
    a_start = num_prefix + (num_prefix % 2)
    b_start = num_prefix + 1 - (num_prefix % 2)
    a_idx = slice(a_start, None, 2)
    b_idx = slice(b_start, None, 2)
    n_a, n_b = len(range(a_start, n, 2)), len(range(b_start, n, 2))
    r = min(r, n_a)
    if r <= 0 or n_b == 0:
        return x, size, source
    node_max, node_idx = best_match(metric[:, a_idx], metric[:, b_idx])
    edge_order = node_max.argsort(dim=-1, descending=True)
    src_rank = edge_order[:, :r]                                  # positions within A merged away
    unm_rank = edge_order[:, r:].sort(dim=-1).values              # kept A tokens, original order
    dst_in_b = node_idx.gather(1, src_rank)
    # Row indices into the full sequence: prefix, then the kept A tokens; the merged-away A tokens.
    keep = a_start + 2 * unm_rank
    if num_prefix > 0:
        keep = torch.cat([torch.arange(num_prefix, device=x.device).expand(b, num_prefix), keep], dim=1)
    gone = a_start + 2 * src_rank

    if size is None:
        size = x.new_ones(b, n, 1)
    new_b, new_sb = merge(x[:, b_idx], size[:, b_idx], take_rows(x, gone), take_rows(size, gone), dst_in_b,
                          "weighted")
    x_out = torch.cat([take_rows(x, keep), new_b], dim=1)
    size_out = torch.cat([take_rows(size, keep), new_sb], dim=1)
    if source is not None:
        new_src_b = merge_source(source[:, b_idx], take_rows(source, gone), dst_in_b)
        source = torch.cat([take_rows(source, keep), new_src_b], dim=1)
    return x_out, size_out, source


@REGISTRY.register(ToMeConfig)
def build_tome(model: nn.Module, cfg: ToMeConfig, info: ModelInfo) -> TokenRateContext:
    """Context for ToMe: ``r`` merges per block (see :func:`parse_r`) by :func:`bipartite_merge`."""
    return TokenRateContext("tome", cfg, info, r=parse_r(info.dims.depth, cfg.r), token_merge=bipartite_merge)
