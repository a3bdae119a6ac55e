"""The README's tables, reproducible with ``unidg table digits`` and ``unidg table synthetic``.

- digits two-view: scikit-learn's 1,797 digits split into top and bottom halves (32-d each, the
  two "modalities"; both halves = the whole image), each view mean-centred (raw pixels are all
  non-negative, so raw cosines are all high); Fp / Fb / NMI of every method;
- synthetic videos over seeds: per-modality and fused Fp / Fb / WCP and the mean timeline IoU of
  the main cast, for UniDG-style clustering, its ablations (fixed kNN instead of dynamic
  neighbours; no progressive association = one clustering of all tracks) and the baselines
  (their per-modality clusters go through the same association). k-means and FINCH get the true
  number of characters in each modality (an oracle the graph methods do not get).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.bench import env_header, mean_std
from unidg.associate import AssociationResult, associate
from unidg.baselines import run_method
from unidg.config import MODALITIES, AssociationConfig, ClusterConfig
from unidg.knn import knn, normalize
from unidg.metrics import merge_intervals, score
from unidg.neighbours import select_neighbours
from unidg.pipeline import cluster_modalities, evaluate_video
from unidg.plots import degree_png, timeline_png
from unidg.synth import SynthConfig, simulate

__all__ = ["digits_table", "digits_views", "face_degrees", "synthetic_table"]


def digits_views() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({"top", "bottom", "both"}: centred features, labels)`` of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    views = {"top": x[:, :32], "bottom": x[:, 32:], "both": x}
    return {k: (v - v.mean(0)).astype(np.float32) for k, v in views.items()}, y.astype(np.int64)


def _methods(cfg: ClusterConfig) -> list[tuple[str, str, ClusterConfig, bool]]:
    """(row name, method, config, gets the true count)."""
    return [
        ("UniDG-style (mutual, peaks, 3 levels)", "unidg", cfg, False),
        ("UniDG-style, rank-growth", "unidg", replace(cfg, neighbours="rank-growth"), False),
        ("UniDG-style, reciprocal", "unidg", replace(cfg, neighbours="reciprocal"), False),
        ("UniDG-style, threshold + union-find", "unidg", replace(cfg, decode="threshold"), False),
        ("ablation: fixed kNN", "unidg", replace(cfg, neighbours="fixed"), False),
        ("kNN threshold + components", "knn-threshold", replace(cfg, levels=1), False),
        ("FINCH (true count)", "finch", cfg, True),
        ("k-means (true count)", "kmeans", cfg, True),
    ]


def digits_table(seed: int = 0, config: ClusterConfig | None = None) -> dict[str, Any]:
    """Fp / Fb / NMI of every method on each digits view."""
    cfg = replace(config or ClusterConfig(), seed=seed)
    views, y = digits_views()
    rows = []
    swept = ("UniDG-style, threshold + union-find at 0.8 (swept on these data)", "unidg",
             replace(cfg, threshold=0.8, decode="threshold"), False)  # fmt: skip
    for name, method, mcfg, oracle in [*_methods(cfg), swept]:
        row: dict[str, Any] = {"method": name}
        for view, x in views.items():
            labels = run_method(method, x, mcfg, n_clusters=10 if oracle else None)
            s = score(y, labels)
            row[view] = {"pairwise_f": s.pairwise_f, "bcubed_f": s.bcubed_f, "nmi": s.nmi, "clusters": s.clusters}
        rows.append(row)
    lines = ["| method | " + " | ".join(f"{v} Fp / Fb / NMI (clusters)" for v in views) + " |",
             "|---|" + "---|" * len(views)]  # fmt: skip
    for r in rows:
        cells = [f"{r[v]['pairwise_f']:.3f} / {r[v]['bcubed_f']:.3f} / {r[v]['nmi']:.3f} ({r[v]['clusters']})" for v in views]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines.append("| Infomap | owed: the infomap package is not installed here |" + " |" * (len(views) - 1))
    return {"table": "digits", "rows": rows, "markdown": "\n".join(lines), "config": cfg.__dict__,
            "env": env_header(("numpy", "scikit-learn", "faiss-cpu"))}  # fmt: skip


def _joint(video: Any, cfg: ClusterConfig) -> AssociationResult:
    """No progressive association: one clustering of all tracks; timelines from its visual tracks."""
    labels = run_method("unidg", video.features, cfg)
    spans: dict[int, list[tuple[float, float]]] = {}
    for t, lab in zip(video.tracks, labels, strict=True):
        if t.modality != "voice":
            spans.setdefault(int(lab), []).append((t.start, t.end))
    return AssociationResult(labels, {k: merge_intervals(v) for k, v in spans.items()}, [], {})


def synthetic_table(seeds: list[int], timeline_path: Path | None = None, config: ClusterConfig | None = None,
                    noise: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """Per-modality and fused scores over ``seeds`` synthetic videos, mean and std per cell."""
    cfg = config or ClusterConfig()
    per_row: dict[str, list[dict[str, float]]] = {}
    degrees: dict[str, dict[int, int]] = {}
    for seed in seeds:
        video = simulate(SynthConfig(sigma=[noise * v for v in SynthConfig().sigma]), seed=seed)
        if seed == seeds[0]:
            degrees = face_degrees(video, cfg)
        counts = {m: len(set(video.labels(m).tolist())) for m in MODALITIES}
        rows = [*_methods(replace(cfg, seed=seed)), ("ablation: no progressive association", "joint", cfg, False)]
        for name, method, mcfg, oracle in rows:
            if method == "joint":
                fused = _joint(video, mcfg)
                res = evaluate_video(video.tracks, None, fused, video.timelines, video.main_cast)
            else:
                labels, _ = cluster_modalities(video.tracks, video.features, method, mcfg, counts if oracle else None)
                fused = associate(video.tracks, labels, AssociationConfig())
                res = evaluate_video(video.tracks, labels, fused, video.timelines, video.main_cast)
                if seed == seeds[0] and name.startswith("UniDG-style (") and timeline_path is not None:  # the default
                    match = {int(p): t for p, t in res["match"].items()}
                    timeline_png(timeline_path, fused.timelines, video.duration, video.timelines, match,
                                 title=f"synthetic video seed {seed}: UniDG-style characters (blue) over ground truth (grey)")  # fmt: skip
            cell = {"timeline_iou": res["timeline_iou_main_mean"]}
            for part in (*MODALITIES, "fused"):
                if part in res:
                    for metric in ("pairwise_f", "bcubed_f", "wcp"):
                        cell[f"{part}.{metric}"] = res[part][metric]
            per_row.setdefault(name, []).append(cell)
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for name, cells in per_row.items():
        summary[name] = {key: mean_std([c[key] for c in cells]) for key in cells[0]}
    lines = ["| method | face Fp / Fb | body Fp / Fb | voice Fp / Fb | fused Fp / Fb / WCP | timeline IoU |",
             "|---|---|---|---|---|---|"]  # fmt: skip

    def ms(s: dict[str, tuple[float, float]], key: str) -> str:
        return f"{s[key][0]:.3f}±{s[key][1]:.3f}" if key in s else "-"

    for name, s in summary.items():
        mods = [f"{ms(s, f'{m}.pairwise_f')} / {ms(s, f'{m}.bcubed_f')}" for m in MODALITIES]
        fused_cell = f"{ms(s, 'fused.pairwise_f')} / {ms(s, 'fused.bcubed_f')} / {ms(s, 'fused.wcp')}"
        lines.append(f"| {name} | " + " | ".join(mods) + f" | {fused_cell} | {ms(s, 'timeline_iou')} |")
    if timeline_path is not None and degrees:
        degree_png(Path(timeline_path).with_name("degree.png"), degrees, f"face tracks, seed {seeds[0]}: kept neighbours per node (k={cfg.k})")
    return {"table": "synthetic", "seeds": seeds, "noise": noise, "rows": {k: {m: list(v) for m, v in s.items()} for k, s in summary.items()},
            "markdown": "\n".join(lines), "degree_histograms": degrees, "config": cfg.__dict__,
            "env": env_header(("numpy", "scikit-learn", "faiss-cpu"))}  # fmt: skip


def face_degrees(video: Any, cfg: ClusterConfig) -> dict[str, dict[int, int]]:
    """Degree histograms of the face graph under every neighbour rule (for the degree plot)."""
    idx = video.indices("face")
    x = normalize(video.features[idx])
    sims, nbr = knn(x, cfg)
    out = {}
    for rule in ("fixed", "mutual", "rank-growth", "reciprocal"):
        out[rule] = select_neighbours(x, sims, nbr, rule, cfg.slack, cfg.expand_overlap, cfg.cycle).degree_histogram()
    return out
