"""Progressive association: per-modality clusters -> characters -> per-character timelines.

Order (reliable cues first), reconstructed from the abstract's "spatial and temporal contexts":

1. cannot-link: two face tracks on screen at the same time (a shared frame, or time spans that
   overlap by more than ``cannot_link_overlap`` seconds) are two people. A face cluster holding
   such a pair is split first, when track features are given: constrained average-linkage inside
   the cluster (its tracks merge by mean-feature cosine, best first, every merge that would join a
   cannot-link pair refused) until only refused merges are left. Then every face cluster starts as
   a character, and no later merge may join two characters across a cannot-link pair;
2. face -> body, spatial: a face track links to the body track containing its box (containment
   ``|face & body| / |face|`` and the face centre in the body box's upper part) in at least
   ``min_frames`` shared frames, the body track with most such frames winning; each body cluster then
   joins the character holding most of its links when that is at least ``min_links`` links and a
   majority (an impure body cluster cannot glue two characters together); unlinked body clusters
   stay characters of their own (people whose face is never seen);
3. voice -> face / body, temporal: a voice segment links to the face track overlapping it most (a
   body track when no face does) if the overlap covers ``voice_overlap`` of it; each voice cluster
   joins the character with at least ``voice_share`` of its links (and ``min_links``); otherwise it
   stays unassigned (off-screen speech), labelled as its own voice-only group;
4. timelines: each character's union of face and body track intervals (voice is not appearance).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.errors import BadInputError
from slimkit.report import ReportMixin
from unidg.config import MODALITIES, AssociationConfig
from unidg.metrics import merge_intervals
from unidg.tracks import Track

__all__ = ["AssociationResult", "associate", "face_body_links", "voice_links"]


@dataclass
class AssociationResult(ReportMixin):
    """``person[i]``: the character of track i (0..P-1); timelines of the on-screen characters."""

    person: np.ndarray
    timelines: dict[int, list[tuple[float, float]]]
    unassigned_voice: list[int]
    stats: dict[str, int] = field(default_factory=dict)


class _Groups:
    """Union-find over cluster nodes that refuses merges across cannot-link pairs."""

    def __init__(self, n: int, cannot: Mapping[int, set[int]]) -> None:
        self.parent = list(range(n))
        self.members: dict[int, set[int]] = {i: {i} for i in range(n)}
        self.cannot = cannot

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def blocked(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        small, big = sorted((self.members[ra], self.members[rb]), key=len)
        return any(self.cannot.get(m, set()) & big for m in small)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.blocked(ra, rb):
            return False
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        self.members[lo] |= self.members.pop(hi)
        return True


def _box_frames(track: Track) -> dict[float, list[float]]:
    return {round(t, 3): b for t, b in zip(track.times, track.boxes, strict=True)}


def _contains(face: list[float], body: list[float], cfg: AssociationConfig) -> bool:
    ix = max(0.0, min(face[2], body[2]) - max(face[0], body[0]))
    iy = max(0.0, min(face[3], body[3]) - max(face[1], body[1]))
    area = (face[2] - face[0]) * (face[3] - face[1])
    if area <= 0 or ix * iy / area < cfg.containment:
        return False
    cy = (face[1] + face[3]) / 2
    return cy <= body[1] + cfg.upper_fraction * (body[3] - body[1])


def _overlapping(a: Sequence[Track], b: Sequence[Track]) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) whose time intervals overlap, by a sort-and-sweep."""
    if not a or not b:
        return []
    b_start = np.array([t.start for t in b])
    order = np.argsort(b_start, kind="stable")
    sorted_start = b_start[order]
    longest = max(t.end - t.start for t in b)
    pairs = []
    for i, ta in enumerate(a):
        lo = np.searchsorted(sorted_start, ta.start - longest, side="left")
        hi = np.searchsorted(sorted_start, ta.end, side="right")
        for j in order[lo:hi]:
            tb = b[int(j)]
            if min(ta.end, tb.end) >= max(ta.start, tb.start):
                pairs.append((i, int(j)))
    return pairs


def face_body_links(tracks: Sequence[Track], config: AssociationConfig | None = None) -> dict[int, int]:
    """``face track index -> body track index`` by box containment over shared frames."""
    cfg = config or AssociationConfig()
    faces = [i for i, t in enumerate(tracks) if t.modality == "face"]
    bodies = [i for i, t in enumerate(tracks) if t.modality == "body"]
    body_frames = {j: _box_frames(tracks[j]) for j in bodies}
    best: dict[int, tuple[int, int]] = {}
    for fi, bj in _overlapping([tracks[i] for i in faces], [tracks[j] for j in bodies]):
        f, b = faces[fi], bodies[bj]
        frames = body_frames[b]
        hits = sum(1 for t, box in zip(tracks[f].times, tracks[f].boxes, strict=True)
                   if (other := frames.get(round(t, 3))) is not None and _contains(box, other, cfg))  # fmt: skip
        if hits >= cfg.min_frames and hits > best.get(f, (-1, 0))[1]:
            best[f] = (b, hits)
    return {f: b for f, (b, _) in best.items()}


def voice_links(tracks: Sequence[Track], config: AssociationConfig | None = None) -> dict[int, int]:
    """``voice track index -> face (else body) track index`` overlapping it most in time."""
    cfg = config or AssociationConfig()
    voices = [i for i, t in enumerate(tracks) if t.modality == "voice"]
    out: dict[int, int] = {}
    for modality in ("face", "body"):
        todo = [v for v in voices if v not in out]
        visual = [i for i, t in enumerate(tracks) if t.modality == modality]
        best: dict[int, tuple[int, float]] = {}
        for vi, wi in _overlapping([tracks[v] for v in todo], [tracks[w] for w in visual]):
            v, w = todo[vi], visual[wi]
            ov = min(tracks[v].end, tracks[w].end) - max(tracks[v].start, tracks[w].start)
            need = cfg.voice_overlap * max(tracks[v].duration, 1e-9)
            if ov >= need and ov > best.get(v, (-1, -1.0))[1]:
                best[v] = (w, ov)
        out.update({v: w for v, (w, _) in best.items()})
    return out


def _cannot_pairs(conflicts: list[tuple[int, int]], node_of: np.ndarray) -> dict[int, set[int]]:
    """Node-level cannot-link sets from track-level conflict pairs (pairs inside one node are dropped)."""
    cannot: dict[int, set[int]] = defaultdict(set)
    for a, b in conflicts:
        na, nb = int(node_of[a]), int(node_of[b])
        if na != nb:
            cannot[na].add(nb)
            cannot[nb].add(na)
    return cannot


def _face_conflicts(tracks: Sequence[Track], overlap: float) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of face tracks on screen together: a shared frame, or spans overlapping by more
    than ``overlap`` seconds (tracks sampled at different instants still count)."""
    faces = [i for i, t in enumerate(tracks) if t.modality == "face"]
    pairs = []
    for fa, fb in _overlapping([tracks[i] for i in faces], [tracks[i] for i in faces]):
        a, b = faces[fa], faces[fb]
        if a >= b:
            continue
        ta, tb = tracks[a], tracks[b]
        if min(ta.end, tb.end) - max(ta.start, tb.start) > overlap or {round(t, 3) for t in ta.times} & {
            round(t, 3) for t in tb.times
        }:
            pairs.append((a, b))
    return pairs


def _split_cluster(x: np.ndarray, conflicts: list[tuple[int, int]]) -> np.ndarray:
    """Constrained average-linkage of ``x`` (rows L2-normalised): group ids with no conflict pair in one group.

    Groups merge by the cosine of their mean features, best pair first; a merge joining a conflict pair is
    refused; it stops when every remaining merge is refused, so only conflicts keep groups apart.
    O(n^2) per merge for a cluster of n tracks (a video's face clusters hold tens to hundreds).
    """
    n = len(x)
    sums = x.astype(np.float64).copy()
    counts = np.ones(n)
    alive = np.ones(n, bool)
    owner = np.arange(n)
    sim = x @ x.T
    for a, b in conflicts:
        sim[a, b] = sim[b, a] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    while True:
        a, b = (int(v) for v in np.unravel_index(int(np.argmax(sim)), sim.shape))
        if not np.isfinite(sim[a, b]):
            return np.unique(owner, return_inverse=True)[1]
        a, b = min(a, b), max(a, b)
        sums[a] += sums[b]
        counts[a] += counts[b]
        alive[b] = False
        owner[owner == b] = a
        blocked = np.isneginf(sim[a]) | np.isneginf(sim[b])  # a conflict with either side blocks the union
        mean = sums[a] / max(float(np.linalg.norm(sums[a])), 1e-12)
        means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        row = means @ mean
        row[blocked | ~alive] = -np.inf
        row[a] = -np.inf
        sim[a], sim[:, a] = row, row
        sim[b], sim[:, b] = -np.inf, -np.inf


def _split_conflicting_faces(
    tracks: Sequence[Track], full: np.ndarray, features: np.ndarray, conflicts: list[tuple[int, int]]
) -> int:
    """Split (in ``full``) every face cluster holding a conflict pair; returns how many clusters were split."""
    by_cluster: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for a, b in conflicts:
        if full[a] >= 0 and full[a] == full[b]:
            by_cluster[int(full[a])].append((a, b))
    fresh = int(full.max()) + 1
    for label, pairs in sorted(by_cluster.items()):
        members = [i for i, t in enumerate(tracks) if t.modality == "face" and full[i] == label]
        local = {m: j for j, m in enumerate(members)}
        x = np.asarray(features[members], np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        groups = _split_cluster(x, [(local[a], local[b]) for a, b in pairs])
        for m, g in zip(members, groups, strict=True):
            if g > 0:  # group 0 keeps the cluster's label
                full[m] = fresh + int(g) - 1
        fresh += int(groups.max())
    return len(by_cluster)


def _attach(groups: _Groups, links: Mapping[int, int], node_of: np.ndarray, share: float, min_links: int) -> set[int]:
    """Each source cluster joins the group holding most of its links (>= min_links and >= share of them)."""
    votes: dict[int, Counter[int]] = defaultdict(Counter)
    for src, dst in links.items():
        votes[int(node_of[src])][groups.find(int(node_of[dst]))] += 1
    joined = set()
    for node in sorted(votes):
        total = sum(votes[node].values())
        for target, count in votes[node].most_common():
            if count < min_links or count < share * total:
                break
            if groups.union(node, target):
                joined.add(node)
                break
    return joined


def associate(
    tracks: Sequence[Track], labels: Mapping[str, Any] | np.ndarray, config: AssociationConfig | None = None,
    features: np.ndarray | None = None,
) -> AssociationResult:
    """Fuse per-modality cluster labels into characters and timelines.

    ``labels`` is either one array over all tracks (cluster ids; only equality within a modality
    matters) or ``{modality: labels of that modality's tracks, in track order}``. ``features``
    (``[tracks, d]``, the clustered features) lets cannot-link split face clusters that hold two
    faces seen together; without them such clusters stay whole (counted in ``stats``).
    """
    cfg = config or AssociationConfig()
    n = len(tracks)
    if n == 0:
        raise BadInputError("no tracks to associate")
    full = np.full(n, -1, np.int64)
    if isinstance(labels, Mapping):
        for m, lab in labels.items():
            if m not in MODALITIES:
                raise BadInputError(f"unknown modality {m!r} in labels (use {', '.join(MODALITIES)})")
            idx = [i for i, t in enumerate(tracks) if t.modality == m]
            arr = np.asarray(lab, np.int64)
            if arr.shape != (len(idx),):
                raise BadInputError(f"{arr.size} {m} labels for {len(idx)} {m} tracks")
            full[idx] = arr
    else:
        full = np.asarray(labels, np.int64).copy()
        if full.shape != (n,):
            raise BadInputError(f"{full.size} labels for {n} tracks")
    if features is not None and np.shape(features)[0] != n:
        raise BadInputError(f"{np.shape(features)[0]} feature rows for {n} tracks")
    conflicts = _face_conflicts(tracks, cfg.cannot_link_overlap) if cfg.cannot_link else []
    split = _split_conflicting_faces(tracks, full, np.asarray(features), conflicts) if conflicts and features is not None else 0
    # one node per (modality, cluster); an unlabelled (-1) track is a node of its own
    keys = [(t.modality, int(full[i]) if full[i] >= 0 else -1 - i) for i, t in enumerate(tracks)]
    node_ids: dict[tuple[str, int], int] = {}
    node_of = np.array([node_ids.setdefault(k, len(node_ids)) for k in keys], np.int64)
    cannot = _cannot_pairs(conflicts, node_of)
    groups = _Groups(len(node_ids), cannot)
    stats = {"nodes": len(node_ids), "cannot_link_pairs": len(conflicts), "face_clusters_split": split,
             "face_conflicts_left": sum(1 for a, b in conflicts if node_of[a] == node_of[b])}  # fmt: skip
    if cfg.use_body:
        fb = face_body_links(tracks, cfg)
        body_to_face = {b: f for f, b in fb.items()}  # the body cluster votes with its tracks' faces
        stats["face_body_links"] = len(fb)
        stats["body_clusters_joined"] = len(_attach(groups, body_to_face, node_of, 0.5 + 1e-9, cfg.min_links))
    joined_voice: set[int] = set()
    if cfg.use_voice:
        vl = voice_links(tracks, cfg)
        stats["voice_links"] = len(vl)
        joined_voice = _attach(groups, vl, node_of, cfg.voice_share, cfg.min_links)
        stats["voice_clusters_joined"] = len(joined_voice)
    roots = np.array([groups.find(int(v)) for v in node_of])
    _, person = np.unique(roots, return_inverse=True)
    visual_roots = {int(roots[i]) for i, t in enumerate(tracks) if t.modality != "voice"}
    unassigned = [i for i, t in enumerate(tracks) if t.modality == "voice" and int(roots[i]) not in visual_roots]
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for i, t in enumerate(tracks):
        if t.modality != "voice":
            spans[int(person[i])].append((t.start, t.end))
    timelines = {p: merge_intervals(v) for p, v in sorted(spans.items())}
    stats["characters"] = len(timelines)
    return AssociationResult(person.astype(np.int64), timelines, unassigned, stats)
