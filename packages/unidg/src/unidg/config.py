"""Configurations: how tracks are clustered (:class:`ClusterConfig`) and fused (:class:`AssociationConfig`).

UniDG's paper body is not public (only its abstract), so every choice below is a reconstruction
from the anchor methods in the research notes and is an option with a documented default.
Serialized only through :mod:`slimkit.io`; every field is JSON-typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from slimkit.errors import BadInputError

NEIGHBOUR_RULES = ("fixed", "mutual", "reciprocal", "rank-growth")
EDGE_SCORES = ("cosine", "jaccard", "learned")
DECODERS = ("threshold", "peaks")
BACKENDS = ("auto", "torch", "faiss-flat", "faiss-ivf", "faiss-hnsw")
MODALITIES = ("face", "body", "voice")


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInputError(f"{name} must be an integer >= {low}, got {value!r}")


def _unit(name: str, value: Any, low: float = 0.0, high: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise BadInputError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class ClusterConfig:
    """Dynamic graph clustering of L2-normalised track features (the ``unidg`` method).

    - ``k``: candidates per node from the kNN search (the self match is dropped).
    - ``neighbours``: how each node keeps its own number of the ``k`` candidates
      (:mod:`unidg.neighbours`): ``"mutual"`` (default: a 2-cycle, j in kNN(i) and i in kNN(j)),
      ``"rank-growth"`` (walk the ranked list and keep the r-th neighbour j only while i is in j's
      top ``r + slack`` (a 2-cycle with rank slack) or, with ``cycle=3`` (default), while a
      3-cycle i -> j -> l -> i exists in the kNN lists; stop at the first failure), ``"reciprocal"``
      (k-reciprocal expansion, Ada-NETS style: R(i,k) grows by R(j, k/2) when ``expand_overlap`` of
      it already lies in R(i,k)) or ``"fixed"`` (all k: the fixed-graph ablation).
    - ``edge_score``: ``"cosine"`` (default) or ``"jaccard"``: ``(1 - lam) * jaccard + lam * cosine``
      of the two nodes' neighbour sets (Ada-NETS' structure space, ``lam`` default 0.3), or
      ``"learned"``: P(same identity) from the edge classifier saved in the folder ``edge_model``
      (:mod:`unidg.edges`; ``threshold`` then cuts a probability, 0.5 = more likely same than not;
      the ``levels`` rounds on cluster means keep cosine, since the classifier saw item edges only).
    - ``decode``: ``"peaks"`` (default; density peaks: each node links to its most similar denser
      kept neighbour scoring >= ``threshold``; the forest's trees are the clusters, so one bridge
      edge cannot chain two clusters) or ``"threshold"`` (keep edges scoring >= ``threshold``,
      union-find components).
    - kNN search (:mod:`unidg.knn`): ``backend="auto"`` is exact ``slimkit.retrieval.cosine_topk``
      below ``torch_below`` nodes, exact faiss ``IndexFlatIP`` below ``exact_below``, and
      ``ann`` (``"hnsw"`` or ``"ivf"``) above; ``hnsw_m``, ``ef_search``, ``nprobe`` tune them.
    - ``levels``: rounds of the same graph clustering on the previous round's cluster means
      (1 = items only); means average out track noise, so over-split clusters join (Hi-LANDER style);
      mean-level edges need ``level_threshold`` (means of one identity are closer than its items, so
      a level threshold above ``threshold`` keeps look-alike identities apart).
    """

    k: int = 20
    neighbours: str = "mutual"
    slack: int = 5
    cycle: int = 3
    expand_overlap: float = 2 / 3
    edge_score: str = "cosine"
    lam: float = 0.3
    edge_model: str = ""
    decode: str = "peaks"
    threshold: float = 0.4
    backend: str = "auto"
    torch_below: int = 20_000
    exact_below: int = 200_000
    ann: str = "hnsw"
    hnsw_m: int = 32
    ef_search: int = 128
    nprobe: int = 16
    levels: int = 3
    level_threshold: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        _int("k", self.k, 1)
        _int("levels", self.levels, 1)
        _unit("level_threshold", self.level_threshold, -1.0, 1.0)
        self.level_threshold = float(self.level_threshold)
        _one_of("neighbours", self.neighbours, NEIGHBOUR_RULES)
        _int("slack", self.slack, 0)
        if self.cycle not in (2, 3):
            raise BadInputError(f"cycle must be 2 or 3, got {self.cycle!r}")
        _unit("expand_overlap", self.expand_overlap)
        _one_of("edge_score", self.edge_score, EDGE_SCORES)
        _unit("lam", self.lam)
        if not isinstance(self.edge_model, str):
            raise BadInputError(f"edge_model must be a folder path (a string), got {self.edge_model!r}")
        _one_of("decode", self.decode, DECODERS)
        _unit("threshold", self.threshold, -1.0, 1.0)
        _one_of("backend", self.backend, BACKENDS)
        _int("torch_below", self.torch_below, 0)
        _int("exact_below", self.exact_below, 0)
        _one_of("ann", self.ann, ("hnsw", "ivf"))
        _int("hnsw_m", self.hnsw_m, 2)
        _int("ef_search", self.ef_search, 1)
        _int("nprobe", self.nprobe, 1)
        _int("seed", self.seed, 0)
        self.expand_overlap = float(self.expand_overlap)
        self.lam = float(self.lam)
        self.threshold = float(self.threshold)


@dataclass
class AssociationConfig:
    """Progressive association of per-modality clusters into characters (:mod:`unidg.associate`).

    - ``containment``: a face box links to a body box in a frame when ``|face & body| / |face|`` is at
      least this and the face centre lies in the body box's upper ``upper_fraction``.
    - ``min_frames``: shared frames a face track needs inside a body track to link the two tracks.
    - ``min_links``: track links two clusters need before they merge (face-body, voice-person).
    - ``voice_overlap``: share of a voice segment a face track must overlap to link them; a voice
      cluster goes to the person holding at least ``voice_share`` of its links, otherwise it stays
      unassigned (off-screen speech).
    - ``cannot_link``: two face tracks on screen together (a shared frame, or spans overlapping by more
      than ``cannot_link_overlap`` seconds) belong to two people: a face cluster holding such a pair
      is split (when :func:`unidg.associate.associate` gets the track features), and no merge joins
      two characters across such a pair. ``cannot_link_overlap`` (seconds, default 0: any overlap)
      tolerates trackers whose fragments of one face overlap at their ends.
    - ``use_body`` / ``use_voice``: the progressive steps, for ablations.
    """

    containment: float = 0.8
    upper_fraction: float = 0.5
    min_frames: int = 1
    min_links: int = 2
    voice_overlap: float = 0.3
    voice_share: float = 0.5
    cannot_link: bool = True
    cannot_link_overlap: float = 0.0
    use_body: bool = True
    use_voice: bool = True

    def __post_init__(self) -> None:
        _unit("containment", self.containment)
        _unit("upper_fraction", self.upper_fraction)
        _int("min_frames", self.min_frames, 1)
        _int("min_links", self.min_links, 1)
        _unit("voice_overlap", self.voice_overlap)
        _unit("voice_share", self.voice_share)
        for name in ("cannot_link", "use_body", "use_voice"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.containment = float(self.containment)
        self.upper_fraction = float(self.upper_fraction)
        self.voice_overlap = float(self.voice_overlap)
        self.voice_share = float(self.voice_share)
        _unit("cannot_link_overlap", self.cannot_link_overlap, 0.0, math.inf)
        self.cannot_link_overlap = float(self.cannot_link_overlap)
