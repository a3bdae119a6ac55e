"""The README's tables, reproducible with ``unidg table digits`` and ``unidg table synthetic``.

- digits two-view: scikit-learn's 1,797 digits split into top and bottom halves (32-d each, the
  two "modalities"; both halves = the whole image), each view mean-centred (raw pixels are all
  non-negative, so raw cosines are all high); Fp / Fb / NMI of every method;
- network features: the same clustering and association on a trained :class:`~unidg.model.UnifiedNet`'s
  track features against the generator's embedding-only ones;
- synthetic videos over seeds: per-modality and fused Fp / Fb / WCP and the mean timeline IoU of
  the main cast, for UniDG-style clustering, its ablations (fixed kNN instead of dynamic
  neighbours; no progressive association = one clustering of all tracks) and the baselines
  (their per-modality clusters go through the same association). k-means and FINCH get the true
  number of characters in each modality (an oracle the graph methods do not get).

Learned edges (:mod:`unidg.edges`) never see the evaluated data: on the synthetic videos the
classifier is trained on seeds ``edge_seeds`` (default 100-101) and its probability threshold is
picked from :data:`LEARNED_THRESHOLDS` by fused BCubed F on ``val_seed`` (102); on digits it is
trained on the even-index samples, its threshold picked on them, and scored on the odd-index ones
(next to the default config on the same odd half).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.bench import env_header, mean_std
from slimkit.errors import BadInputError
from unidg.associate import AssociationResult, associate
from unidg.baselines import run_method
from unidg.config import MODALITIES, AssociationConfig, ClusterConfig
from unidg.edges import EdgeClassifier, EdgeConfig, edge_auc, edge_training_set, fit_edges, save_edge_model
from unidg.graph import cluster
from unidg.knn import knn, normalize
from unidg.metrics import merge_intervals, score
from unidg.neighbours import select_neighbours
from unidg.pipeline import cluster_modalities, evaluate_video, joint_labels
from unidg.plots import degree_png, timeline_png
from unidg.synth import SynthConfig, simulate
from unidg.training import embed_tracks, load_net

__all__ = ["LEARNED_THRESHOLDS", "digits_table", "digits_views", "face_degrees", "network_table", "synthetic_table"]

LEARNED_THRESHOLDS = (0.5, 0.7, 0.9, 0.97)
"""Probability thresholds tried for learned edges (on held-out training-side data only)."""


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
        ("Infomap (kNN graph, cosine >= threshold)", "infomap", cfg, False),
    ]


def digits_table(seed: int = 0, config: ClusterConfig | None = None, edge_dir: Path | None = None) -> dict[str, Any]:
    """Fp / Fb / NMI of every method on each digits view, then the learned-edge protocol on the odd half."""
    cfg = replace(config or ClusterConfig(), seed=seed)
    views, y = digits_views()
    rows = []
    swept = ("UniDG-style, threshold + union-find at 0.8 (swept on these data)", "unidg",
             replace(cfg, threshold=0.8, decode="threshold"), False)  # fmt: skip
    for name, method, mcfg, oracle in [*_methods(cfg), swept]:
        row: dict[str, Any] = {"method": name}
        for view, x in views.items():
            labels = run_method(method, x, mcfg, n_clusters=10 if oracle else None)
            row[view] = _cell(score(y, labels))
        rows.append(row)
    even, odd = np.arange(0, y.size, 2), np.arange(1, y.size, 2)
    base: dict[str, Any] = {"method": "UniDG-style (mutual, peaks, 3 levels), odd half"}
    learned: dict[str, Any] = {"method": "UniDG-style, learned edges (trained on the even half), odd half"}
    edges: dict[str, Any] = {}
    for view, x in views.items():
        model, stats = fit_edges([(x[even], y[even])], EdgeConfig(k=cfg.k, seed=seed))
        sweep = {t: score(y[even], cluster(x[even], _learned(cfg, t), edge_model=model).labels).bcubed_f
                 for t in LEARNED_THRESHOLDS}  # fmt: skip
        best = max(LEARNED_THRESHOLDS, key=lambda t: (sweep[t], -t))
        base[view] = _cell(score(y[odd], cluster(x[odd], cfg).labels))
        learned[view] = _cell(score(y[odd], cluster(x[odd], _learned(cfg, best), edge_model=model).labels))
        feats, target = edge_training_set(x[odd], y[odd], cfg.k)
        edges[view] = {**stats, "threshold": best, "even_half_bcubed_f_by_threshold": sweep,
                       "odd_half_auc": edge_auc(model.predict(feats), target), "odd_half_cosine_auc": edge_auc(feats[:, 0], target)}  # fmt: skip
        if edge_dir is not None:
            save_edge_model(edge_dir / view, model, {"trained_on": f"digits {view}, even-index samples", "threshold": best})
    rows += [base, learned]
    lines = ["| method | " + " | ".join(f"{v} Fp / Fb / NMI (clusters)" for v in views) + " |",
             "|---|" + "---|" * len(views)]  # fmt: skip
    for r in rows:
        cells = [f"{r[v]['pairwise_f']:.3f} / {r[v]['bcubed_f']:.3f} / {r[v]['nmi']:.3f} ({r[v]['clusters']})" for v in views]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return {"table": "digits", "rows": rows, "markdown": "\n".join(lines), "config": cfg.__dict__, "edge_classifier": edges,
            "env": env_header(("numpy", "scikit-learn", "faiss-cpu", "infomap"))}  # fmt: skip


def _cell(s: Any) -> dict[str, Any]:
    return {"pairwise_f": s.pairwise_f, "bcubed_f": s.bcubed_f, "nmi": s.nmi, "clusters": s.clusters}


def _learned(cfg: ClusterConfig, threshold: float) -> ClusterConfig:
    """``cfg`` with learned edges cut at ``threshold`` (the classifier is passed in memory)."""
    return replace(cfg, edge_score="learned", threshold=threshold)


def _synth(noise: float) -> SynthConfig:
    return SynthConfig(sigma=[noise * v for v in SynthConfig().sigma])


def _fused_f(video: Any, cfg: ClusterConfig, model: EdgeClassifier) -> float:
    labels, _ = cluster_modalities(video.tracks, video.features, "unidg", cfg, edge_model=model)
    return float(score(video.labels(), associate(video.tracks, labels, features=video.features).person).bcubed_f)


def train_video_edges(seeds: list[int], val_seed: int, noise: float, cfg: ClusterConfig) -> tuple[EdgeClassifier, dict[str, Any]]:
    """A classifier trained on synthetic ``seeds`` (one group per modality and video) and its threshold,
    picked by fused BCubed F on ``val_seed`` (ties to the lower threshold)."""
    groups = []
    for seed in seeds:
        video = simulate(_synth(noise), seed=seed)
        groups += [(video.features[video.indices(m)], video.labels(m)) for m in MODALITIES]
    model, stats = fit_edges(groups, EdgeConfig(k=cfg.k, seed=cfg.seed))
    val = simulate(_synth(noise), seed=val_seed)
    sweep = {t: _fused_f(val, _learned(cfg, t), model) for t in LEARNED_THRESHOLDS}
    best = max(LEARNED_THRESHOLDS, key=lambda t: (sweep[t], -t))
    return model, {**stats, "train_seeds": seeds, "val_seed": val_seed, "threshold": best,
                   "val_fused_bcubed_f_by_threshold": sweep}  # fmt: skip


def _joint(video: Any, cfg: ClusterConfig) -> AssociationResult:
    """No progressive association: one clustering of all tracks; timelines from its visual tracks."""
    labels = joint_labels(video.features, "unidg", cfg)
    spans: dict[int, list[tuple[float, float]]] = {}
    for t, lab in zip(video.tracks, labels, strict=True):
        if t.modality != "voice":
            spans.setdefault(int(lab), []).append((t.start, t.end))
    return AssociationResult(labels, {k: merge_intervals(v) for k, v in spans.items()}, [], {})


def synthetic_table(seeds: list[int], timeline_path: Path | None = None, config: ClusterConfig | None = None,
                    noise: float = 1.0, edge_seeds: list[int] | None = None, val_seed: int = 102,
                    edge_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Per-modality and fused scores over ``seeds`` synthetic videos, mean and std per cell; the
    learned-edge row's classifier comes from ``edge_seeds`` / ``val_seed`` (saved to ``edge_dir``)."""
    cfg = config or ClusterConfig()
    train_seeds = [100, 101] if edge_seeds is None else edge_seeds
    if {*train_seeds, val_seed} & set(seeds):
        raise BadInputError(f"edge training seeds {train_seeds} and validation seed {val_seed} must not be table seeds {seeds}")
    model, edge_info = train_video_edges(train_seeds, val_seed, noise, cfg)
    if edge_dir is not None:
        save_edge_model(edge_dir, model, {"trained_on": f"synthetic seeds {train_seeds}, noise {noise}", "threshold": edge_info["threshold"]})
    span = f"{min(train_seeds)}-{max(train_seeds)}" if len(train_seeds) > 1 else str(train_seeds[0])
    learned_name = f"UniDG-style, learned edges (trained on seeds {span}, threshold {edge_info['threshold']:g} from seed {val_seed})"
    per_row: dict[str, list[dict[str, float]]] = {}
    degrees: dict[str, dict[int, int]] = {}
    aucs: dict[str, list[tuple[float, float]]] = {m: [] for m in MODALITIES}
    for seed in seeds:
        video = simulate(_synth(noise), seed=seed)
        if seed == seeds[0]:
            degrees = face_degrees(video, cfg)
        for m in MODALITIES:  # how well each score separates same / different identity on the evaluated edges
            feats, target = edge_training_set(video.features[video.indices(m)], video.labels(m), cfg.k)
            aucs[m].append((edge_auc(model.predict(feats), target), edge_auc(feats[:, 0], target)))
        counts = {m: len(set(video.labels(m).tolist())) for m in MODALITIES}
        scfg = replace(cfg, seed=seed)
        methods = _methods(scfg)
        methods.insert(4, (learned_name, "unidg", _learned(scfg, edge_info["threshold"]), False))
        rows = [*methods, ("ablation: no progressive association", "joint", cfg, False)]
        for name, method, mcfg, oracle in rows:
            if method == "joint":
                fused = _joint(video, mcfg)
                res = evaluate_video(video.tracks, None, fused, video.timelines, video.main_cast)
            else:
                labels, _ = cluster_modalities(video.tracks, video.features, method, mcfg, counts if oracle else None,
                                               edge_model=model)  # fmt: skip
                fused = associate(video.tracks, labels, AssociationConfig(), video.features)
                res = evaluate_video(video.tracks, labels, fused, video.timelines, video.main_cast)
                if seed == seeds[0] and name.startswith("UniDG-style (") and timeline_path is not None:  # the default
                    match = {int(p): t for p, t in res["match"].items()}
                    timeline_png(timeline_path, fused.timelines, video.duration, video.timelines, match,
                                 title=f"synthetic video seed {seed}: UniDG-style characters (blue) over ground truth (grey)")  # fmt: skip
            per_row.setdefault(name, []).append(_cells(res))
    summary, markdown = _summarise(per_row)
    if timeline_path is not None and degrees:
        degree_png(Path(timeline_path).with_name("degree.png"), degrees, f"face tracks, seed {seeds[0]}: kept neighbours per node (k={cfg.k})")
    return {"table": "synthetic", "seeds": seeds, "noise": noise, "rows": summary,
            "markdown": markdown, "degree_histograms": degrees, "config": cfg.__dict__,
            "edge_classifier": {**edge_info, "eval_auc_learned_vs_cosine": {m: [mean_std([a for a, _ in v]), mean_std([c for _, c in v])]
                                                                           for m, v in aucs.items()}},
            "env": env_header(("numpy", "scikit-learn", "faiss-cpu", "infomap"))}  # fmt: skip


def _cells(res: dict[str, Any]) -> dict[str, float]:
    """One video's row: per-part Fp / Fb / WCP and the main cast's mean timeline IoU."""
    cell = {"timeline_iou": res["timeline_iou_main_mean"]}
    for part in (*MODALITIES, "fused"):
        if part in res:
            for metric in ("pairwise_f", "bcubed_f", "wcp"):
                cell[f"{part}.{metric}"] = res[part][metric]
    return cell


def _summarise(per_row: dict[str, list[dict[str, float]]]) -> tuple[dict[str, dict[str, list[float]]], str]:
    """Mean and std over videos of every cell, and the markdown table of them."""
    summary = {name: {key: list(mean_std([c[key] for c in cells])) for key in cells[0]} for name, cells in per_row.items()}
    lines = ["| method | face Fp / Fb | body Fp / Fb | voice Fp / Fb | fused Fp / Fb / WCP | timeline IoU |",
             "|---|---|---|---|---|---|"]  # fmt: skip

    def ms(s: dict[str, list[float]], key: str) -> str:
        return f"{s[key][0]:.3f}±{s[key][1]:.3f}" if key in s else "-"

    for name, s in summary.items():
        mods = [f"{ms(s, f'{m}.pairwise_f')} / {ms(s, f'{m}.bcubed_f')}" for m in MODALITIES]
        fused_cell = f"{ms(s, 'fused.pairwise_f')} / {ms(s, 'fused.bcubed_f')} / {ms(s, 'fused.wcp')}"
        lines.append(f"| {name} | " + " | ".join(mods) + f" | {fused_cell} | {ms(s, 'timeline_iou')} |")
    return summary, "\n".join(lines)


def network_table(seeds: list[int], models: list[Path], config: ClusterConfig | None = None, frames: int = 2,
                  synth: SynthConfig | None = None) -> dict[str, Any]:  # fmt: skip
    """The same clustering and association on two kinds of track features of the ``seeds`` videos:
    the generator's embedding-only features and each trained :class:`UnifiedNet`'s (``models``:
    folders written by ``unidg train``), which embeds ``frames`` rendered samples per track."""
    cfg = config or ClusterConfig()
    nets = []
    for folder in models:
        net, meta = load_net(folder)
        first, n_ids = int(meta.get("first_identity", 0)), int(meta.get("identities", 0))
        what = f"trained on characters {first}-{first + n_ids - 1}, {meta.get('steps')} steps" if n_ids else f"{meta.get('steps')} steps"
        nets.append((f"UnifiedNet features ({what}; {folder})", net, meta))
    per_row: dict[str, list[dict[str, float]]] = {}
    embed_s: list[float] = []
    for seed in seeds:
        video = simulate(synth or SynthConfig(), seed=seed)
        sources = [("generator embedding-only features (noise 1)", video.features)]
        for name, net, _ in nets:
            t0 = time.perf_counter()
            sources.append((name, embed_tracks(net, video.tracks, frames=frames, seed=seed, outfit_every=video.config.outfit_every)))
            embed_s.append(time.perf_counter() - t0)
        for name, feats in sources:
            labels, _ = cluster_modalities(video.tracks, feats, "unidg", replace(cfg, seed=seed))
            fused = associate(video.tracks, labels, AssociationConfig(), feats)
            per_row.setdefault(name, []).append(_cells(evaluate_video(video.tracks, labels, fused, video.timelines, video.main_cast)))
    summary, markdown = _summarise(per_row)
    return {"table": "network", "seeds": seeds, "rows": summary, "markdown": markdown, "config": cfg.__dict__,
            "models": [{"folder": str(f), **{k: v for k, v in m.items() if k != "config"}, "net": m.get("config")}
                       for f, (_, _, m) in zip(models, nets, strict=True)],
            "frames_per_track": frames, "embed_seconds_mean": float(np.mean(embed_s)) if embed_s else 0.0,
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
