"""Progressive association on a hand-built scene and on a synthetic video."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.associate import associate, face_body_links, voice_links
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


def test_cannot_link_blocks_a_merge() -> None:
    tracks = _scene()
    # one body cluster holds both people's bodies (an impure cluster) and votes for both faces
    labels = {"face": [0, 1, 0], "body": [0, 0, 0], "voice": [0, 1]}
    res = associate(tracks, labels, AssociationConfig(min_links=1))
    assert res.person[0] != res.person[1]  # faces 0 and 1 share frames: never one character
    assert res.stats["cannot_link_pairs"] == 1


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
