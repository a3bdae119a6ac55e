"""Exact cosine top-k over embedding matrices, chunked so memory stays bounded.

Why here: memochat's memo prefilter and unidg's small-scale kNN graph both rank stored
embeddings by cosine similarity to queries. Past a few hundred thousand keys (or many queries)
use faiss (``IndexFlatIP`` on normalised vectors, then IVF / HNSW, sharded across machines when
one is not enough); this exact version is the reference such an index is checked against.
"""

from __future__ import annotations

from torch import Tensor

from slimkit.errors import BadInputError
from slimkit.ops import cosine_topk_dispatch

__all__ = ["cosine_topk"]


def cosine_topk(
    queries: Tensor, keys: Tensor, k: int, chunk: int = 4096, normalized: bool = False
) -> tuple[Tensor, Tensor]:
    """``(scores [Q, min(k, N)], indices [Q, min(k, N)])``: each query's most cosine-similar keys, best first.

    ``queries`` is ``[Q, D]`` (or ``[D]`` for one query, which gives ``[min(k, N)]`` results),
    ``keys`` ``[N, D]``. CUDA tensors run a blockwise Triton kernel (``k <= 128``) that never holds
    the ``Q x N`` scores; elsewhere the chunked PyTorch reference runs. Vectors are L2-normalised here (a zero vector scores 0 against
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
    best_s, best_i = cosine_topk_dispatch(q, keys, k, chunk=chunk, normalized=normalized)
    if single:
        return best_s[0], best_i[0]
    return best_s, best_i

