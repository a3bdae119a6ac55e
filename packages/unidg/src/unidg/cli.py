"""The ``unidg`` console script: simulate, embed, cluster, associate, eval, timeline, train, train-edges, bench, table, demo.

Every subcommand validates its arguments, inputs and output paths before it writes anything; a
user error is one stderr line and exit code 2 (``slimkit.cli.run_main``). ``train`` runs under
``accelerate launch -m unidg.cli train`` like the other packages' training CLIs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.cli import add_common, at_least, dispatching_main, make_parser, positive, report
from slimkit.errors import BadInputError
from slimkit.io import (
    atomic_write,
    config_to_dict,
    load_json,
    save_json,
    save_model,
    save_table,
)
from slimkit.paths import check_input_file, check_output_dir, check_output_file, claim_output_dir
from slimkit.train import process_state
from unidg import __version__
from unidg.associate import AssociationResult, associate
from unidg.baselines import METHODS
from unidg.bench import scale_run
from unidg.config import DECODERS, EDGE_SCORES, MODALITIES, NEIGHBOUR_RULES, AssociationConfig, ClusterConfig
from unidg.edges import EdgeConfig, fit_edges, save_edge_model
from unidg.graph import resolve_edge_model
from unidg.model import NetConfig, UnifiedNet
from unidg.pipeline import cluster_modalities, evaluate_video, modality_index
from unidg.plots import degree_png, timeline_png
from unidg.quickstart import run as run_demo
from unidg.render import body_crop, face_crop, voice_patch
from unidg.synth import SynthConfig, simulate
from unidg.tables import digits_table, network_table, synthetic_table
from unidg.tracks import Track, load_video, save_video
from unidg.training import CharacterSamples, embed_tracks, fit, load_net

__all__ = ["build_parser", "main"]

PROG = "unidg"
KIND_TRAIN = "unidg train"
KIND_SIM = "unidg simulate"
KIND_TABLE = "unidg table"
KIND_DEMO = "unidg demo"
KIND_EDGES = "unidg train-edges"


# --------------------------------------------------------------------------- helpers


def _cluster_config(args: argparse.Namespace) -> ClusterConfig:
    if args.edge_score == "learned" and not args.edge_model:
        raise BadInputError("--edge-score learned needs --edge-model FOLDER (written by 'unidg train-edges')")
    if args.edge_model and args.edge_score != "learned":
        raise BadInputError("--edge-model is only used with --edge-score learned")
    return ClusterConfig(k=args.k, neighbours=args.neighbours, threshold=args.threshold, decode=args.decode,
                         levels=args.levels, slack=args.slack, backend=args.backend, seed=args.seed,
                         edge_score=args.edge_score, edge_model=args.edge_model or "")  # fmt: skip


def _truth(tracks: list[Track]) -> bool:
    return all(t.identity >= 0 for t in tracks)


def _load_labels(path: str, tracks: list[Track]) -> dict[str, np.ndarray]:
    """``clusters.json`` written by ``cluster``, checked against the video's tracks."""
    data = load_json(check_input_file(path, "clusters file", (".json",)))
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise BadInputError(f"{path} is not a clusters file written by 'unidg cluster' (no \"labels\")")
    out: dict[str, np.ndarray] = {}
    for m, lab in data["labels"].items():
        if m not in MODALITIES:
            raise BadInputError(f"{path}: unknown modality {m!r}")
        n = int(sum(t.modality == m for t in tracks))
        if not isinstance(lab, list) or len(lab) != n or not all(isinstance(v, int) for v in lab):
            raise BadInputError(f"{path}: {m} labels do not match the video's {n} {m} tracks")
        out[m] = np.asarray(lab, np.int64)
    return out


def _load_association(path: str, tracks: list[Track]) -> AssociationResult:
    data = load_json(check_input_file(path, "association file", (".json",)))
    if not isinstance(data, dict) or "person" not in data or "timelines" not in data:
        raise BadInputError(f"{path} is not an association file written by 'unidg associate'")
    try:
        person = np.asarray(data["person"], np.int64)
        timelines = {int(k): [(float(s), float(e)) for s, e in v] for k, v in data["timelines"].items()}
        unassigned, stats = list(data.get("unassigned_voice", [])), dict(data.get("stats", {}))
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{path} is not an association file written by 'unidg associate' ({exc})") from None
    if person.shape != (len(tracks),):
        raise BadInputError(f"{path} labels {person.size} tracks, the video has {len(tracks)}")
    return AssociationResult(person, timelines, unassigned, stats)


# --------------------------------------------------------------------------- simulate / embed


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    at_least("render", args.render, 0)
    cfg = SynthConfig(identities=args.identities, extras=args.extras, duration=args.duration, dim=args.dim,
                      sigma=[args.noise * s for s in SynthConfig().sigma])  # fmt: skip
    out = check_output_dir(args.output, KIND_SIM)
    video = simulate(cfg, seed=args.seed)
    claim_output_dir(out, KIND_SIM)
    save_video(out, video.tracks, video.features, video.duration)
    save_json(out / "truth.json", {"timelines": {str(k): v for k, v in video.timelines.items()},
                                   "main_cast": video.main_cast, "offscreen_voice": video.offscreen_voice,
                                   "config": config_to_dict(cfg), "seed": args.seed})  # fmt: skip
    result = {"output": str(out), **video.summary()}
    if args.render:
        arrays: dict[str, np.ndarray] = {}
        for m, modality in enumerate(MODALITIES):
            idx = modality_index(video.tracks, modality)[: args.render]
            samples = []
            for i in idx:
                t, rng = video.tracks[int(i)], np.random.default_rng([args.seed, int(i)])
                samples.append(face_crop(t.identity, rng) if m == 0 else body_crop(t.identity, t.scene // cfg.outfit_every, rng)
                               if m == 1 else voice_patch(t.identity, rng))  # fmt: skip
            arrays[modality] = np.stack(samples) if samples else np.zeros((0,), np.float32)
            arrays[f"{modality}_track"] = idx
        with atomic_write(out / "samples.npz", "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        result["samples"] = str(out / "samples.npz")
    return result


def cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    at_least("frames", args.frames, 1)
    target = check_output_file(args.output, (".npy",))
    tracks, _, _ = load_video(args.video)
    net = _load_net(args.model)
    if not _truth(tracks):
        raise BadInputError("embed renders synthetic tracks and needs their identities; embed real tracks with your own model")
    feats = embed_tracks(net, tracks, frames=args.frames, seed=args.seed, outfit_every=_outfit_every(args.video))
    with atomic_write(target, "wb") as fh:
        np.save(fh, feats)
    return {"output": str(target), "tracks": len(tracks), "dim": int(feats.shape[1])}


def _outfit_every(video: str) -> int:
    """The generator's ``outfit_every`` from the folder's ``truth.json`` (``simulate`` writes it), else its default."""
    truth = Path(video) / "truth.json"
    config = load_json(truth, "truth file").get("config", {}) if truth.is_file() else {}
    value = config.get("outfit_every", SynthConfig().outfit_every) if isinstance(config, dict) else SynthConfig().outfit_every
    return value if isinstance(value, int) and value >= 1 else SynthConfig().outfit_every


def _load_net(folder: str) -> UnifiedNet:
    return load_net(folder)[0]


# --------------------------------------------------------------------------- cluster / associate / eval / timeline


def cmd_cluster(args: argparse.Namespace) -> dict[str, Any]:
    at_least("k", args.k, 1)
    at_least("levels", args.levels, 1)
    target = check_output_file(args.output, (".json",))
    png = check_output_file(args.degree_png, (".png",)) if args.degree_png else None
    tracks, feats, _ = load_video(args.video, args.features)
    cfg = _cluster_config(args)
    edge_model = resolve_edge_model(cfg) if args.method == "unidg" else None  # a bad folder fails before any write
    n_clusters = None
    if args.method in ("kmeans",) or args.clusters is not None:
        if args.clusters is None:
            raise BadInputError("--method kmeans needs --clusters N (per modality)")
        at_least("clusters", args.clusters, 1)
        n_clusters = dict.fromkeys(MODALITIES, args.clusters)
    labels, info = cluster_modalities(tracks, feats, args.method, cfg, n_clusters, edge_model=edge_model)
    result: dict[str, Any] = {"method": args.method, "config": config_to_dict(cfg), "video": str(args.video),
                              "clusters": {m: int(v.max()) + 1 for m, v in labels.items()}, "graph": info,
                              "labels": {m: v.tolist() for m, v in labels.items()}}  # fmt: skip
    save_json(target, result)
    if png is not None and args.method == "unidg":
        degree_png(png, {m: {int(k): v for k, v in i["degree_histogram"].items()} for m, i in info.items()})
    return {k: v for k, v in result.items() if k != "labels"} | {"output": str(target)}


def cmd_associate(args: argparse.Namespace) -> dict[str, Any]:
    target = check_output_file(args.output, (".json",))
    tracks, feats, _ = load_video(args.video, args.features)
    labels = _load_labels(args.clusters, tracks)
    cfg = AssociationConfig(min_links=args.min_links, containment=args.containment, voice_share=args.voice_share,
                            cannot_link=not args.no_cannot_link, cannot_link_overlap=args.cannot_link_overlap,
                            use_body=not args.no_body, use_voice=not args.no_voice)  # fmt: skip
    res = associate(tracks, labels, cfg, feats)
    save_json(target, {"person": res.person.tolist(), "timelines": {str(k): v for k, v in res.timelines.items()},
                       "unassigned_voice": res.unassigned_voice, "stats": res.stats,
                       "config": config_to_dict(cfg)})  # fmt: skip
    return {"output": str(target), "characters": len(res.timelines), "unassigned_voice": len(res.unassigned_voice), **res.stats}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    tracks, feats, _ = load_video(args.video)
    if not _truth(tracks):
        raise BadInputError(f"{args.video}: every track needs its ground-truth \"identity\" to be scored")
    labels = _load_labels(args.clusters, tracks) if args.clusters else None
    if args.association is None and labels is None:
        raise BadInputError("give --clusters and/or --association to score")
    fused = _load_association(args.association, tracks) if args.association else None
    if fused is None:
        assert labels is not None
        fused = associate(tracks, labels, features=feats)
    return {"video": str(args.video), **evaluate_video(tracks, labels, fused)}


def _eval_human(r: dict[str, Any]) -> str:
    lines = [f"{'':<7} {'Fp':>6} {'Fb':>6} {'NMI':>6} {'WCP':>6} {'clusters':>8}"]
    for m in (*MODALITIES, "fused"):
        if m in r:
            s = r[m]
            lines.append(f"{m:<7} {s['pairwise_f']:>6.3f} {s['bcubed_f']:>6.3f} {s['nmi']:>6.3f} {s['wcp']:>6.3f} {s['clusters']:>8}")
    if "timeline_iou_main_mean" in r:
        lines.append(f"timeline IoU (mean over characters): {r['timeline_iou_main_mean']:.3f}")
    return "\n".join(lines)


def cmd_timeline(args: argparse.Namespace) -> dict[str, Any]:
    target = check_output_file(args.output, (".png",))
    tracks, _, duration = load_video(args.video)
    fused = _load_association(args.association, tracks)
    truth: dict[int, list[tuple[float, float]]] | None = None
    match: dict[int, int] | None = None
    if _truth(tracks):
        scores = evaluate_video(tracks, None, fused)
        match = {int(p): int(t) for p, t in scores["match"].items()}
        truth = {}
        for t in tracks:
            if t.modality != "voice":
                truth.setdefault(t.identity, []).append((t.start, t.end))
    timeline_png(target, fused.timelines, duration, truth, match)
    return {"output": str(target), "characters": len(fused.timelines)}


# --------------------------------------------------------------------------- train / bench / table / demo


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("steps", "batch-size", "identities", "samples"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    at_least("identities", args.identities, 2)
    positive("lr", args.lr)
    out = check_output_dir(args.output, KIND_TRAIN)
    net_cfg = NetConfig(dim=args.dim, depth=args.depth)
    torch.manual_seed(args.seed)
    net = UnifiedNet(net_cfg)
    at_least("first-identity", args.first_identity, 0)
    data = CharacterSamples(args.identities, args.samples, seed=args.seed, first_identity=args.first_identity)
    state = process_state()
    state.wait_for_everyone()  # every process validated the arguments before the first write
    if state.is_main_process:
        claim_output_dir(out, KIND_TRAIN)
    state.wait_for_everyone()
    t0 = time.perf_counter()
    res = fit(net, data, out, args.steps, batch_size=args.batch_size, lr=args.lr, contrastive=args.contrastive,
              seed=args.seed, progress=not args.json, resume=args.resume, checkpoint_every=args.checkpoint_every)  # fmt: skip
    info = {"steps": res.steps, "final_loss": res.final_loss, "processes": state.num_processes,
            "identities": args.identities, "first_identity": args.first_identity, "samples": args.samples,
            "batch_size": args.batch_size, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if state.is_main_process:
        save_model(out / "model", net, net_cfg, info)
    return {"output": str(out), "model": str(out / "model"), **info}


def cmd_train_edges(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("k", "hidden", "epochs", "batch-size"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    positive("lr", args.lr)
    out = check_output_dir(args.output, KIND_EDGES)
    groups: list[tuple[np.ndarray, np.ndarray]] = []
    for folder in args.videos:
        tracks, feats, _ = load_video(folder)
        if not _truth(tracks):
            raise BadInputError(f"{folder}: every track needs its ground-truth \"identity\" to train the edge classifier")
        truth = np.array([t.identity for t in tracks], np.int64)
        for m in MODALITIES:
            idx = modality_index(tracks, m)
            if idx.size >= 2:
                groups.append((feats[idx], truth[idx]))
    cfg = EdgeConfig(k=args.k, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model, stats = fit_edges(groups, cfg)
    claim_output_dir(out, KIND_EDGES)
    save_edge_model(out, model, {"trained_on": [str(v) for v in args.videos], **stats})
    return {"output": str(out), **stats}


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    at_least("n", args.n, 2)
    at_least("identities", args.identities, 1)
    at_least("dim", args.dim, 1)
    target = check_output_file(args.output, (".json",)) if args.output else None
    cfg = ClusterConfig(k=args.k, ann=args.ann, threshold=args.threshold, neighbours=args.neighbours,
                        level_threshold=args.level_threshold, nprobe=args.nprobe, hnsw_m=args.hnsw_m, decode=args.decode,
                        ef_search=args.ef_search)  # fmt: skip
    result = scale_run(args.n, args.identities, args.dim, cfg, compare_exact=args.compare_exact, seed=args.seed)
    if target is not None:
        save_json(target, result)
    return result


def _bench_human(r: dict[str, Any]) -> str:
    a = r["approx"]
    line = (f"{r['n']:,} x {r['dim']}: {a['backend']} kNN {a['knn_s']} s, end to end {a['total_s']} s, "
            f"Fp {a['pairwise_f']:.3f} Fb {a['bcubed_f']:.3f}, peak RSS {r['peak_rss_mib']:.0f} MiB")  # fmt: skip
    if "exact" in r:
        line += f"; exact Fb {r['exact']['bcubed_f']:.3f} (gap {100 * r['bcubed_gap']:.2f} points)"
    return line


def cmd_table(args: argparse.Namespace) -> dict[str, Any]:
    out = check_output_dir(args.output, KIND_TABLE)
    positive("noise", args.noise)
    if args.which == "synthetic" and {*args.edge_seeds, args.val_seed} & set(args.seeds):
        raise BadInputError(f"--edge-seeds {args.edge_seeds} and --val-seed {args.val_seed} must not overlap --seeds {args.seeds}")
    if args.which == "network":
        if not args.model:
            raise BadInputError("table network needs --model RUN/model (one or more folders written by 'unidg train')")
        for folder in args.model:
            load_net(folder)  # a bad folder fails before anything is written
    claim_output_dir(out, KIND_TABLE)
    if args.which == "network":
        result = network_table(args.seeds, [Path(m) for m in args.model])
    elif args.which == "digits":
        result = digits_table(args.seed, edge_dir=out / "edges")
    else:
        result = synthetic_table(args.seeds, out / "timeline.png", noise=args.noise, edge_seeds=args.edge_seeds,
                                 val_seed=args.val_seed, edge_dir=out / "edges")  # fmt: skip
    save_table(out, result)
    return result


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output)
    claim_output_dir(out, KIND_DEMO)
    return run_demo(out, seed=args.seed)


def _demo_human(r: dict[str, Any]) -> str:
    return f"{r['what']}\n{r['figure']}\nfiles: {', '.join(r['files'])}"


# --------------------------------------------------------------------------- parser


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    d = ClusterConfig()
    p.add_argument("--k", type=int, default=d.k, help=f"kNN candidates per node (default {d.k})")
    p.add_argument("--neighbours", default=d.neighbours, choices=NEIGHBOUR_RULES, help="dynamic neighbour rule")
    p.add_argument("--threshold", type=float, default=d.threshold, help=f"edge score threshold (default {d.threshold})")
    p.add_argument("--decode", default=d.decode, choices=DECODERS)
    p.add_argument("--levels", type=int, default=d.levels, help=f"rounds on cluster means (default {d.levels})")
    p.add_argument("--slack", type=int, default=d.slack, help="rank-growth slack")
    p.add_argument("--backend", default=d.backend, choices=("auto", "torch", "faiss-flat", "faiss-ivf", "faiss-hnsw"))
    p.add_argument("--edge-score", default=d.edge_score, choices=EDGE_SCORES,
                   help="edge score: cosine, jaccard (Ada-NETS blend) or learned (needs --edge-model)")
    p.add_argument("--edge-model", default=None, help="edge classifier folder written by train-edges (--edge-score learned)")


def build_parser() -> argparse.ArgumentParser:
    """The ``unidg`` parser; every subcommand carries its handler as ``func``."""
    parser, sub = make_parser(PROG, "Temporal character grouping: who appears when, from face, body and voice tracks",
                              __version__)  # fmt: skip

    p = add_common(sub.add_parser("simulate", aliases=["generate"], help="write a synthetic video folder (tracks.json, features.npy, truth.json)"))
    p.add_argument("--identities", type=int, default=8, help="main cast (default 8)")
    p.add_argument("--extras", type=int, default=6, help="background characters (default 6)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--dim", type=int, default=128, help="feature dimension (default 128)")
    p.add_argument("--noise", type=float, default=1.0, help="scale of every modality's feature noise (default 1)")
    p.add_argument("--render", type=int, default=0, help="also write raw samples of the first N tracks per modality")
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=lambda a: report(cmd_simulate(a), a, lambda r: f"{r['tracks']} tracks written to {r['output']}"))

    p = add_common(sub.add_parser("embed", help="track features from a trained unified network (synthetic videos)"))
    p.add_argument("video", help="video folder written by simulate")
    p.add_argument("--model", required=True, help="model folder written by train (RUN/model)")
    p.add_argument("--frames", type=int, default=2, help="rendered frames pooled per track (default 2)")
    p.add_argument("--output", "-o", required=True, help=".npy file for the features")
    p.set_defaults(func=lambda a: report(cmd_embed(a), a, lambda r: f"{r['tracks']} track features -> {r['output']}"))

    p = add_common(sub.add_parser("cluster", help="cluster each modality's tracks"))
    p.add_argument("video", help="video folder (tracks.json + features.npy)")
    p.add_argument("--features", default=None, help="use this .npy instead of the folder's features.npy")
    p.add_argument("--method", default="unidg", choices=METHODS)
    p.add_argument("--clusters", type=int, default=None, help="clusters per modality (kmeans; finch optional)")
    _add_cluster_args(p)
    p.add_argument("--degree-png", default=None, help="also plot the degree distribution (unidg)")
    p.add_argument("--output", "-o", required=True, help="clusters .json")
    p.set_defaults(func=lambda a: report(cmd_cluster(a), a, lambda r: f"{r['method']}: clusters {r['clusters']} -> {r['output']}"))

    p = add_common(sub.add_parser("associate", help="fuse per-modality clusters into characters and timelines"))
    p.add_argument("video")
    p.add_argument("--clusters", required=True, help="clusters .json written by cluster")
    p.add_argument("--features", default=None, help="the .npy the clusters came from (default: the folder's features.npy)")
    p.add_argument("--min-links", type=int, default=AssociationConfig().min_links)
    p.add_argument("--containment", type=float, default=AssociationConfig().containment)
    p.add_argument("--voice-share", type=float, default=AssociationConfig().voice_share)
    p.add_argument("--no-body", action="store_true", help="skip the face-body step (ablation)")
    p.add_argument("--no-voice", action="store_true", help="skip the voice step (ablation)")
    p.add_argument("--no-cannot-link", action="store_true", help="never split or keep apart faces seen together (ablation)")
    p.add_argument("--cannot-link-overlap", type=float, default=AssociationConfig().cannot_link_overlap,
                   help="seconds two face tracks must overlap to count as seen together (a shared frame always counts)")
    p.add_argument("--output", "-o", required=True, help="association .json")
    p.set_defaults(func=lambda a: report(cmd_associate(a), a, lambda r: f"{r['characters']} characters -> {r['output']}"))

    p = add_common(sub.add_parser("eval", help="Fp / Fb / NMI / WCP per modality and fused, timeline IoU"))
    p.add_argument("video")
    p.add_argument("--clusters", default=None, help="clusters .json (per-modality scores)")
    p.add_argument("--association", default=None, help="association .json (fused scores; default: associate --clusters)")
    p.set_defaults(func=lambda a: report(cmd_eval(a), a, _eval_human))

    p = add_common(sub.add_parser("timeline", help="PNG: one row per character, predicted over ground truth"))
    p.add_argument("video")
    p.add_argument("--association", required=True)
    p.add_argument("--output", "-o", required=True, help=".png file")
    p.set_defaults(func=lambda a: report(cmd_timeline(a), a, lambda r: f"{r['characters']} rows -> {r['output']}"))

    p = add_common(sub.add_parser("train", help="train the unified network on rendered synthetic characters"))
    p.add_argument("--identities", type=int, default=14)
    p.add_argument("--first-identity", type=int, default=0,
                   help="render characters first..first+identities-1 (default 0: the synthetic videos' own ids 0..13)")
    p.add_argument("--samples", type=int, default=4096, help="training triples (default 4096)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--contrastive", type=float, default=1.0, help="weight of the cross-modal InfoNCE (default 1)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of this run")
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=lambda a: report(cmd_train(a), a, lambda r: f"{r['steps']} steps, loss {r['final_loss']:.3f} -> {r['model']}"))

    p = add_common(sub.add_parser("train-edges", help="train the learned edge classifier on labelled video folders"))
    p.add_argument("videos", nargs="+", help="video folders whose tracks carry their ground-truth identity")
    e = EdgeConfig()
    p.add_argument("--k", type=int, default=e.k, help=f"kNN list length (use the clustering's --k; default {e.k})")
    p.add_argument("--hidden", type=int, default=e.hidden)
    p.add_argument("--epochs", type=int, default=e.epochs)
    p.add_argument("--batch-size", type=int, default=e.batch_size)
    p.add_argument("--lr", type=float, default=e.lr)
    p.add_argument("--output", "-o", required=True, help="classifier folder (model.safetensors + config.json)")
    p.set_defaults(func=lambda a: report(cmd_train_edges(a), a, lambda r: f"{r['edges']} edges, train AUC {r['train_auc']:.3f} "
                                                                            f"(cosine {r['cosine_auc']:.3f}) -> {r['output']}"))

    p = add_common(sub.add_parser("bench", help="scale: N synthetic embeddings clustered end to end (time, peak memory)"))
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--identities", type=int, default=2000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--neighbours", default=ClusterConfig().neighbours, choices=NEIGHBOUR_RULES)
    p.add_argument("--threshold", type=float, default=ClusterConfig().threshold)
    p.add_argument("--level-threshold", type=float, default=ClusterConfig().level_threshold)
    p.add_argument("--decode", default=ClusterConfig().decode, choices=DECODERS)
    p.add_argument("--ann", default="ivf", choices=("ivf", "hnsw"))
    p.add_argument("--nprobe", type=int, default=ClusterConfig().nprobe, help="IVF lists probed per query")
    p.add_argument("--hnsw-m", type=int, default=ClusterConfig().hnsw_m, help="HNSW links per node")
    p.add_argument("--ef-search", type=int, default=ClusterConfig().ef_search, help="HNSW search breadth")
    p.add_argument("--compare-exact", action="store_true", help="also run exact faiss kNN and compare BCubed F")
    p.add_argument("--output", "-o", default=None, help="results .json")
    p.set_defaults(func=lambda a: report(cmd_bench(a), a, _bench_human))

    p = add_common(sub.add_parser("table", help="the README tables: digits two-view, synthetic videos over seeds, or trained-network features"))
    p.add_argument("which", choices=("digits", "synthetic", "network"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=1.0, help="synthetic: scale of the feature noise (default 1)")
    p.add_argument("--edge-seeds", type=int, nargs="+", default=[100, 101], help="synthetic: learned edges' training seeds")
    p.add_argument("--val-seed", type=int, default=102, help="synthetic: seed picking the learned edges' threshold")
    p.add_argument("--model", nargs="+", default=None, help="network: model folders written by train (RUN/model)")
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=lambda a: report(cmd_table(a), a, lambda r: str(r["markdown"])))

    p = add_common(sub.add_parser("demo", help="a synthetic video: cluster, associate, score, timeline PNG"))
    p.add_argument("--output", "-o", default="unidg-demo")
    p.set_defaults(func=lambda a: report(cmd_demo(a), a, _demo_human))
    return parser


main = dispatching_main(build_parser, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
