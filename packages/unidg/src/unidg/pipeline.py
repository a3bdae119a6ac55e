"""The video pipeline the CLI, the demo and the tables share: cluster per modality, associate, score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unidg.associate import AssociationResult, associate
from unidg.baselines import run_method
from unidg.config import MODALITIES, AssociationConfig, ClusterConfig
from unidg.edges import EdgeClassifier
from unidg.graph import cluster, resolve_edge_model
from unidg.metrics import match_timelines, score
from unidg.tracks import Track

__all__ = ["cluster_modalities", "evaluate_video", "joint_labels", "modality_index", "run_video"]


def modality_index(tracks: Sequence[Track], modality: str) -> np.ndarray:
    """Row indices of one modality's tracks, in track order."""
    return np.array([i for i, t in enumerate(tracks) if t.modality == modality], np.int64)


def cluster_modalities(
    tracks: Sequence[Track], features: np.ndarray, method: str = "unidg", config: ClusterConfig | None = None,
    n_clusters: Mapping[str, int] | None = None, edge_model: EdgeClassifier | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({modality: labels}, {modality: graph summary})``: each modality clustered on its own
    (``edge_model``: an in-memory classifier for learned edges, else the config's folder is loaded once)."""
    cfg = config or ClusterConfig()
    if method == "unidg":
        edge_model = resolve_edge_model(cfg, edge_model)
    labels: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for m in MODALITIES:
        idx = modality_index(tracks, m)
        if idx.size == 0:
            continue
        if idx.size == 1:
            labels[m] = np.zeros(1, np.int64)
            continue
        if method == "unidg":
            res = cluster(features[idx], cfg, edge_model=edge_model)
            labels[m], info[m] = res.labels, res.summary()
        else:
            k = None if n_clusters is None else min(n_clusters.get(m, 1), idx.size)
            labels[m] = run_method(method, features[idx], cfg, n_clusters=k)
            info[m] = {"clusters": int(labels[m].max()) + 1}
    return labels, info


def joint_labels(features: np.ndarray, method: str = "unidg", config: ClusterConfig | None = None,
                 n_clusters: int | None = None) -> np.ndarray:  # fmt: skip
    """One clustering of every track at once (the "no progressive association" ablation)."""
    return run_method(method, features, config or ClusterConfig(), n_clusters=n_clusters)


def evaluate_video(
    tracks: Sequence[Track], modality_labels: Mapping[str, np.ndarray] | None, fused: AssociationResult | np.ndarray,
    truth_timelines: Mapping[int, Sequence[tuple[float, float]]] | None = None, main_cast: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-modality and fused Fp / Fb / NMI / WCP, and timeline IoU per true character (needs identities)."""
    truth = np.array([t.identity for t in tracks], np.int64)
    out: dict[str, Any] = {}
    if modality_labels is not None:
        for m, lab in modality_labels.items():
            idx = modality_index(tracks, m)
            out[m] = score(truth[idx], lab).to_dict()
    person = fused.person if isinstance(fused, AssociationResult) else np.asarray(fused)
    out["fused"] = score(truth, person).to_dict()
    if isinstance(fused, AssociationResult):
        gt = truth_timelines
        if gt is None:
            spans: dict[int, list[tuple[float, float]]] = {}
            for t in tracks:
                if t.modality != "voice":
                    spans.setdefault(t.identity, []).append((t.start, t.end))
            gt = spans
        iou, match = match_timelines(gt, fused.timelines)
        cast = [c for c in (main_cast if main_cast is not None else sorted(iou)) if c in iou]
        out["timeline_iou"] = {str(k): v for k, v in iou.items()}
        out["timeline_iou_main_mean"] = float(np.mean([iou[c] for c in cast])) if cast else float("nan")
        out["match"] = {str(p): t for p, t in match.items()}
    return out


def run_video(
    tracks: Sequence[Track], features: np.ndarray, method: str = "unidg", config: ClusterConfig | None = None,
    association: AssociationConfig | None = None, n_clusters: Mapping[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], AssociationResult, dict[str, Any]]:
    """Cluster each modality, then associate: ``(labels per modality, association, graph info)``."""
    labels, info = cluster_modalities(tracks, features, method, config, n_clusters)
    return labels, associate(tracks, labels, association, features), info
