"""kNN backends agree with the exact search; the neighbour rules keep what their definitions say."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.config import ClusterConfig
from unidg.knn import knn, normalize
from unidg.neighbours import back_ranks, select_neighbours


def test_exact_backends_agree_and_drop_self(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    cfg = ClusterConfig(k=8)
    s_t, i_t = knn(x, cfg, backend="torch")
    s_f, i_f = knn(x, cfg, backend="faiss-flat")
    assert i_t.shape == (600, 8) and (i_t == i_f).mean() > 0.99
    assert not (i_t == np.arange(600)[:, None]).any()
    assert np.allclose(s_t, s_f, atol=1e-5)
    assert (np.diff(s_t, axis=1) <= 1e-6).all()  # best first
    brute = normalize(x) @ normalize(x).T
    np.fill_diagonal(brute, -np.inf)
    assert np.allclose(np.sort(brute, 1)[:, ::-1][:, :8], s_t, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivf"])
def test_approximate_backends_recall(blobs: tuple[np.ndarray, np.ndarray], backend: str) -> None:
    x, _ = blobs
    cfg = ClusterConfig(k=10, nprobe=8)
    _, exact = knn(x, cfg, backend="torch")
    _, approx = knn(x, cfg, backend=backend)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9


def test_padding_when_fewer_nodes_than_k() -> None:
    s, i = knn(np.eye(3, 4, dtype=np.float32), ClusterConfig(k=5))
    assert i.shape == (3, 5) and (i[:, 2:] == -1).all() and np.isneginf(s[:, 2:]).all()


def test_non_finite_features_are_refused() -> None:
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(BadInputError, match="row 2 is not finite"):
        knn(x)


def test_back_ranks_brute_force() -> None:
    rng = np.random.default_rng(0)
    idx = np.stack([rng.permutation([j for j in range(12) if j != i])[:5] for i in range(12)])
    back = back_ranks(idx)
    for i in range(12):
        for r in range(5):
            row = list(idx[idx[i, r]])
            assert back[i, r] == (row.index(i) if i in row else 5)


def test_rules(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    x = normalize(x)
    sims, idx = knn(x, ClusterConfig(k=10))
    fixed = select_neighbours(x, sims, idx, "fixed")
    mutual = select_neighbours(x, sims, idx, "mutual")
    growth = select_neighbours(x, sims, idx, "rank-growth", slack=0)
    recip = select_neighbours(x, sims, idx, "reciprocal")
    assert (fixed.degrees() == 10).all()
    pairs = set(zip(mutual.src.tolist(), mutual.dst.tolist(), strict=True))
    assert pairs == {(b, a) for a, b in pairs}  # a 2-cycle is symmetric
    assert pairs <= set(zip(fixed.src.tolist(), fixed.dst.tolist(), strict=True))
    assert pairs <= set(zip(recip.src.tolist(), recip.dst.tolist(), strict=True))
    back = back_ranks(idx)
    for i in range(50):  # rank growth keeps a prefix, each kept r-th neighbour returning within rank r
        d = int((growth.src == i).sum())
        assert (back[i, :d] <= np.arange(d)).all()
        assert d == 10 or back[i, d] > d
    assert len(set(mutual.degrees().tolist())) > 1  # dynamic: nodes keep different numbers of neighbours
    assert np.allclose(recip.sims, np.einsum("ij,ij->i", x[recip.src], x[recip.dst]), atol=1e-5)
    assert sum(mutual.degree_histogram().values()) == 600


def test_ivf_on_fewer_points_than_its_default_lists() -> None:
    # nlist = 4 sqrt(N) exceeds N below 16 points; faiss k-means then refused to train
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    _, exact = knn(x, ClusterConfig(k=3), backend="torch")
    _, ivf = knn(x, ClusterConfig(k=3, nprobe=16), backend="faiss-ivf")
    assert ivf.shape == (10, 3) and np.array_equal(np.sort(ivf, 1), np.sort(exact, 1))
