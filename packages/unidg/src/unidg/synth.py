"""A deterministic synthetic video: cast, scenes, shots, outfits, extras, tracks with boxes and times, speech.

Follows the research notes' spec (section 6.3), a pure function of ``(SynthConfig, seed)``:

- a main cast with Zipf screen-time weights (``zipf``) plus ``extras`` with small weights;
- shots with log-normal lengths (mean ``shot_mean`` s), ``shots_per_scene`` shots per scene, a scene
  cast of 2-4 characters and an outfit per character that changes every ``outfit_every`` scenes;
- per shot 1-3 visible characters: a body track over most of the shot (boxes in horizontal slots,
  sampled at ``fps``), a face track on a sub-interval with probability ``face_prob`` (box in the
  top of the body box);
- speaker turns of 1-5 s among the scene cast, off-screen with probability ``offscreen``
  (the speaker has no visible track in the shot), overlapping speech with probability ``overlap``;
- embeddings (the embedding-only mode): identity vectors ``u_k``, per-modality prototypes
  ``normalize(u_k + beta_m v_km)`` (body also adds its outfit vector times ``outfit_weight``),
  ``lookalikes`` identity pairs sharing most of ``u``, and each track ``normalize(mu + sigma_m / q * eps / sqrt(d))``
  with a per-track quality ``q`` in [0.5, 1].

:func:`embedding_clusters` is the same feature model without timelines, for scale benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.errors import BadInputError
from unidg.config import MODALITIES
from unidg.metrics import merge_intervals
from unidg.tracks import Track

__all__ = ["SynthConfig", "Video", "embedding_clusters", "simulate"]


@dataclass
class SynthConfig:
    """Parameters of :func:`simulate` (see the module docstring); all defaults give a 10-minute video."""

    identities: int = 8
    extras: int = 6
    duration: float = 600.0
    dim: int = 128
    zipf: float = 1.2
    extra_weight: float = 0.15
    shot_mean: float = 4.0
    shots_per_scene: int = 20
    outfit_every: int = 2
    fps: float = 2.0
    face_prob: float = 0.7
    offscreen: float = 0.2
    overlap: float = 0.05
    lookalikes: int = 1
    beta: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])
    sigma: list[float] = field(default_factory=lambda: [0.55, 0.7, 0.8])
    outfit_weight: float = 0.6

    def __post_init__(self) -> None:
        for name in ("identities", "shots_per_scene", "outfit_every", "dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadInputError(f"{name} must be an integer >= 1, got {v!r}")
        if self.identities < 2:
            raise BadInputError(f"identities must be >= 2, got {self.identities}")
        if isinstance(self.extras, bool) or not isinstance(self.extras, int) or self.extras < 0:
            raise BadInputError(f"extras must be an integer >= 0, got {self.extras!r}")
        for name in ("duration", "shot_mean", "fps"):
            if not float(getattr(self, name)) > 0:
                raise BadInputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("face_prob", "offscreen", "overlap"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise BadInputError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("beta", "sigma"):
            v = getattr(self, name)
            if len(v) != len(MODALITIES) or any(float(x) < 0 for x in v):
                raise BadInputError(f"{name} must list {len(MODALITIES)} non-negative values (face, body, voice)")
        if not 0 <= self.lookalikes <= self.identities // 2:
            raise BadInputError(f"lookalikes must be in [0, identities / 2], got {self.lookalikes}")
        self.beta = [float(x) for x in self.beta]
        self.sigma = [float(x) for x in self.sigma]


@dataclass
class Video:
    """A generated video: tracks, their features (rows aligned), ground-truth timelines and cast facts."""

    tracks: list[Track]
    features: np.ndarray
    duration: float
    timelines: dict[int, list[tuple[float, float]]]
    main_cast: list[int]
    offscreen_voice: list[int]
    config: SynthConfig
    seed: int

    def labels(self, modality: str | None = None) -> np.ndarray:
        """Ground-truth identities of all tracks (or one modality's)."""
        return np.array([t.identity for t in self.tracks if modality is None or t.modality == modality], np.int64)

    def indices(self, modality: str) -> np.ndarray:
        """Row indices of one modality's tracks."""
        return np.array([i for i, t in enumerate(self.tracks) if t.modality == modality], np.int64)

    def summary(self) -> dict[str, Any]:
        counts = {m: int(sum(t.modality == m for t in self.tracks)) for m in MODALITIES}
        return {"seed": self.seed, "duration": self.duration, "tracks": len(self.tracks), "per_modality": counts,
                "identities": len(self.timelines), "main_cast": len(self.main_cast),
                "offscreen_voice": len(self.offscreen_voice), "dim": int(self.features.shape[1])}  # fmt: skip


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _Embedder:
    """Prototype vectors per (identity, modality[, outfit]) and noisy track features."""

    def __init__(self, cfg: SynthConfig, n_ids: int, rng: np.random.Generator) -> None:
        self.cfg, self.rng, d = cfg, rng, cfg.dim
        u = _unit(rng.standard_normal((n_ids, d)))
        for p in range(cfg.lookalikes):  # identity 2p+1 looks like 2p (hard negatives among the main cast)
            u[2 * p + 1] = _unit(u[2 * p] + 0.8 * _unit(rng.standard_normal(d)))
        self.proto = np.stack([_unit(u + b * _unit(rng.standard_normal((n_ids, d)))) for b in cfg.beta], 1)
        self.outfits: dict[tuple[int, int], np.ndarray] = {}

    def feature(self, identity: int, modality: int, outfit: int) -> np.ndarray:
        cfg, d = self.cfg, self.cfg.dim
        mu = self.proto[identity, modality]
        if modality == 1:
            key = (identity, outfit)
            if key not in self.outfits:
                self.outfits[key] = _unit(self.rng.standard_normal(d))
            mu = _unit(mu + cfg.outfit_weight * self.outfits[key])
        q = self.rng.uniform(0.5, 1.0)
        e = mu + cfg.sigma[modality] / q * self.rng.standard_normal(d) / math.sqrt(d)
        return _unit(e).astype(np.float32)


def simulate(config: SynthConfig | None = None, seed: int = 0) -> Video:
    """Generate one video (tracks, features, timelines); the same ``(config, seed)`` gives the same video."""
    cfg = config or SynthConfig()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BadInputError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    n_ids = cfg.identities + cfg.extras
    weights = np.array([1.0 / (r + 1) ** cfg.zipf for r in range(cfg.identities)] + [cfg.extra_weight / max(1, cfg.extras)] * cfg.extras)
    weights = weights[: n_ids] / weights[: n_ids].sum()
    emb = _Embedder(cfg, n_ids, rng)
    tracks: list[Track] = []
    feats: list[np.ndarray] = []
    offscreen_voice: list[int] = []
    t, shot, scene_cast = 0.0, 0, np.array([0])
    mu_log = math.log(cfg.shot_mean) - 0.125
    while shot == 0 or t < cfg.duration - 1.0:  # at least one shot, even in a video of 1 s or less
        scene = shot // cfg.shots_per_scene
        if shot % cfg.shots_per_scene == 0:
            size = min(n_ids, int(rng.integers(2, 5)))
            scene_cast = rng.choice(n_ids, size=size, replace=False, p=weights)
        length = float(min(max(1.0, rng.lognormal(mu_log, 0.5)), cfg.duration - t))
        start, end = t, t + length
        w = weights[scene_cast] / weights[scene_cast].sum()
        n_vis = min(len(scene_cast), int(rng.integers(1, 4)))
        visible = rng.choice(scene_cast, size=n_vis, replace=False, p=w)
        slots = rng.permutation(3)[:n_vis]
        for who, slot in zip(visible, slots, strict=True):
            who = int(who)
            outfit = scene // cfg.outfit_every
            b0 = round(start + rng.uniform(0, 0.1) * length, 3)
            b1 = round(end - rng.uniform(0, 0.1) * length, 3)
            x0 = 0.05 + 0.32 * slot + rng.uniform(-0.03, 0.03)
            bw, y0, bh = rng.uniform(0.2, 0.26), rng.uniform(0.1, 0.2), rng.uniform(0.6, 0.75)
            times = list(np.round(np.arange(b0, b1, 1.0 / cfg.fps), 3)) or [round(b0, 3)]
            body_boxes = []
            for _ in times:
                j = rng.normal(0, 0.005, 2)
                body_boxes.append([x0 + j[0], y0 + j[1], x0 + bw + j[0], y0 + bh + j[1]])
            tracks.append(Track(len(tracks), "body", b0, max(b1, times[-1]), [float(x) for x in times],
                                [[float(v) for v in b] for b in body_boxes], who, shot, scene))  # fmt: skip
            feats.append(emb.feature(who, 1, outfit))
            if rng.uniform() < cfg.face_prob and len(times) >= 2:
                i0 = int(rng.integers(0, len(times) // 2 + 1))
                i1 = int(rng.integers(max(i0 + 1, len(times) // 2), len(times) + 1))
                fw = bw * rng.uniform(0.3, 0.4)
                face_boxes = []
                for b in body_boxes[i0:i1]:
                    cx = (b[0] + b[2]) / 2 + rng.normal(0, 0.01)
                    fy = b[1] + rng.uniform(0.01, 0.04)
                    face_boxes.append([cx - fw / 2, fy, cx + fw / 2, fy + fw * 1.2])
                ft = times[i0:i1]
                tracks.append(Track(len(tracks), "face", float(ft[0]), float(ft[-1]), [float(x) for x in ft],
                                    [[float(v) for v in b] for b in face_boxes], who, shot, scene))  # fmt: skip
                feats.append(emb.feature(who, 0, outfit))
        # speech: alternating turns; off-screen speakers are cast members not visible in this shot
        hidden = [int(c) for c in scene_cast if c not in visible]
        s = start + rng.uniform(0, 0.5)
        while s < end - 0.5:
            turn = float(min(rng.uniform(1.0, 5.0), end - s))
            off = bool(hidden) and rng.uniform() < cfg.offscreen
            speaker = int(rng.choice(hidden)) if off else int(rng.choice(visible))
            speakers = [speaker]
            if rng.uniform() < cfg.overlap and n_vis > 1:
                speakers.append(int(rng.choice([v for v in visible if v != speaker])))
            for who in speakers:
                if off and who == speaker:
                    offscreen_voice.append(len(tracks))
                tracks.append(Track(len(tracks), "voice", s, s + turn, [], [], who, shot, scene))
                feats.append(emb.feature(who, 2, 0))
            s += turn + rng.uniform(0.1, 0.6)
        t, shot = end, shot + 1
    timelines: dict[int, list[tuple[float, float]]] = {}
    for tr in tracks:
        if tr.modality == "body":
            timelines.setdefault(tr.identity, []).append((tr.start, tr.end))
    timelines = {k: merge_intervals(v) for k, v in sorted(timelines.items())}
    return Video(tracks, np.stack(feats), float(cfg.duration), timelines, list(range(cfg.identities)),
                 offscreen_voice, cfg, seed)  # fmt: skip


def embedding_clusters(
    n: int, identities: int, dim: int = 256, sigma: float = 0.75, zipf: float = 1.0, seed: int = 0, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [n, dim], labels)``: the generator's track-feature model without timelines.

    Identity sizes follow a Zipf law (imbalanced screen time); each feature is
    ``normalize(u_k + sigma / q * eps / sqrt(dim))`` with quality ``q`` in [0.5, 1]. Made in chunks, so
    a million 256-d rows need only the output's memory (1 GB).
    """
    if n < 1 or identities < 1 or dim < 1:
        raise BadInputError(f"n, identities and dim must be >= 1, got {n}, {identities}, {dim}")
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((identities, dim))).astype(np.float32)
    p = 1.0 / np.arange(1, identities + 1) ** zipf
    labels = rng.choice(identities, size=n, p=p / p.sum()).astype(np.int64)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        lab = labels[s : s + chunk]
        q = rng.uniform(0.5, 1.0, size=(lab.size, 1)).astype(np.float32)
        noise = rng.standard_normal((lab.size, dim), dtype=np.float32) * (sigma / math.sqrt(dim))
        out[s : s + chunk] = _unit(centres[lab] + noise / q)
    return out, labels
