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


def cosine_topk(queries: Tensor, keys: Tensor, k: int, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """``(scores [Q, min(k, N)], indices [Q, min(k, N)])``: each query's most cosine-similar keys, best first.

    ``queries`` is ``[Q, D]`` (or ``[D]`` for one query, which gives ``[min(k, N)]`` results),
    ``keys`` ``[N, D]``. Vectors are L2-normalised here (a zero vector scores 0 against
    everything). Keys are scored ``chunk`` at a time and merged, so at most ``Q x (chunk + k)``
    scores are held at once; among equal scores the lower key index comes first.
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
        block = F.normalize(keys[start : start + chunk].to(device=q.device, dtype=dtype), dim=1)
        scores = torch.cat([best_s, qn @ block.T], dim=1)
        index = torch.arange(start, start + block.shape[0], device=q.device).expand(q.shape[0], -1)
        index = torch.cat([best_i, index], dim=1)
        # Stable order: sort by index first, then a stable sort by score keeps lower indices first among ties.
        by_index = index.argsort(dim=1, stable=True)
        scores, index = scores.gather(1, by_index), index.gather(1, by_index)
        order = scores.argsort(dim=1, descending=True, stable=True)[:, :kk]
        best_s, best_i = scores.gather(1, order), index.gather(1, order)
    if single:
        return best_s[0], best_i[0]
    return best_s, best_i
