"""Dynamic graph clustering: kNN -> dynamic neighbour sets -> edge scores -> clusters.

:func:`cluster` is the ``unidg`` method end to end; :func:`union_find` and :func:`density_peaks`
are the two decoders, reusable on any edge list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from slimkit.errors import BadInputError
from slimkit.report import ReportMixin
from unidg.config import ClusterConfig
from unidg.edges import EdgeClassifier, load_edge_model
from unidg.knn import check_features, knn, normalize, resolve_backend
from unidg.neighbours import NeighbourGraph, select_neighbours

__all__ = [
    "ClusterResult", "cluster", "cluster_means", "density_peaks", "edge_scores", "relabel", "resolve_edge_model", "union_find",
]  # fmt: skip


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..C-1 in order of first appearance (deterministic output)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def cluster_means(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-norm mean feature of each cluster (a sparse one-hot product: no Python loop, no ``np.add.at``)."""
    c = int(labels.max()) + 1
    onehot = sp.csr_matrix((np.ones(labels.size, np.float32), (labels, np.arange(labels.size))), shape=(c, labels.size))
    return normalize(np.asarray(onehot @ x, dtype=np.float32))


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the undirected edges ``a[i] - b[i]`` by vectorised union-find.

    Each round hooks every edge's larger root onto its smaller one (min-label hooking), then
    compresses paths by pointer jumping until each node points at its root; it stops when no edge
    joins two roots. Returns component labels 0..C-1 by first appearance.
    """
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        cross = ra != rb
        if not cross.any():
            break
        lo, hi = np.minimum(ra[cross], rb[cross]), np.maximum(ra[cross], rb[cross])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every node points at a root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        a, b = a[cross], b[cross]
    return relabel(parent)


def edge_scores(graph: NeighbourGraph, config: ClusterConfig, knn_lists: tuple[np.ndarray, np.ndarray] | None = None,
                edge_model: EdgeClassifier | None = None) -> np.ndarray:  # fmt: skip
    """Each kept edge's score: its cosine, the Jaccard / cosine blend of the neighbour sets, or the
    learned P(same identity) (needs the kNN lists the graph came from and the classifier)."""
    if config.edge_score == "cosine":
        return graph.sims
    if config.edge_score == "learned":
        if knn_lists is None or edge_model is None:
            raise BadInputError("edge_score='learned' needs the kNN lists and an edge classifier")
        return edge_model.score(graph, *knn_lists)
    sets = graph.adjacency(include_self=True)
    inter = np.asarray(sets[graph.src].multiply(sets[graph.dst]).sum(1)).reshape(-1)
    size = np.asarray(sets.sum(1)).reshape(-1)
    union = size[graph.src] + size[graph.dst] - inter
    jac = inter / np.maximum(union, 1)
    return ((1 - config.lam) * jac + config.lam * graph.sims).astype(np.float32)


def density_peaks(n: int, src: np.ndarray, dst: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """Each node links to its best-scoring neighbour that is denser (score >= threshold); trees are clusters.

    Density is the sum of a node's kept edge scores divided by its best possible degree (the
    largest out-degree), so nodes with many reliable neighbours are peaks; ties go to the lower index.
    """
    deg_max = max(1, int(np.bincount(src, minlength=n).max(initial=0)))
    density = np.bincount(src, weights=np.maximum(score, 0), minlength=n) / deg_max
    rank = np.lexsort((-np.arange(n), density))  # ascending density, lower index counts as denser
    order = np.empty(n, np.int64)
    order[rank] = np.arange(n)
    ok = (order[dst] > order[src]) & (score >= threshold)
    s, d, w = src[ok], dst[ok], score[ok]
    if s.size == 0:
        return np.arange(n, dtype=np.int64)
    best = np.lexsort((-w, s))  # by source, best score first
    s, d = s[best], d[best]
    first = np.ones(s.size, bool)
    first[1:] = s[1:] != s[:-1]
    return union_find(n, s[first], d[first])


@dataclass
class ClusterResult(ReportMixin):
    """Labels plus what the graph looked like (degree histogram) and where the time went."""

    labels: np.ndarray
    clusters: int
    backend: str
    edges_kept: int
    edges_linked: int
    degree_histogram: dict[int, int]
    mean_degree: float
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The result without the per-node labels."""
        d = self.to_dict()
        d.pop("labels")
        return d


def resolve_edge_model(config: ClusterConfig, edge_model: EdgeClassifier | None = None) -> EdgeClassifier | None:
    """The classifier a learned-edge config uses: ``edge_model`` if given, else loaded from ``config.edge_model``."""
    if config.edge_score != "learned":
        return None
    if edge_model is not None:
        return edge_model
    if not config.edge_model:
        raise BadInputError("edge_score='learned' needs an edge classifier folder (edge_model / --edge-model)")
    return load_edge_model(config.edge_model)


def cluster(features: Any, config: ClusterConfig | None = None, knn_lists: tuple[np.ndarray, np.ndarray] | None = None,
            edge_model: EdgeClassifier | None = None) -> ClusterResult:  # fmt: skip
    """Cluster ``features [N, D]`` with dynamic graph clustering; ``knn_lists`` reuses a search;
    ``edge_model`` is an in-memory classifier for ``edge_score="learned"`` (else ``config.edge_model`` is loaded)."""
    cfg = config or ClusterConfig()
    model = resolve_edge_model(cfg, edge_model)
    if model is not None and model.config.k != cfg.k:
        raise BadInputError(f"the edge classifier was trained on k={model.config.k} kNN lists; cluster with k={model.config.k}")
    x = normalize(check_features(features))
    n = x.shape[0]
    if n == 0:
        raise BadInputError("no features to cluster")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if knn_lists is None:
        sims, idx = knn(x, cfg)
    else:
        sims, idx = knn_lists
        if idx.shape[0] != n:
            raise BadInputError(f"kNN lists cover {idx.shape[0]} nodes, features {n}")
        sims, idx = sims[:, : cfg.k], idx[:, : cfg.k]
    times["knn"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = select_neighbours(x, sims, idx, cfg.neighbours, cfg.slack, cfg.expand_overlap, cfg.cycle)
    times["neighbours"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = edge_scores(graph, cfg, (sims, idx), model)
    if cfg.decode == "threshold":
        keep = score >= cfg.threshold
        labels = union_find(n, graph.src[keep], graph.dst[keep])
        linked = int(keep.sum())
    else:
        labels = density_peaks(n, graph.src, graph.dst, score, cfg.threshold)
        linked = n - int(labels.max()) - 1
    times["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(cfg.levels - 1):  # cluster the clusters: their means are less noisy than the items
        c = int(labels.max()) + 1
        if c < 2:
            break
        means = cluster_means(x, labels)
        level_cfg = replace(cfg, k=min(cfg.k, c - 1), backend="faiss-flat" if c < cfg.exact_below else f"faiss-{cfg.ann}")
        m_sims, m_idx = knn(means, level_cfg)
        g = select_neighbours(means, m_sims, m_idx, cfg.neighbours, cfg.slack, cfg.expand_overlap, cfg.cycle)
        m_score = edge_scores(g, replace(level_cfg, edge_score="cosine") if cfg.edge_score == "learned" else level_cfg)
        if cfg.decode == "threshold":
            keep = m_score >= cfg.level_threshold
            merged = union_find(c, g.src[keep], g.dst[keep])
        else:
            merged = density_peaks(c, g.src, g.dst, m_score, cfg.level_threshold)
        if int(merged.max()) + 1 == c:
            break
        labels = relabel(merged[labels])
    times["levels"] = time.perf_counter() - t0
    degrees = graph.degrees()
    return ClusterResult(
        labels=labels, clusters=int(labels.max()) + 1, backend=resolve_backend(n, cfg) if knn_lists is None else "given",
        edges_kept=int(graph.src.size), edges_linked=linked, degree_histogram=graph.degree_histogram(),
        mean_degree=float(degrees.mean()), seconds=times,
    )  # fmt: skip


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """scipy's connected components (the independent check of :func:`union_find`)."""
    a = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    return relabel(sp.csgraph.connected_components(a, directed=False)[1])
