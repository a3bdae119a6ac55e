"""A learned edge classifier: the probability that an edge's two tracks are one identity.

UniDG's abstract promises "a more reliable affinity graph"; its edge scorer is not public. This is
the learn-to-cluster / Ada-NETS idea at its smallest: an MLP over per-edge statistics of the kNN
graph, trained with binary cross-entropy on labelled data (same identity or not), whose output
replaces the cosine as the edge score (``ClusterConfig(edge_score="learned", edge_model=DIR)``).

Every feature comes from the top-k kNN lists, never from the neighbour rule's kept sets, so one
classifier serves every rule: it is trained on all k candidates of each node (the fixed graph),
and a rule's kept edges are a subset selected by features it already sees (the ranks), which
leaves P(same | features) unchanged. The features (:data:`FEATURES`), for an edge i -> j:

- ``cos``: cosine of i and j;
- ``rank_ij`` / ``rank_ji``: j's 0-based rank in i's list and i's in j's, divided by k (1 = absent);
- ``jaccard``: Jaccard of the two lists, each with its node added;
- ``density_i`` / ``density_j``: mean cosine of each node's k candidates (local density);
- ``margin_i`` / ``margin_j``: ``cos`` minus each node's k-th neighbour cosine (how far j stands
  above i's neighbourhood boundary, and i above j's).

Saved with :func:`slimkit.io.save_model` (``model.safetensors`` + ``config.json`` holding the tagged
:class:`EdgeConfig`); :func:`load_edge_model` refuses anything else in one line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, load_into, load_model_files, save_model
from slimkit.paths import check_input_dir
from unidg.config import ClusterConfig
from unidg.knn import check_features, knn, normalize
from unidg.neighbours import NeighbourGraph, select_neighbours

__all__ = [
    "FEATURES", "EdgeClassifier", "EdgeConfig", "edge_auc", "edge_features", "edge_training_set", "fit_edges",
    "list_rank", "load_edge_model", "save_edge_model",
]  # fmt: skip

FEATURES = ("cos", "rank_ij", "rank_ji", "jaccard", "density_i", "density_j", "margin_i", "margin_j")


@dataclass
class EdgeConfig:
    """How the edge classifier is built and trained (stored next to its weights).

    ``k`` is the kNN list length its features assume (use the clustering's ``k``); ``hidden`` the
    width of its two hidden layers; ``epochs`` passes of minibatch Adam (``batch_size``, ``lr``,
    ``weight_decay``) over the training edges, shuffled by ``seed``.
    """

    k: int = 20
    hidden: int = 32
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def __post_init__(self) -> None:
        for name in ("k", "hidden", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadInputError(f"{name} must be an integer >= 1, got {v!r}")
        if not float(self.lr) > 0 or not float(self.weight_decay) >= 0:
            raise BadInputError(f"lr must be > 0 and weight_decay >= 0, got {self.lr!r}, {self.weight_decay!r}")
        if list(self.features) != list(FEATURES):
            raise BadInputError(f"edge features {list(self.features)} are not this release's {list(FEATURES)}")
        self.lr, self.weight_decay = float(self.lr), float(self.weight_decay)


class EdgeClassifier(nn.Module):
    """Standardise the edge features (statistics of the training edges), then MLP -> one logit."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: EdgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or EdgeConfig()
        width = len(FEATURES)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        h = self.config.hidden
        self.mlp = nn.Sequential(nn.Linear(width, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp((feats - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def predict(self, feats: np.ndarray, batch: int = 1 << 16) -> np.ndarray:
        """``P(same identity)`` of each row of ``feats [E, len(FEATURES)]`` (float32)."""
        self.eval()
        out = np.empty(feats.shape[0], np.float32)
        for s in range(0, feats.shape[0], batch):
            out[s : s + batch] = torch.sigmoid(self(torch.from_numpy(feats[s : s + batch]))).numpy()
        return out

    def score(self, graph: NeighbourGraph, sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The learned score of each of ``graph``'s edges, from the kNN lists ``(sims, idx)``."""
        return self.predict(edge_features(graph.src, graph.dst, sims, idx))


def list_rank(idx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """0-based rank of ``b[e]`` in the kNN list of ``a[e]``, or ``k`` when it is not there."""
    n, k = idx.shape
    valid = idx >= 0
    rows = np.repeat(np.arange(n, dtype=np.int64), k)[valid.reshape(-1)]
    keys = rows * n + idx[valid]
    ranks = np.tile(np.arange(k, dtype=np.int64), n)[valid.reshape(-1)]
    order = np.argsort(keys, kind="stable")
    keys, ranks = keys[order], ranks[order]
    query = np.asarray(a, np.int64) * n + np.asarray(b, np.int64)
    out = np.full(query.size, k, np.int64)
    if keys.size:
        pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
        hit = keys[pos] == query
        out[hit] = ranks[pos[hit]]
    return out


def edge_features(src: np.ndarray, dst: np.ndarray, sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``[E, len(FEATURES)]`` float32 features of the edges ``src -> dst`` (see the module docstring)."""
    n, k = idx.shape
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    valid = idx >= 0
    count = np.maximum(valid.sum(1), 1)
    finite = np.where(valid, sims, 0.0)
    density = finite.sum(1) / count
    last = np.where(valid.any(1), sims[np.arange(n), np.maximum(valid.sum(1) - 1, 0)], 0.0)
    rows = np.repeat(np.arange(n), k)[valid.reshape(-1)]
    lists = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, idx[valid])), shape=(n, n))
    lists = (lists + sp.identity(n, dtype=np.float32, format="csr")).tocsr()
    lists.data[:] = 1.0
    inter = np.asarray(lists[src].multiply(lists[dst]).sum(1)).reshape(-1)
    size = np.asarray(lists.sum(1)).reshape(-1)
    jaccard = inter / np.maximum(size[src] + size[dst] - inter, 1)
    x_cos = _edge_cos(sims, idx, src, dst)
    feats = np.stack([
        x_cos, list_rank(idx, src, dst) / k, list_rank(idx, dst, src) / k, jaccard,
        density[src], density[dst], x_cos - last[src], x_cos - last[dst],
    ], 1)  # fmt: skip
    return np.ascontiguousarray(feats, np.float32)


def _edge_cos(sims: np.ndarray, idx: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Each edge's cosine, read from the kNN lists (either direction); edges in neither list
    (reciprocal expansion can add them) get the smaller of the two nodes' k-th cosines."""
    k = idx.shape[1]
    fwd, back = list_rank(idx, src, dst), list_rank(idx, dst, src)
    out = np.empty(src.size, np.float32)
    a = fwd < k
    out[a] = sims[src[a], fwd[a]]
    b = ~a & (back < k)
    out[b] = sims[dst[b], back[b]]
    rest = ~a & ~b
    if rest.any():
        out[rest] = np.minimum(sims[src[rest], -1], sims[dst[rest], -1])
    return out


def edge_training_set(features: Any, labels: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(edge features, same-identity targets)`` of every candidate edge in the top-``k`` kNN graph."""
    x = normalize(check_features(features))
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise BadInputError(f"need one non-negative integer identity per feature row ({x.shape[0]}), got {y.shape}")
    if x.shape[0] < 2:
        return np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.float32)
    sims, idx = knn(x, ClusterConfig(k=k))
    graph = select_neighbours(x, sims, idx, "fixed")
    return edge_features(graph.src, graph.dst, sims, idx), (y[graph.src] == y[graph.dst]).astype(np.float32)


def edge_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the binary ``targets`` (rank statistic, ties averaged); nan if one class."""
    pos = targets > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_edges(groups: Sequence[tuple[Any, Any]], config: EdgeConfig | None = None) -> tuple[EdgeClassifier, dict[str, Any]]:
    """Train a classifier on labelled ``(features [N, D], identities [N])`` groups (e.g. one per
    modality per video; kNN graphs never cross groups). Returns it and its training statistics."""
    cfg = config or EdgeConfig()
    t0 = time.perf_counter()
    parts = [edge_training_set(f, y, cfg.k) for f, y in groups]
    feats = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, len(FEATURES)), np.float32)
    target = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    if target.size == 0 or target.min() == target.max():
        raise BadInputError(f"the edge classifier needs both same- and different-identity edges; got {target.size} edges "
                            f"with {int(target.sum())} same-identity")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = EdgeClassifier(cfg)
        x, y = torch.from_numpy(feats), torch.from_numpy(target)
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0).clamp_min(1e-6))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        for _ in range(cfg.epochs):
            for batch in torch.randperm(x.shape[0], generator=gen).split(cfg.batch_size):
                loss = F.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    prob = model.predict(feats)
    eps = 1e-7
    bce = float(-np.mean(target * np.log(prob + eps) + (1 - target) * np.log(1 - prob + eps)))
    stats = {"edges": int(target.size), "same_identity_share": float(target.mean()), "train_bce": bce,
             "train_auc": edge_auc(prob, target), "cosine_auc": edge_auc(feats[:, 0], target),
             "groups": len(parts), "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    return model, stats


def save_edge_model(directory: str | Path, model: EdgeClassifier, extra: dict[str, Any] | None = None) -> Path:
    """``model.safetensors`` + ``config.json`` (the tagged :class:`EdgeConfig` and ``extra``) via slimkit.io."""
    return save_model(directory, model, model.config, {"kind": "unidg-edge-classifier", **(extra or {})})


def load_edge_model(directory: str | Path) -> EdgeClassifier:
    """The classifier :func:`save_edge_model` wrote; a missing or malformed folder is one BadInputError line."""
    root = check_input_dir(directory, "edge classifier folder")
    if not (root / "model.safetensors").is_file() or not (root / "config.json").is_file():
        raise BadInputError(f"{root} is not an edge classifier folder (needs model.safetensors and config.json)")
    state, meta = load_model_files(root)
    cfg = meta.get("config")
    if meta.get("kind") != "unidg-edge-classifier" or not isinstance(cfg, dict) or cfg.get("_type") != "EdgeConfig":
        raise BadInputError(f"{root} is not an edge classifier written by 'unidg train-edges' (no EdgeConfig)")
    try:
        model = EdgeClassifier(config_from_dict(EdgeConfig, cfg))
    except BadInputError as exc:
        raise BadInputError(f"{root}/config.json: {exc}") from None
    try:
        load_into(model, state)
    except BadInputError as exc:
        raise BadInputError(f"{root}/model.safetensors: {exc}") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        raise BadInputError(f"{root}/model.safetensors holds non-finite weights")
    model.eval()
    return model
