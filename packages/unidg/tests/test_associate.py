"""Progressive association on a hand-built scene and on a synthetic video."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.associate import _Groups, _split_cluster, associate, face_body_links, voice_links
from unidg.config import AssociationConfig
from unidg.metrics import score
from unidg.pipeline import cluster_modalities, evaluate_video
from unidg.tracks import Track

BODY_A, BODY_B = [0.0, 0.1, 0.3, 0.9], [0.5, 0.1, 0.8, 0.9]
FACE_A, FACE_B = [0.1, 0.12, 0.2, 0.25], [0.6, 0.12, 0.7, 0.25]


def _scene() -> list[Track]:
    """Two people in two shots; A speaks on screen, someone speaks off screen at the end."""
    times = [0.0, 0.5, 1.0]
    later = [10.0, 10.5, 11.0]
    return [
        Track(0, "face", 0.0, 1.0, times, [FACE_A] * 3, identity=0),
        Track(1, "face", 0.0, 1.0, times, [FACE_B] * 3, identity=1),
        Track(2, "body", 0.0, 1.0, times, [BODY_A] * 3, identity=0),
        Track(3, "body", 0.0, 1.0, times, [BODY_B] * 3, identity=1),
        Track(4, "face", 10.0, 11.0, later, [FACE_A] * 3, identity=0),
        Track(5, "body", 10.0, 11.0, later, [BODY_A] * 3, identity=0),
        Track(6, "voice", 10.0, 11.0, identity=0),
        Track(7, "voice", 20.0, 21.0, identity=2),
    ]


def test_links_by_containment_and_overlap() -> None:
    tracks = _scene()
    assert face_body_links(tracks) == {0: 2, 1: 3, 4: 5}
    assert voice_links(tracks) == {6: 4}  # 7 overlaps nothing: off-screen


def test_bodies_and_voices_join_faces() -> None:
    tracks = _scene()
    # faces: A, B, A; bodies were clustered by outfit: each body track its own cluster; voices separate
    labels = {"face": [0, 1, 0], "body": [0, 1, 2], "voice": [0, 1]}
    res = associate(tracks, labels, AssociationConfig(min_links=1))
    p = res.person
    assert p[0] == p[2] == p[4] == p[5] == p[6] and p[1] == p[3] and p[0] != p[1]
    assert p[7] not in (p[0], p[1]) and res.unassigned_voice == [7]
    assert res.timelines[int(p[0])] == [(0.0, 1.0), (10.0, 11.0)]
    assert len(res.timelines) == 2  # the voice-only group has no timeline
    assert score([t.identity for t in tracks], p).pairwise_f == 1.0


def test_impure_body_cluster_and_cannot_link_pairs() -> None:
    tracks = _scene()
    # one body cluster holds both people's bodies (an impure cluster) and votes for both faces: it
    # joins the majority face cluster only, so it cannot glue the two characters together
    labels = {"face": [0, 1, 0], "body": [0, 0, 0], "voice": [0, 1]}
    res = associate(tracks, labels, AssociationConfig(min_links=1))
    assert res.person[0] != res.person[1] and res.person[2] == res.person[0]
    assert res.stats["cannot_link_pairs"] == 1  # faces 0 and 1 share frames
    # the majority rule alone keeps them apart: cannot-link is a safeguard that changes nothing here
    off = associate(tracks, labels, AssociationConfig(min_links=1, cannot_link=False))
    assert np.array_equal(off.person, res.person) and off.stats["cannot_link_pairs"] == 0


def test_cannot_link_refuses_merges_directly_and_through_a_group() -> None:
    groups = _Groups(4, {0: {1}, 1: {0}})  # nodes 0, 1: face clusters seen in one frame; 2, 3: bodies
    assert not groups.union(0, 1)
    assert groups.union(2, 0) and groups.union(3, 1)
    assert not groups.union(2, 3)  # {2, 0} and {3, 1} hold a cannot-link pair between them
    assert groups.find(2) == groups.find(0) != groups.find(1) == groups.find(3)
    free = _Groups(4, {})
    assert free.union(2, 0) and free.union(3, 1) and free.union(2, 3)


def test_min_links_and_ablation_switches() -> None:
    tracks = _scene()
    labels = {"face": [0, 1, 0], "body": [0, 1, 2], "voice": [0, 1]}
    strict = associate(tracks, labels, AssociationConfig(min_links=2))
    assert strict.person[2] != strict.person[0]  # a single link is not enough
    off = associate(tracks, labels, AssociationConfig(use_body=False, use_voice=False))
    assert len(set(off.person.tolist())) == 2 + 3 + 2


def test_label_validation() -> None:
    with pytest.raises(BadInputError, match="2 face labels for 3 face tracks"):
        associate(_scene(), {"face": [0, 1], "body": [0, 1, 2], "voice": [0, 1]})
    with pytest.raises(BadInputError, match="unknown modality 'lips'"):
        associate(_scene(), {"lips": [0]})


def test_association_improves_fusion(video: Any) -> None:
    labels, _ = cluster_modalities(video.tracks, video.features)
    fused = associate(video.tracks, labels)
    alone = associate(video.tracks, labels, AssociationConfig(use_body=False, use_voice=False))
    truth = video.labels()
    assert score(truth, fused.person).bcubed_f > score(truth, alone.person).bcubed_f + 0.1
    res = evaluate_video(video.tracks, labels, fused, video.timelines, video.main_cast)
    assert 0.0 <= res["timeline_iou_main_mean"] <= 1.0 and set(res) >= {"face", "body", "voice", "fused"}
    assert np.isclose(res["fused"]["bcubed_f"], score(truth, fused.person).bcubed_f)


def _features(rows: dict[int, list[float]], n: int) -> np.ndarray:
    x = np.zeros((n, 2), np.float32)
    for i, v in rows.items():
        x[i] = v
    return x


def test_a_face_cluster_holding_two_faces_seen_together_is_split_by_features() -> None:
    tracks = _scene()
    labels = {"face": [0, 0, 0], "body": [0, 1, 0], "voice": [0, 1]}  # the face clustering merged A and B
    x = _features({0: [1.0, 0.1], 4: [1.0, 0.2], 1: [0.2, 1.0]}, len(tracks))  # A's two faces alike, B apart
    res = associate(tracks, labels, AssociationConfig(min_links=1), x)
    p = res.person
    assert p[0] == p[4] != p[1]  # faces 0 and 1 share frames: split, and A's later face follows its look
    assert p[2] == p[0] and p[3] == p[1]  # bodies then join the right halves
    assert res.stats["face_clusters_split"] == 1 and res.stats["face_conflicts_left"] == 0
    assert score([t.identity for t in tracks], p).pairwise_f == 1.0
    whole = associate(tracks, labels, AssociationConfig(min_links=1))  # no features: nothing to split by
    assert whole.person[0] == whole.person[1] and whole.stats["face_conflicts_left"] == 1
    off = associate(tracks, labels, AssociationConfig(min_links=1, cannot_link=False), x)
    assert off.person[0] == off.person[1] and off.stats["cannot_link_pairs"] == 0
    with pytest.raises(BadInputError, match="2 feature rows for 8 tracks"):
        associate(tracks, labels, features=x[:2])


def test_split_keeps_only_conflicts_apart() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = _split_cluster(x, [(0, 1), (1, 2), (0, 2)])  # a triangle: three people
    assert len(set(groups.tolist())) == 3 and len({groups[0], groups[1], groups[2]}) == 3
    assert len(set(_split_cluster(x, []).tolist())) == 1  # no conflict: one group


def test_faces_sampled_at_different_instants_still_conflict_by_overlap() -> None:
    a = Track(0, "face", 0.0, 2.0, [0.0, 1.0, 2.0], [FACE_A] * 3, identity=0)
    b = Track(1, "face", 0.5, 2.5, [0.5, 1.5, 2.5], [FACE_B] * 3, identity=1)  # no shared frame, 1.5 s overlap
    x = _features({0: [1.0, 0.0], 1: [0.0, 1.0]}, 2)
    assert associate([a, b], {"face": [0, 0]}, features=x).stats["face_clusters_split"] == 1
    tolerant = associate([a, b], {"face": [0, 0]}, AssociationConfig(cannot_link_overlap=2.0), x)
    assert tolerant.stats["cannot_link_pairs"] == 0 and tolerant.person[0] == tolerant.person[1]
    with pytest.raises(BadInputError, match="cannot_link_overlap"):
        AssociationConfig(cannot_link_overlap=-1.0)


def test_cannot_link_splits_the_look_alike_pair_of_a_synthetic_video(video: Any) -> None:
    labels, _ = cluster_modalities(video.tracks, video.features)
    fused = associate(video.tracks, labels, features=video.features)
    whole = associate(video.tracks, labels)  # the clusters as the face clustering left them
    assert whole.stats["face_conflicts_left"] > 0  # this video's look-alikes share a face cluster ...
    assert fused.stats["face_clusters_split"] >= 1 and fused.stats["face_conflicts_left"] == 0  # ... split here
    truth = video.labels()
    assert score(truth, fused.person).bcubed_f > score(truth, whole.person).bcubed_f + 0.1
    faces = video.indices("face")
    together = [(a, b) for a in faces for b in faces if a < b and fused.person[a] == fused.person[b]]
    assert all(truth[a] == truth[b] for a, b in together if _co_visible(video.tracks[a], video.tracks[b]))


def _co_visible(a: Track, b: Track) -> bool:
    return min(a.end, b.end) - max(a.start, b.start) > 0
