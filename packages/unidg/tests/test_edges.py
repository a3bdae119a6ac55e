"""The learned edge classifier: its features, what it learns, its files, and its use by the decoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.config import ClusterConfig
from unidg.edges import (
    FEATURES,
    EdgeConfig,
    edge_auc,
    edge_features,
    edge_training_set,
    fit_edges,
    list_rank,
    load_edge_model,
    save_edge_model,
)  # fmt: skip
from unidg.graph import cluster
from unidg.knn import knn, normalize
from unidg.metrics import score
from unidg.neighbours import select_neighbours
from unidg.synth import embedding_clusters


@pytest.fixture(scope="module")
def trained() -> tuple[object, dict[str, float]]:
    """A classifier trained on overlapping clusters (sigma 0.8: cosine alone confuses some pairs)."""
    x, y = embedding_clusters(600, 12, dim=32, sigma=0.8, seed=1)
    return fit_edges([(x, y)], EdgeConfig(k=10, epochs=20))


def test_list_rank_and_features_by_hand() -> None:
    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(30, 8)).astype(np.float32))
    sims, idx = knn(x, ClusterConfig(k=5))
    a, b = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    for i, j, r in zip(a, b, list_rank(idx, a, b), strict=True):
        row = list(idx[i])
        assert r == (row.index(j) if j in row else 5)
    g = select_neighbours(x, sims, idx, "fixed")
    f = edge_features(g.src, g.dst, sims, idx)
    assert f.shape == (g.src.size, len(FEATURES)) and np.isfinite(f).all()
    assert np.allclose(f[:, 0], np.einsum("ij,ij->i", x[g.src], x[g.dst]), atol=1e-5)  # cos
    assert np.allclose(f[:, 4], sims.mean(1)[g.src], atol=1e-6)  # density of i
    assert np.allclose(f[:, 6], f[:, 0] - sims[g.src, -1], atol=1e-6)  # margin over i's k-th neighbour
    assert ((f[:, 3] > 0) & (f[:, 3] <= 1)).all()  # Jaccard: j lies in both (self-including) lists


def test_learns_a_separable_toy_problem(trained: tuple[object, dict[str, float]]) -> None:
    model, stats = trained
    assert stats["train_auc"] > 0.95 and stats["edges"] == 6000
    x, y = embedding_clusters(600, 12, dim=32, sigma=0.8, seed=2)  # held out: other identities, other noise
    feats, target = edge_training_set(x, y, 10)
    prob = model.predict(feats)  # type: ignore[attr-defined]
    auc, cos_auc = edge_auc(prob, target), edge_auc(feats[:, 0], target)
    assert auc >= 0.93 and auc > cos_auc + 0.03, (auc, cos_auc)  # it beats the raw cosine it is given
    assert ((prob > 0.5) == (target > 0.5)).mean() > 0.95


def test_round_trip_gives_identical_scores(trained: tuple[object, dict[str, float]], tmp_path: Path) -> None:
    model, _ = trained
    save_edge_model(tmp_path / "edges", model, {"note": "test"})  # type: ignore[arg-type]
    meta = json.loads((tmp_path / "edges" / "config.json").read_text())
    assert meta["config"]["_type"] == "EdgeConfig" and meta["config"]["features"] == list(FEATURES)
    again = load_edge_model(tmp_path / "edges")
    x, y = embedding_clusters(300, 6, dim=32, sigma=0.8, seed=3)
    feats, _ = edge_training_set(x, y, 10)
    assert np.array_equal(again.predict(feats), model.predict(feats))  # type: ignore[attr-defined]


@pytest.mark.parametrize("rule", ["fixed", "mutual", "reciprocal"])
@pytest.mark.parametrize("decode", ["threshold", "peaks"])
def test_learned_score_plugs_into_the_decoders(trained: tuple[object, dict[str, float]], tmp_path_factory: pytest.TempPathFactory,
                                               blobs: tuple[np.ndarray, np.ndarray], rule: str, decode: str) -> None:  # fmt: skip
    folder = tmp_path_factory.getbasetemp() / "plug-edges"
    if not folder.is_dir():
        save_edge_model(folder, trained[0])  # type: ignore[arg-type]
    x, y = blobs
    cfg = ClusterConfig(k=10, neighbours=rule, decode=decode, edge_score="learned", edge_model=str(folder), threshold=0.5)
    res = cluster(x, cfg)
    assert score(y, res.labels).bcubed_f > 0.95, (rule, decode)
    assert np.array_equal(res.labels, cluster(x, cfg, edge_model=trained[0]).labels)  # type: ignore[arg-type]


def test_bad_classifier_folders(trained: tuple[object, dict[str, float]], tmp_path: Path) -> None:
    x = embedding_clusters(100, 4, dim=8, seed=0)[0]
    with pytest.raises(BadInputError, match="needs an edge classifier folder"):
        cluster(x, ClusterConfig(k=10, edge_score="learned"))
    with pytest.raises(BadInputError, match="not found"):
        load_edge_model(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(BadInputError, match="not an edge classifier folder"):
        load_edge_model(tmp_path / "junk")
    save_edge_model(tmp_path / "e", trained[0])  # type: ignore[arg-type]
    meta = json.loads((tmp_path / "e" / "config.json").read_text())
    meta["config"]["features"] = ["cos"]
    (tmp_path / "e" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="edge features"):
        load_edge_model(tmp_path / "e")
    (tmp_path / "e" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BadInputError):
        load_edge_model(tmp_path / "e")
    with pytest.raises(BadInputError, match="trained on k=10"):
        cluster(x, ClusterConfig(k=5, edge_score="learned"), edge_model=trained[0])  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="both same- and different-identity"):
        fit_edges([(x, np.zeros(100, np.int64))], EdgeConfig(k=10))
