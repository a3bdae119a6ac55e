"""Union-find, the decoders, the whole graph clustering and the baselines on separable data."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.baselines import finch, finch_partitions, kmeans, knn_threshold, run_method
from unidg.baselines import infomap as infomap_baseline
from unidg.config import ClusterConfig
from unidg.graph import cluster, components, density_peaks, relabel, union_find
from unidg.knn import knn
from unidg.metrics import score
from unidg.synth import embedding_clusters


def test_union_find_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for n, e in ((1, 0), (50, 10), (200, 150), (300, 600)):
        a, b = rng.integers(0, n, e), rng.integers(0, n, e)
        assert np.array_equal(union_find(n, a, b), components(n, a, b))


def test_relabel_first_appearance() -> None:
    assert relabel(np.array([7, 3, 7, 9, 3])).tolist() == [0, 1, 0, 2, 1]


def test_density_peaks_forest() -> None:
    # a path 0-1-2 with scores; 3 isolated: one tree for the path, 3 alone
    src, dst = np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1])
    score_ = np.array([0.9, 0.9, 0.8, 0.8], np.float32)
    labels = density_peaks(4, src, dst, score_, 0.5)
    assert labels.tolist() == [0, 0, 0, 1]
    assert density_peaks(4, src, dst, score_, 0.95).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("rule", ["fixed", "mutual", "rank-growth", "reciprocal"])
@pytest.mark.parametrize("decode", ["threshold", "peaks"])
def test_cluster_separable(blobs: tuple[np.ndarray, np.ndarray], rule: str, decode: str) -> None:
    x, y = blobs
    res = cluster(x, ClusterConfig(k=10, neighbours=rule, decode=decode, threshold=0.5, levels=3))
    s = score(y, res.labels)
    assert s.bcubed_f > 0.9, (rule, decode, s)
    assert res.clusters == int(res.labels.max()) + 1 and sum(res.degree_histogram.values()) == 600


def test_levels_only_merge(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    one = cluster(x, ClusterConfig(k=5, neighbours="rank-growth", levels=1)).labels
    three = cluster(x, ClusterConfig(k=5, neighbours="rank-growth", levels=3)).labels
    assert int(three.max()) <= int(one.max())
    for c in np.unique(one):  # every level-1 cluster lies inside one final cluster
        assert len(np.unique(three[one == c])) == 1


def test_baselines(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    assert score(y, finch(x, 12)).bcubed_f > 0.95
    parts = finch_partitions(x)
    counts = [int(p.max()) + 1 for p in parts]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 1
    assert score(y, kmeans(x, 12)).nmi > 0.9
    assert score(y, knn_threshold(x, ClusterConfig(k=10, threshold=0.6))).bcubed_f > 0.95
    with pytest.raises(BadInputError, match="cannot give"):
        finch(x, 10_000)
    with pytest.raises(BadInputError, match="--clusters"):
        run_method("kmeans", x)
    with pytest.raises(BadInputError, match="unknown method"):
        run_method("dbscan", x)


def test_infomap_recovers_separated_blobs(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs  # 12 tight clusters: Infomap on the thresholded kNN graph finds exactly them
    labels = infomap_baseline(x, ClusterConfig(k=10, threshold=0.5))
    s = score(y, labels)
    assert (s.pairwise_f, s.bcubed_f, s.clusters) == (1.0, 1.0, 12)
    assert np.array_equal(labels, run_method("infomap", x, ClusterConfig(k=10, threshold=0.5)))  # seeded
    lone = infomap_baseline(x, ClusterConfig(k=10, threshold=0.9999))  # no edge survives: all singletons
    assert int(lone.max()) + 1 == 600


def test_infomap_missing_package_is_one_line(blobs: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "infomap", None)  # what an environment without the package sees
    with pytest.raises(BadInputError, match=r"pip install 'unidg\[infomap\]'"):
        infomap_baseline(blobs[0])


def test_knn_threshold_is_one_level_of_components() -> None:
    # overlapping clusters: the mean-level rounds of ``levels`` would merge many of these components
    x, _ = embedding_clusters(300, 6, dim=16, sigma=1.0, seed=0)
    cfg = ClusterConfig(k=5, threshold=0.8, levels=3)
    sims, idx = knn(x, cfg)
    keep = (idx >= 0) & (sims >= cfg.threshold)
    rows = np.broadcast_to(np.arange(300)[:, None], idx.shape)
    expected = components(300, rows[keep], idx[keep])
    assert np.array_equal(knn_threshold(x, cfg), expected)
    assert int(expected.max()) + 1 > int(cluster(x, replace(cfg, neighbours="fixed", decode="threshold")).labels.max()) + 1


def test_finch_refuses_a_count_below_one(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    for bad in (0, -3):  # 0 used to loop forever merging the last cluster with itself
        with pytest.raises(BadInputError, match="cluster count >= 1"):
            finch(blobs[0], bad)
    assert int(finch(blobs[0], 1).max()) == 0 and int(finch(blobs[0], np.int64(12)).max()) == 11
