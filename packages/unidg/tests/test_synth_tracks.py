"""The generator's invariants and the on-disk track format's validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.synth import SynthConfig, embedding_clusters, simulate
from unidg.tracks import load_video, save_video, tracks_from_json, tracks_to_json


def test_deterministic_and_seed_dependent(video: Any) -> None:
    again = simulate(video.config, seed=3)
    assert np.array_equal(again.features, video.features)
    assert tracks_to_json(again.tracks, 120.0) == tracks_to_json(video.tracks, 120.0)
    assert simulate(video.config, seed=4).features.shape != video.features.shape or not np.array_equal(
        simulate(video.config, seed=4).features, video.features)


def test_structure(video: Any) -> None:
    mods = {t.modality for t in video.tracks}
    assert mods == {"face", "body", "voice"}
    assert np.allclose(np.linalg.norm(video.features, axis=1), 1, atol=1e-5)
    bodies = {(t.identity, t.shot): t for t in video.tracks if t.modality == "body"}
    for t in video.tracks:
        assert t.end >= t.start
        if t.modality == "face":  # every face sits in the top part of its own body box, frame by frame
            body = bodies[(t.identity, t.shot)]
            frames = dict(zip(body.times, body.boxes, strict=True))
            for time, (x0, y0, x1, y1) in zip(t.times, t.boxes, strict=True):
                b = frames[time]
                assert b[0] <= x0 and x1 <= b[2] and b[1] <= y0 and (y0 + y1) / 2 < b[1] + 0.5 * (b[3] - b[1])
    for i in video.offscreen_voice:  # off-screen speech: the speaker is not visible in that shot
        v = video.tracks[i]
        assert (v.identity, v.shot) not in bodies
    for who, spans in video.timelines.items():
        total = sum(t.end - t.start for t in video.tracks if t.modality == "body" and t.identity == who)
        assert sum(e - s for s, e in spans) <= total + 1e-6
    weights = np.bincount(video.labels("body"))
    assert weights[0] == weights.max()  # Zipf: the lead has the most screen time


def test_config_validation() -> None:
    with pytest.raises(BadInputError, match="identities must be >= 2"):
        SynthConfig(identities=1)
    with pytest.raises(BadInputError, match="sigma"):
        SynthConfig(sigma=[1.0])


def test_embedding_clusters() -> None:
    x, y = embedding_clusters(1000, 20, dim=16, seed=0)
    assert x.shape == (1000, 16) and x.dtype == np.float32 and y.max() < 20
    assert np.bincount(y).argmax() == 0


def test_round_trip(tmp_path: Path, video: Any) -> None:
    save_video(tmp_path / "v", video.tracks, video.features, video.duration)
    tracks, feats, duration = load_video(tmp_path / "v")
    assert tracks == video.tracks and np.array_equal(feats, video.features) and duration == 120.0


def _doc(**track: Any) -> dict[str, Any]:
    base = {"id": 0, "modality": "face", "start": 0.0, "end": 1.0, "times": [0.5], "boxes": [[0, 0, 1, 1]]}
    return {"format": "unidg-tracks", "tracks": [{**base, **track}]}


@pytest.mark.parametrize(("track", "message"), [
    ({"end": -1.0}, "ends at -1 s before it starts at 0 s"),
    ({"modality": "lips"}, "unknown modality 'lips'"),
    ({"boxes": [[1, 0, 0, 1]]}, "x0 <= x1"),
    ({"times": [0.5, 0.6]}, "2 times but 1 boxes"),
    ({"times": [3.0]}, "outside"),
    ({"colour": 1}, "unknown field"),
])  # fmt: skip
def test_bad_tracks(track: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        tracks_from_json(_doc(**track))


def test_bad_video_folder(tmp_path: Path, video: Any) -> None:
    save_video(tmp_path / "v", video.tracks, video.features, video.duration)
    np.save(tmp_path / "short.npy", video.features[:-1])
    with pytest.raises(BadInputError, match="feature rows but"):
        load_video(tmp_path / "v", tmp_path / "short.npy")
    bad = video.features.copy()
    bad[4, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(BadInputError, match="row 4 is not finite"):
        load_video(tmp_path / "v", tmp_path / "nan.npy")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "tracks.json").write_text(json.dumps({"tracks": []}))
    with pytest.raises(BadInputError, match="not a unidg-tracks file"):
        load_video(tmp_path / "w")


@pytest.mark.parametrize("duration", [0.5, 1.0])
def test_a_video_of_one_second_or_less_has_one_shot(duration: float) -> None:
    v = simulate(SynthConfig(identities=2, extras=0, duration=duration, dim=8), seed=0)
    assert v.features.shape[0] == len(v.tracks) >= 1 and {t.shot for t in v.tracks} == {0}
    assert all(0.0 <= t.start <= t.end <= duration for t in v.tracks)
