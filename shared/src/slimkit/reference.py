"""Pure-PyTorch reference implementations of slimkit's kernels (the kernel-file rule, layer 1).

Why a file of its own: the reference is the definition of what a kernel computes. It runs on
every device, under autograd and ``torch.compile``, and the Triton kernels are tested against
it. It imports nothing from slimkit except (at most) :mod:`slimkit.errors`, so every other
layer may import it without creating a cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_topk_reference", "l2_normalize_rows_reference", "ordered_topk"]


def l2_normalize_rows_reference(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along the last dim, accumulated in fp32, returned in ``x.dtype``."""
    x32 = x.float()
    norm = x32.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (x32 / norm).to(x.dtype)


def cosine_topk_reference(
    queries: Tensor, keys: Tensor, k: int, chunk: int = 4096, normalized: bool = False
) -> tuple[Tensor, Tensor]:
    """``(scores [Q, min(k, N)], indices [Q, min(k, N)])`` for ``queries [Q, D]`` against ``keys [N, D]``.

    The definition :func:`slimkit.retrieval.cosine_topk` documents (inputs already checked there):
    cosine on L2-normalised rows (``normalized=True``: the keys already are), best first, lower key
    index first among equal scores; keys scored ``chunk`` at a time so at most ``Q x (chunk + k)``
    scores are held.
    """
    dtype = torch.promote_types(queries.dtype, keys.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    qn = F.normalize(queries.to(dtype), dim=1)
    kk = min(k, keys.shape[0])
    best_s = qn.new_empty((queries.shape[0], 0))
    best_i = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[0], chunk):
        block = keys[start : start + chunk].to(device=queries.device, dtype=dtype)
        scores = qn @ (block if normalized else F.normalize(block, dim=1)).T
        top_s, top_i = _chunk_top(scores, kk)
        best_s, best_i = ordered_topk(torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + start], 1), kk)
    return best_s, best_i


def _chunk_top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of each row of one chunk, ties at the cut resolved toward lower indices.

    ``torch.topk`` is linear time but may keep either of two equal scores at the cut; when a row
    has such a tie (rare with real embeddings) the chunk falls back to a full stable sort.
    """
    n = scores.shape[1]
    if k >= n:
        return scores, torch.arange(n, device=scores.device).expand(scores.shape[0], -1)
    vals, idx = torch.topk(scores, k + 1, dim=1)
    if bool((vals[:, k - 1] == vals[:, k]).any()):
        order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
        return scores.gather(1, order), order
    return vals[:, :k], idx[:, :k]


def ordered_topk(scores: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` candidates of each row by score, lower index first among equal scores (two stable sorts).

    Merges per-chunk (or per-split) candidate lists into one exact result.
    """
    by_index = index.argsort(dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), index.gather(1, order)
