"""kNN search on cosine similarity: exact small, exact faiss medium, approximate faiss large.

Every backend returns ``(sims [N, k] float32, idx [N, k] int64)`` for the features against
themselves with the self match removed, best first; rows with fewer than ``k`` other nodes are
padded with index ``-1`` and similarity ``-inf``. Features are L2-normalised first, so inner
product is cosine. ``"auto"`` picks ``slimkit.retrieval.cosine_topk`` (exact, chunked, never the
N x N matrix) below ``torch_below`` nodes, faiss ``IndexFlatIP`` (exact) below ``exact_below``
and HNSW or IVF above; the flat and IVF indexes move to the GPU when faiss sees one (HNSW stays on CPU).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from slimkit.errors import BadInputError
from slimkit.retrieval import cosine_topk
from unidg.config import ClusterConfig

__all__ = ["check_features", "knn", "normalize", "resolve_backend"]


def check_features(features: Any, what: str = "features") -> np.ndarray:
    """``[N, D]`` finite float32 features, or a one-line BadInputError."""
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise BadInputError(f"{what} must be a 2-D array [N, D], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise BadInputError(f"{what} must be numeric, got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        raise BadInputError(f"{what} row {int(np.flatnonzero(bad)[0])} is not finite (NaN or inf); "
                            f"{int(bad.sum())} such row(s)")  # fmt: skip
    return arr


def normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12), dtype=np.float32)


def resolve_backend(n: int, config: ClusterConfig) -> str:
    """The backend ``config.backend`` names, with ``"auto"`` resolved by size."""
    if config.backend != "auto":
        return config.backend
    if n < config.torch_below:
        return "torch"
    if n < config.exact_below:
        return "faiss-flat"
    return f"faiss-{config.ann}"


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (or, when absent, e.g. among duplicates, its last column)."""
    n = idx.shape[0]
    own = idx == np.arange(n)[:, None]
    missing = ~own.any(1)
    own[missing, -1] = True
    first = own.argmax(1)
    keep = np.ones_like(own)
    keep[np.arange(n), first] = False
    width = idx.shape[1] - 1
    s, i = sims[keep].reshape(n, width), idx[keep].reshape(n, width)
    if width < k:  # fewer nodes than k + 1
        pad = k - width
        s = np.concatenate([s, np.full((n, pad), -np.inf, np.float32)], 1)
        i = np.concatenate([i, np.full((n, pad), -1, np.int64)], 1)
    return np.ascontiguousarray(s[:, :k], np.float32), np.ascontiguousarray(i[:, :k], np.int64)


def _torch_search(x: np.ndarray, kk: int, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    keys = torch.from_numpy(x)
    sims, idx = [], []
    for start in range(0, x.shape[0], batch):
        s, i = cosine_topk(keys[start : start + batch], keys, kk)
        sims.append(s.numpy())
        idx.append(i.numpy())
    return np.concatenate(sims).astype(np.float32), np.concatenate(idx).astype(np.int64)


def _faiss_index(x: np.ndarray, backend: str, config: ClusterConfig) -> Any:
    import faiss  # optional at import time: only the faiss backends need it

    n, d = x.shape
    index: Any
    if backend == "faiss-flat":
        index = faiss.IndexFlatIP(d)
    elif backend == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(config.ef_search, config.k + 1)
        index.hnsw.efConstruction = 40
    else:  # IVF-flat: nlist = 4 sqrt(N) clamped to [1, min(4096, N)] (k-means needs N >= nlist), trained on a seeded sample
        nlist = int(min(4096, n, max(1, 4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(config.seed)
        sample = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = min(config.nprobe, nlist)
    if backend != "faiss-hnsw" and faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU in CI
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def knn(features: Any, config: ClusterConfig | None = None, *, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(sims, idx)`` of each node's ``config.k`` nearest other nodes by cosine, best first."""
    cfg = config or ClusterConfig()
    x = normalize(check_features(features))
    n = x.shape[0]
    if n == 0:
        raise BadInputError("no features to cluster")
    name = backend or resolve_backend(n, cfg)
    if name not in ("torch", "faiss-flat", "faiss-ivf", "faiss-hnsw"):
        raise BadInputError(f"unknown kNN backend {name!r}")
    kk = min(cfg.k + 1, n)
    if name == "torch":
        sims, idx = _torch_search(x, kk)
    else:
        index = _faiss_index(x, name, cfg)
        sims, idx = index.search(x, kk)
        sims = sims.astype(np.float32)
        idx = idx.astype(np.int64)
        bad = idx < 0
        sims[bad] = -np.inf
    return _drop_self(sims, idx, cfg.k)
