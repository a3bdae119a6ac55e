"""Tracks and the on-disk format users write from their own detector and tracker.

A *video folder* holds:

- ``tracks.json``: ``{"format": "unidg-tracks", "version": 1, "duration": seconds, "tracks": [...]}``;
  each track is ``{"id": int, "modality": "face"|"body"|"voice", "start": s, "end": s,
  "times": [s, ...], "boxes": [[x0, y0, x1, y1], ...], "identity": int (optional ground truth, -1
  unknown), "shot": int (optional), "scene": int (optional)}``. ``times`` / ``boxes`` are the
  sampled frames of a face or body track (any coordinates, one box per time, ``x0 <= x1``,
  ``y0 <= y1``); voice tracks have none. Track ids are unique.
- ``features.npy``: ``float32 [T, D]``, row i the pooled embedding of ``tracks[i]`` (any
  embedding; one space per modality is enough, a joint space is not required).

Everything is validated on load and the first problem is one BadInputError naming the file and the track.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import atomic_write, load_json, save_json
from slimkit.paths import check_input_dir, check_input_file
from unidg.config import MODALITIES
from unidg.knn import check_features

__all__ = ["FORMAT", "Track", "load_video", "save_video", "tracks_from_json", "tracks_to_json"]

FORMAT = "unidg-tracks"


@dataclass
class Track:
    """One face, body or voice track: when it is, where its boxes are, and (when known) who it is."""

    id: int
    modality: str
    start: float
    end: float
    times: list[float] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    identity: int = -1
    shot: int = -1
    scene: int = -1

    @property
    def duration(self) -> float:
        return self.end - self.start


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _track(d: Any, where: str) -> Track:
    if not isinstance(d, dict):
        raise BadInputError(f"{where}: a track must be an object, got {type(d).__name__}")
    for key in ("id", "modality", "start", "end"):
        if key not in d:
            raise BadInputError(f"{where}: missing {key!r}")
    unknown = set(d) - {"id", "modality", "start", "end", "times", "boxes", "identity", "shot", "scene"}
    if unknown:
        raise BadInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if d["modality"] not in MODALITIES:
        raise BadInputError(f"{where}: unknown modality {d['modality']!r} (use {', '.join(MODALITIES)})")
    for key in ("id", "identity", "shot", "scene"):
        if key in d and (isinstance(d[key], bool) or not isinstance(d[key], int)):
            raise BadInputError(f"{where}: {key} must be an integer, got {d[key]!r}")
    if not (_num(d["start"]) and _num(d["end"])):
        raise BadInputError(f"{where}: start and end must be finite numbers")
    start, end = float(d["start"]), float(d["end"])
    if end < start:
        raise BadInputError(f"{where}: ends at {end:g} s before it starts at {start:g} s")
    times, boxes = d.get("times", []), d.get("boxes", [])
    if not isinstance(times, list) or not all(_num(t) for t in times):
        raise BadInputError(f"{where}: times must be a list of numbers")
    if not isinstance(boxes, list) or len(boxes) != len(times):
        raise BadInputError(f"{where}: {len(times)} times but {len(boxes) if isinstance(boxes, list) else 'no'} boxes")
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 4 and all(_num(v) for v in b)) or b[2] < b[0] or b[3] < b[1]:
            raise BadInputError(f"{where}: box {b!r} is not [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
    if any(t < start - 1e-6 or t > end + 1e-6 for t in times):
        raise BadInputError(f"{where}: a frame time lies outside [{start:g}, {end:g}]")
    if d["modality"] == "voice" and times:
        raise BadInputError(f"{where}: voice tracks have no boxes")
    return Track(int(d["id"]), d["modality"], start, end, [float(t) for t in times],
                 [[float(v) for v in b] for b in boxes], int(d.get("identity", -1)), int(d.get("shot", -1)),
                 int(d.get("scene", -1)))  # fmt: skip


def tracks_from_json(data: Any, source: str = "tracks") -> tuple[list[Track], float]:
    """``(tracks, duration)`` from the parsed ``tracks.json``; raises on the first invalid entry."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadInputError(f"{source}: not a {FORMAT} file (missing \"format\": \"{FORMAT}\")")
    raw = data.get("tracks")
    if not isinstance(raw, list) or not raw:
        raise BadInputError(f"{source}: \"tracks\" must be a non-empty list")
    tracks = [_track(d, f"{source}: track {i}") for i, d in enumerate(raw)]
    ids = [t.id for t in tracks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BadInputError(f"{source}: track id {dup} appears more than once")
    duration = data.get("duration", max(t.end for t in tracks))
    if not _num(duration) or duration < max(t.end for t in tracks) - 1e-6:
        raise BadInputError(f"{source}: duration {duration!r} is shorter than the last track")
    return tracks, float(duration)


def tracks_to_json(tracks: Sequence[Track], duration: float) -> dict[str, Any]:
    """The ``tracks.json`` document."""
    return {"format": FORMAT, "version": 1, "duration": duration, "tracks": [
        {"id": t.id, "modality": t.modality, "start": t.start, "end": t.end, "times": t.times, "boxes": t.boxes,
         "identity": t.identity, "shot": t.shot, "scene": t.scene} for t in tracks]}  # fmt: skip


def save_video(folder: str | Path, tracks: Sequence[Track], features: np.ndarray, duration: float) -> Path:
    """Write ``tracks.json`` and ``features.npy`` into ``folder`` (atomically, each)."""
    out = Path(folder)
    if features.shape[0] != len(tracks):
        raise BadInputError(f"{features.shape[0]} feature rows for {len(tracks)} tracks")
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "tracks.json", tracks_to_json(tracks, duration))
    with atomic_write(out / "features.npy", "wb") as fh:
        np.save(fh, np.ascontiguousarray(features, dtype=np.float32))
    return out


def load_features(path: str | Path, what: str = "features") -> np.ndarray:
    """A ``.npy`` feature matrix, checked (2-D, numeric, finite)."""
    p = check_input_file(path, what, (".npy",))
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(f"{what} {p} is not a readable .npy file ({exc})") from exc
    return check_features(arr, f"{what} {p}")


def load_video(folder: str | Path, features: str | Path | None = None) -> tuple[list[Track], np.ndarray, float]:
    """``(tracks, features, duration)`` of a video folder (or ``features`` from another file), validated."""
    root = check_input_dir(folder, "video folder")
    tracks_file = check_input_file(root / "tracks.json", "tracks file", (".json",))
    try:
        data = load_json(tracks_file)
    except json.JSONDecodeError as exc:  # pragma: no cover - load_json raises CorruptFileError already
        raise CorruptFileError(f"{tracks_file} is not JSON ({exc})") from exc
    tracks, duration = tracks_from_json(data, str(tracks_file))
    feats = load_features(features if features is not None else root / "features.npy")
    if feats.shape[0] != len(tracks):
        raise BadInputError(f"{feats.shape[0]} feature rows but {len(tracks)} tracks in {tracks_file}")
    return tracks, feats, duration
