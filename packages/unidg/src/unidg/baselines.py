"""Baselines under the same call: ``run_method(name, features, ...) -> labels``.

- ``"unidg"``: :func:`unidg.graph.cluster` (dynamic graph);
- ``"kmeans"``: scikit-learn k-means on unit features (needs the cluster count);
- ``"finch"``: FINCH (Sarfraz et al., CVPR 2019) written here from the paper: link each node to
  its first neighbour, take components, replace clusters by their means and repeat; with a
  requested count the first partition holding at least that many clusters is merged pairwise
  (closest means first) down to it; without one, the coarsest partition with more than one cluster;
- ``"knn-threshold"``: fixed-k kNN, edges with cosine >= threshold, connected components;
- ``"infomap"``: map-equation communities (two-level Infomap) on the thresholded kNN graph; needs the
  optional ``infomap`` package.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import BadInputError
from unidg.config import ClusterConfig
from unidg.graph import cluster, cluster_means, relabel, union_find
from unidg.knn import check_features, knn, normalize

__all__ = ["METHODS", "finch", "finch_partitions", "infomap", "kmeans", "knn_threshold", "run_method"]

METHODS = ("unidg", "kmeans", "finch", "infomap", "knn-threshold")


def kmeans(features: Any, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means on L2-normalised features (``n_init=4``, seeded)."""
    from sklearn.cluster import KMeans

    x = normalize(check_features(features))
    if not 1 <= n_clusters <= x.shape[0]:
        raise BadInputError(f"k-means needs 1 <= clusters <= {x.shape[0]} items, got {n_clusters}")
    return relabel(KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(x))


def _first_neighbour_partition(x: np.ndarray, config: ClusterConfig) -> np.ndarray:
    n = x.shape[0]
    if n == 1:
        return np.zeros(1, np.int64)
    cfg = ClusterConfig(**{**config.__dict__, "k": 1})
    _, idx = knn(x, cfg)
    return union_find(n, np.arange(n), idx[:, 0])


def finch_partitions(features: Any, config: ClusterConfig | None = None) -> list[np.ndarray]:
    """FINCH's hierarchy: item labels of every partition, finest first, until one cluster or no change."""
    cfg = config or ClusterConfig()
    x = normalize(check_features(features))
    parts: list[np.ndarray] = []
    current = np.arange(x.shape[0])
    points = x
    while True:
        step = _first_neighbour_partition(points, cfg)
        if parts and int(step.max()) + 1 == points.shape[0]:
            break
        current = step[current]
        parts.append(current.copy())
        if int(current.max()) == 0:
            break
        points = cluster_means(x, current)
    return parts


def _merge_to(x: np.ndarray, labels: np.ndarray, target: int) -> np.ndarray:
    """Merge the two clusters with the most similar means, one pair at a time, down to ``target``."""
    labels = labels.copy()
    while int(labels.max()) + 1 > target:
        means = cluster_means(x, labels)
        sim = means @ means.T
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
        lo, hi = min(a, b), max(a, b)
        labels[labels == hi] = lo
        labels = relabel(labels)
    return labels


def finch(features: Any, n_clusters: int | None = None, config: ClusterConfig | None = None) -> np.ndarray:
    """FINCH labels: with ``n_clusters`` the refined partition of exactly that many clusters (the first
    partition holding at least that many, merged down); without it the last partition with more
    than one cluster (or the only one)."""
    if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1):
        raise BadInputError(f"FINCH needs a cluster count >= 1, got {n_clusters!r}")
    x = normalize(check_features(features))
    parts = finch_partitions(x, config)
    if n_clusters is None:
        multi = [p for p in parts if int(p.max()) > 0]
        return relabel(multi[-1] if multi else parts[-1])
    counts = [int(p.max()) + 1 for p in parts]
    fits = [p for p, c in zip(parts, counts, strict=True) if c >= n_clusters]
    if not fits:
        raise BadInputError(f"FINCH's finest partition has {counts[0]} clusters; cannot give {n_clusters}")
    return _merge_to(x, fits[-1], n_clusters)


def knn_threshold(features: Any, config: ClusterConfig | None = None) -> np.ndarray:
    """Fixed-k kNN graph, edges with cosine >= ``config.threshold``, connected components (one level:
    ``config.levels`` is ignored, the baseline never clusters cluster means)."""
    cfg = config or ClusterConfig()
    fixed = ClusterConfig(**{**cfg.__dict__, "neighbours": "fixed", "edge_score": "cosine", "decode": "threshold",
                             "levels": 1})  # fmt: skip
    return cluster(features, fixed).labels


def infomap(features: Any, config: ClusterConfig | None = None) -> np.ndarray:
    """Two-level Infomap (map equation, undirected) on the fixed-k kNN graph, edges of cosine >=
    ``config.threshold`` weighted by their cosine: the community-detection baseline (FaceMap's decoder).

    ``infomap`` is an optional dependency (``pip install 'unidg[infomap]'``), imported here at the
    point of use; seeded by ``config.seed``, so the labels are deterministic.
    """
    try:
        import infomap as infomap_lib
    except ImportError as exc:
        raise BadInputError("--method infomap needs the infomap package (pip install 'unidg[infomap]')") from exc
    cfg = config or ClusterConfig()
    x = normalize(check_features(features))
    n = x.shape[0]
    if n == 0:
        raise BadInputError("no features to cluster")
    sims, idx = knn(x, cfg)
    im = infomap_lib.Infomap("--two-level --silent", seed=cfg.seed + 1)
    im.add_nodes(range(n))
    rows, cols = np.nonzero((idx >= 0) & (sims >= cfg.threshold))
    im.add_links(zip(rows.tolist(), idx[rows, cols].tolist(), sims[rows, cols].astype(float).tolist(), strict=True))
    im.run()
    # The modules are read back from Infomap's own .clu file, not through its Python result objects:
    # those iterate SWIG vectors, and with faiss (another SWIG module) loaded in the same process
    # that iteration can resolve to faiss's iterator class and crash the interpreter.
    with tempfile.TemporaryDirectory() as tmp:
        clu = Path(tmp) / "modules.clu"
        im.write_clu(str(clu))
        rows_text = [line.split() for line in clu.read_text().splitlines() if line.strip() and not line.startswith("#")]
    labels = np.full(n, -1, np.int64)
    for node, module, *_ in rows_text:
        labels[int(node)] = int(module)
    lone = labels < 0  # a node Infomap did not report is its own cluster
    labels[lone] = labels.max(initial=-1) + 1 + np.arange(int(lone.sum()))
    return relabel(labels)


def run_method(
    method: str, features: Any, config: ClusterConfig | None = None, n_clusters: int | None = None
) -> np.ndarray:
    """Labels of ``features`` by one of :data:`METHODS`."""
    cfg = config or ClusterConfig()
    if method == "unidg":
        return cluster(features, cfg).labels
    if method == "kmeans":
        if n_clusters is None:
            raise BadInputError("--method kmeans needs the number of clusters (--clusters)")
        return kmeans(features, n_clusters, seed=cfg.seed)
    if method == "finch":
        return finch(features, n_clusters, cfg)
    if method == "knn-threshold":
        return knn_threshold(features, cfg)
    if method == "infomap":
        return infomap(features, cfg)
    raise BadInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
