"""Exact cosine top-k over embedding matrices, chunked so memory stays bounded.

Why here: memochat's memo prefilter and unidg's small-scale kNN graph both rank stored
embeddings by cosine similarity to queries. Past a few hundred thousand keys (or many queries)
use faiss (``IndexFlatIP`` on normalised vectors, then IVF / HNSW, sharded across machines when
one is not enough); this exact version is the reference such an index is checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from slimkit.errors import BadInputError

__all__ = ["cosine_topk"]


def cosine_topk(
    queries: Tensor, keys: Tensor, k: int, chunk: int = 4096, normalized: bool = False
) -> tuple[Tensor, Tensor]:
    """``(scores [Q, min(k, N)], indices [Q, min(k, N)])``: each query's most cosine-similar keys, best first.

    ``queries`` is ``[Q, D]`` (or ``[D]`` for one query, which gives ``[min(k, N)]`` results),
    ``keys`` ``[N, D]``. Vectors are L2-normalised here (a zero vector scores 0 against
    everything) unless ``normalized=True`` says the keys already have unit norm (a store that
    keeps normalised embeddings skips an ``N x D`` pass per query). Keys are scored ``chunk`` at a
    time, so at most ``Q x (chunk + k)`` scores are held at once; among equal scores the lower
    key index comes first.
    """
    single = queries.dim() == 1
    q = queries[None] if single else queries
    if q.dim() != 2 or keys.dim() != 2:
        raise BadInputError(f"cosine_topk needs queries [Q, D] and keys [N, D], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if q.shape[1] != keys.shape[1]:
        raise BadInputError(f"queries have dimension {q.shape[1]} but keys have {keys.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadInputError(f"k must be a positive integer, got {k!r}")
    if chunk < 1:
        raise BadInputError(f"chunk must be >= 1, got {chunk}")
    dtype = torch.promote_types(q.dtype, keys.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    qn = F.normalize(q.to(dtype), dim=1)
    kk = min(k, keys.shape[0])
    best_s = qn.new_empty((q.shape[0], 0))
    best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
    for start in range(0, keys.shape[0], chunk):
        block = keys[start : start + chunk].to(device=q.device, dtype=dtype)
        scores = qn @ (block if normalized else F.normalize(block, dim=1)).T
        top_s, top_i = _chunk_top(scores, kk)
        best_s, best_i = _ordered(torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + start], 1), kk)
    if single:
        return best_s[0], best_i[0]
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


def _ordered(scores: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` of the candidates by score, lower index first among equal scores (two stable sorts)."""
    by_index = index.argsort(dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), index.gather(1, order)
