"""The ``kd3d`` console script: simulate, train, eval, flops, visualize, bench, table, demo.

Every subcommand validates its arguments, inputs and output paths before it writes anything; a user
error is one stderr line and exit code 2 (``slimkit.cli.run_main``). ``train`` runs under
``accelerate launch -m kd3d.cli train ...`` like the other packages' CLIs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from kd3d import __version__
from kd3d.api import TINY_GRID
from kd3d.bench import bench_all
from kd3d.config import KD_METHODS, PRESETS, DetectorConfig, check_student_fits, preset
from kd3d.data import KittiScenes, collate
from kd3d.detector import build_detector
from kd3d.experiments import CPU_BEV_LAYERS, CPU_ENCODER_LAYERS, CPU_GRID, cpu_sim, run_table
from kd3d.flops import count_flops, count_params
from kd3d.kitti import read_points
from kd3d.quickstart import run as run_demo
from kd3d.simulate import SimConfig, simulate_scene, tiny_sim_config, write_splits
from kd3d.targets import decode
from kd3d.training import FitSettings, evaluate, fit, load_detector, save_detector
from kd3d.visualize import bev_png, render_open3d
from slimkit.cli import add_common, at_least, dispatching_main, make_parser, positive, progress, report, resolve_device
from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, config_to_dict, save_json
from slimkit.paths import check_input_file, check_output_dir, claim_output_dir
from slimkit.train import process_state

__all__ = ["build_parser", "main"]

PROG = "kd3d"
KIND_TRAIN = "kd3d train"
KIND_DEMO = "kd3d demo"
KIND_TABLE = "kd3d table"
KIND_VISUALIZE = "kd3d visualize"
GRIDS = ("tiny", "cpu", "sim", "nuscenes")
DEPTHS = ("cpu", "paper")
NUSCENES_GRID: dict[str, Any] = {"point_range": [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], "voxel_size": [0.1, 0.1, 0.2],
                                 "max_voxels": 60000, "point_features": 5}  # fmt: skip
SIM_GRID: dict[str, Any] = {"point_range": [-25.6, -25.6, -3.0, 25.6, 25.6, 1.0], "voxel_size": [0.2, 0.2, 0.1]}


def _grid(name: str) -> dict[str, Any]:
    return {"tiny": TINY_GRID, "cpu": CPU_GRID, "sim": SIM_GRID, "nuscenes": NUSCENES_GRID}[name]


def _detector_config(name: str, grid: str, depth: str) -> DetectorConfig:
    extra: dict[str, Any] = dict(_grid(grid))
    if depth == "cpu":
        extra.update(encoder_layers=list(CPU_ENCODER_LAYERS), bev_layers=list(CPU_BEV_LAYERS))
    return preset(name, **extra)


# --------------------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    at_least("train", args.train, 1)
    at_least("val", args.val, 0)
    positive("area", args.area)
    check_output_dir(args.output, "kd3d simulate")
    base = {"tiny": tiny_sim_config(), "cpu": cpu_sim()}.get(args.grid, SimConfig())
    cfg = SimConfig(**{**base.__dict__, "area": args.area if args.area is not None else base.area, "beams": args.beams})
    return write_splits(args.output, args.train, args.val, args.seed, cfg, progress=None if args.json else progress)


def _simulate_human(r: dict[str, Any]) -> str:
    return (f"{r['output']}: train {r['train']['scenes']} scenes {r['train']['objects']}, "
            f"val {r['val']['scenes']} scenes {r['val']['objects']}")  # fmt: skip


# --------------------------------------------------------------------------- train / eval


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("steps", "batch-size"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    at_least("checkpoint-every", args.checkpoint_every, 0)
    positive("lr", args.lr)
    out = Path(args.output)
    check_output_dir(out, KIND_TRAIN)
    teacher = None
    kd = _kd_config(args.kd, args.kd_option) if args.kd != "none" else None
    if args.role == "teacher":
        if args.kd != "none":
            raise BadInputError("--role teacher trains without distillation; use --kd none")
        config = _detector_config(args.preset or "teacher", args.grid, args.depth)
    else:
        if args.teacher is None and kd is not None:
            raise BadInputError(f"--kd {args.kd} distils from a trained teacher: give --teacher RUN/model")
        name = args.preset or "S"
        if args.teacher is not None:
            teacher, _ = load_detector(args.teacher, "teacher model folder")
            t_cfg = teacher.config
            config = preset(name, point_range=t_cfg.point_range, voxel_size=t_cfg.voxel_size, classes=t_cfg.classes,
                            point_features=t_cfg.point_features, encoder_layers=t_cfg.encoder_layers,
                            bev_layers=t_cfg.bev_layers, max_voxels=t_cfg.max_voxels)  # fmt: skip
            check_student_fits(config, t_cfg)
        else:
            config = _detector_config(name, args.grid, args.depth)
    features = config.point_features  # floats per point of the .bin scans (KITTI 4; nuScenes' grid 5)
    train_set = KittiScenes(args.data, config.classes, features, what="--data folder")
    val_set = KittiScenes(args.val_data, config.classes, features, what="--val-data folder") if args.val_data else None
    cpu = resolve_device(args.device).type == "cpu"
    settings = FitSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint_every=args.checkpoint_every,
                           seed=args.seed, cpu=cpu, progress=not (args.no_progress or args.json), resume=args.resume)  # fmt: skip
    state = process_state()
    state.wait_for_everyone()  # every process validated its arguments before the first write
    if state.is_main_process:
        claim_output_dir(out, KIND_TRAIN)
        save_json(out / "run.json", {"role": args.role, "kd": args.kd, "teacher": args.teacher, "data": args.data,
                                     "detector": config_to_dict(config), "kd_config": config_to_dict(kd) if kd else None,
                                     "settings": vars(settings)})  # fmt: skip
    model = build_detector(config, seed=args.seed)
    result = fit(model, train_set, out, settings, teacher=teacher, kd=kd)
    summary: dict[str, Any] = {"output": str(out), "role": args.role, "preset": config.preset, "kd": args.kd,
                               "steps": result.steps, "final_loss": result.final_loss, "params": count_params(model)}  # fmt: skip
    if val_set is not None:
        summary["val"] = evaluate(model, val_set)
    if state.is_main_process:
        save_detector(out / "model", model, {"role": args.role, "kd": args.kd})
        save_json(out / "result.json", summary)
    return summary


def _metrics_line(m: dict[str, Any]) -> str:
    return (f"mAP {100 * m['mAP']:.1f}  NDS-lite {100 * m['NDS']:.1f}  ATE {m['mATE']:.2f}  ASE {m['mASE']:.2f}  "
            f"AOE {m['mAOE']:.2f}  BEV AP|R40 {100 * m['bev_AP_R40']:.1f}  3D AP|R40 {100 * m['3d_AP_R40']:.1f}  "
            f"({m['scenes']} scenes)")  # fmt: skip


def _train_human(r: dict[str, Any]) -> str:
    head = f"{r['output']}: {r['role']} {r['preset']} (kd {r['kd']}), {r['steps']} steps, loss {r['final_loss']:.3f}"
    return head + ("\n" + _metrics_line(r["val"]) if "val" in r else "")


def _kd_config(method: str, options: list[str]) -> Any:
    """``KD_METHODS[method]`` with ``--kd-option name=value`` overrides (values read as JSON, else as text)."""
    fields: dict[str, Any] = {}
    for option in options:
        name, sep, text = option.partition("=")
        if not sep or not name:
            raise BadInputError(f"--kd-option wants name=value, got {option!r}")
        try:
            fields[name.replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            fields[name.replace("-", "_")] = text
    known = [f.name for f in dataclasses.fields(KD_METHODS[method])]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise BadInputError(f"--kd-option: {method} has no such option ({', '.join(unknown)}); options: {', '.join(known)}")
    try:  # slimkit.io's checks: a value of the wrong JSON type is named, not taken for an unknown option
        return config_from_dict(KD_METHODS[method], fields)
    except BadInputError as exc:
        raise BadInputError(f"--kd-option: {exc}") from None


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    at_least("batch-size", args.batch_size, 1)
    model, _ = load_detector(args.model)
    scenes = KittiScenes(args.data, model.config.classes, model.config.point_features, what="--data folder")
    if not scenes.labeled:
        raise BadInputError(f"--data folder {args.data} has no label_2/ folder: nothing to score against")
    metrics = evaluate(model, scenes, args.batch_size, resolve_device(args.device),
                       progress=None if args.json else progress)  # fmt: skip
    return {"model": str(args.model), "data": str(args.data), "preset": model.config.preset, **metrics}


# --------------------------------------------------------------------------- flops


def cmd_flops(args: argparse.Namespace) -> dict[str, Any]:
    if args.scan is not None:
        check_input_file(args.scan, "scan", (".bin", ".pcd", ".ply"))
        raw = torch.from_numpy(read_points(args.scan))
    else:
        areas = {"tiny": 5.5, "cpu": 18.0, "sim": 24.0, "nuscenes": 48.0}
        raw = torch.from_numpy(simulate_scene(args.seed, 0, SimConfig(area=areas[args.grid]), "val").points)
    if args.grid == "nuscenes":
        raw = torch.cat([raw, torch.zeros(len(raw), 1)], dim=1)  # nuScenes points carry a time lag too
    points = torch.cat([torch.zeros(len(raw), 1), raw], dim=1)
    rows = []
    teacher_total = teacher_params = 0
    for name in PRESETS:
        cfg = _detector_config(name, args.grid, args.depth)
        model = build_detector(cfg, seed=0)
        fc = count_flops(model, points)
        params = count_params(model)
        if name == "teacher":
            teacher_total, teacher_params = fc.total, params
        rows.append({"preset": name, "gflops": fc.total / 1e9, "sparse_gflops": fc.sparse / 1e9, "dense_gflops": fc.dense / 1e9,
                     "params_m": params / 1e6, "flops_ratio": fc.total / teacher_total, "params_ratio": params / teacher_params,
                     "voxels": fc.voxels})  # fmt: skip
    return {"grid": args.grid, "depth": args.depth, "points": len(points), "rows": rows,
            "convention": "sparse conv: active pairs x C_in x C_out; dense conv: MACs; 1 MAC = 1 FLOP (SparseKD)",
            "paper": "CP-Voxel-S / teacher: 47.8 / 114.8 GFLOPs = 41.6 %, params 4.0 / 7.8 M = 51.3 % (nuScenes)"}  # fmt: skip


def _flops_human(r: dict[str, Any]) -> str:
    lines = [f"grid {r['grid']}, depth {r['depth']}, {r['points']} points ({r['convention']})",
             f"{'preset':<8} {'GFLOPs':>8} {'sparse':>8} {'dense':>8} {'params M':>9} {'FLOPs/T':>8} {'params/T':>9}"]  # fmt: skip
    for x in r["rows"]:
        lines.append(f"{x['preset']:<8} {x['gflops']:>8.2f} {x['sparse_gflops']:>8.2f} {x['dense_gflops']:>8.2f} "
                     f"{x['params_m']:>9.2f} {100 * x['flops_ratio']:>7.1f}% {100 * x['params_ratio']:>8.1f}%")  # fmt: skip
    return "\n".join([*lines, f"paper: {r['paper']}"])


# --------------------------------------------------------------------------- visualize


def cmd_visualize(args: argparse.Namespace) -> dict[str, Any]:
    at_least("scene", args.scene, 0)
    if not 0 <= args.threshold <= 1:
        raise BadInputError(f"--threshold must be in [0, 1], got {args.threshold}")
    out = check_output_dir(args.output, KIND_VISUALIZE)
    model, _ = load_detector(args.model)
    scenes = KittiScenes(args.data, model.config.classes, model.config.point_features, what="--data folder")
    if args.scene >= len(scenes):
        raise BadInputError(f"--scene {args.scene} is out of range: {args.data} holds {len(scenes)} scenes")
    claim_output_dir(out, KIND_VISUALIZE)
    item = scenes[args.scene]
    batch = collate([item])
    model.eval()
    with torch.no_grad():
        pred = decode(model(batch["points"], 1), model.config, score_threshold=args.threshold)[0]
    png = bev_png(out / "bev.png", item["points"].numpy(), item["boxes"].numpy(), pred, model.config.point_range,
                  f"scene {item['id']}: ground truth (green), {model.config.preset} predictions (red)",
                  model.config.classes)  # fmt: skip
    result: dict[str, Any] = {"output": str(out), "bev_png": str(png), "scene": item["id"], "boxes": len(pred["scores"]),
                              "ground_truth": len(item["boxes"])}  # fmt: skip
    if args.render:
        try:
            result["render_png"] = str(render_open3d(out / "render.png", item["points"].numpy(), pred["boxes"], truth=item["boxes"].numpy()))
        except RuntimeError as exc:
            result["render_skipped"] = str(exc)
    return result


# --------------------------------------------------------------------------- bench / table / demo


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    at_least("repeats", args.repeats, 1)
    at_least("batch-size", args.batch_size, 1)
    t_cfg = _detector_config("teacher", args.grid, args.depth)
    s_cfg = _detector_config(args.student, args.grid, args.depth)
    sim = cpu_sim() if args.grid == "cpu" else SimConfig()
    scenes = [simulate_scene(args.seed, i, sim, "val") for i in range(args.batch_size)]
    points = torch.cat([torch.cat([torch.full((len(s.points), 1), float(b)), torch.from_numpy(s.points)], 1)
                        for b, s in enumerate(scenes)])  # fmt: skip
    boxes = [torch.from_numpy(s.boxes).float() for s in scenes]
    labels = [torch.tensor([t_cfg.classes.index(n) for n in s.names], dtype=torch.long) for s in scenes]
    return {"grid": args.grid, "depth": args.depth, "threads": torch.get_num_threads(),
            **bench_all(t_cfg, s_cfg, points, boxes, labels, args.repeats)}  # fmt: skip


def _bench_human(r: dict[str, Any]) -> str:
    e, v = r["encoder"], r["voxelize"]
    return "\n".join([
        f"encoder ({e['voxels']} voxels, grid {e['grid']}): spconv {e['spconv_s'] * 1e3:.0f} ms, dense conv3d "
        f"{e['dense_s'] * 1e3:.0f} ms ({e['speedup']:.1f}x)",
        f"voxelize ({v['points']} points): reference {v['reference_s'] * 1e3:.1f} ms, naive loop {v['naive_s'] * 1e3:.0f} ms "
        f"({v['speedup']:.0f}x)",
        f"train step: teacher {r['train_step_teacher']['median_s']:.2f} s, student {r['train_step_student']['preset']} "
        f"{r['train_step_student']['median_s']:.2f} s (batch {r['train_step_teacher']['batch']})",
    ])  # fmt: skip


def cmd_table(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("train-scenes", "val-scenes", "teacher-steps", "student-steps"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    if not seeds:
        raise BadInputError("--seeds must list at least one seed, e.g. 0,1,2")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ("none", *KD_METHODS)]
    if unknown or not methods:
        raise BadInputError(f"--methods takes none, {', '.join(KD_METHODS)}; got {args.methods!r}")
    out = claim_output_dir(args.output, KIND_TABLE)
    return run_table(out, args.train_scenes, args.val_scenes, args.teacher_steps, args.student_steps, seeds, methods,
                     student=args.student, progress=not args.json)  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    at_least("steps", args.steps, 2)
    out = claim_output_dir(args.output, KIND_DEMO)
    return run_demo(out, steps=args.steps, seed=args.seed, progress=not args.json)


def _demo_human(r: dict[str, Any]) -> str:
    return "\n".join([r["what"], "teacher: " + _metrics_line(r["teacher"]), "student (RDD): " + _metrics_line(r["student"]),
                      f"student / teacher FLOPs {100 * r['flops_ratio']:.1f} %, params {100 * r['params_ratio']:.1f} %",
                      f"BEV plot: {r['bev_png']}"])  # fmt: skip


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``kd3d`` parser; every subcommand carries its handler as ``func``."""
    parser, sub = make_parser(PROG, "RDD distillation for compact CenterPoint-Voxel 3D detectors (spconv, open3d)", __version__)

    p = add_common(sub.add_parser("simulate", help="ray-cast LiDAR scenes with open3d into KITTI-format train/ and val/"))
    p.add_argument("--train", type=int, default=64, help="training scenes (default 64)")
    p.add_argument("--val", type=int, default=24, help="held-out scenes (default 24)")
    p.add_argument("--grid", default="cpu", choices=("tiny", "cpu", "sim"), help="object area: tiny (5.5 m), cpu (18 m), sim (24 m)")
    p.add_argument("--area", type=float, default=None, help="objects within |x|, |y| <= AREA metres")
    p.add_argument("--beams", type=int, default=32)
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=lambda a: report(cmd_simulate(a), a, _simulate_human))

    p = add_common(sub.add_parser("train", help="train a teacher, or a student from scratch or distilled"))
    p.add_argument("--data", required=True, help="KITTI-format folder (velodyne/, label_2/, calib/)")
    p.add_argument("--val-data", default=None, help="held-out folder scored at the end")
    p.add_argument("--role", default="teacher", choices=("teacher", "student"))
    p.add_argument("--preset", default=None, choices=PRESETS, help="widths (default: teacher / S)")
    p.add_argument("--kd", default="none", choices=("none", *KD_METHODS))
    p.add_argument("--kd-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a field of the --kd method's config, e.g. logit_reduction=sum (repeatable)")
    p.add_argument("--teacher", default=None, help="trained teacher folder (RUN/model); the student takes its grid")
    p.add_argument("--grid", default="cpu", choices=GRIDS, help="voxel grid without a teacher (default cpu)")
    p.add_argument("--depth", default="cpu", choices=DEPTHS, help="layer counts: cpu (reduced) or paper")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of this run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, model/, result.json)")
    p.set_defaults(func=lambda a: report(cmd_train(a), a, _train_human))

    p = add_common(sub.add_parser("eval", help="nuScenes-style mAP / NDS-lite and KITTI BEV AP of a model folder"))
    p.add_argument("model", help="model folder written by train (RUN/model)")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=lambda a: report(cmd_eval(a), a, lambda r: _metrics_line(r)))

    p = add_common(sub.add_parser("flops", help="SparseKD-style FLOPs and parameters of the four presets on one scan"))
    p.add_argument("--scan", default=None, help="a .bin / .pcd / .ply scan (default: one simulated scene)")
    p.add_argument("--grid", default="cpu", choices=GRIDS)
    p.add_argument("--depth", default="paper", choices=DEPTHS)
    p.set_defaults(func=lambda a: report(cmd_flops(a), a, _flops_human))

    p = add_common(sub.add_parser("visualize", help="BEV PNG of one scene with ground truth and predictions"))
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--scene", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.3, help="draw predictions scoring at least this")
    p.add_argument("--render", action="store_true", help="also an open3d off-screen render (skipped if unavailable)")
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=lambda a: report(cmd_visualize(a), a))

    p = add_common(sub.add_parser("bench", help="CPU timings: spconv vs dense encoder, voxelization, one train step"))
    p.add_argument("--grid", default="cpu", choices=("cpu", "sim"))
    p.add_argument("--depth", default="cpu", choices=DEPTHS)
    p.add_argument("--student", default="S", choices=PRESETS[1:])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=lambda a: report(cmd_bench(a), a, _bench_human))

    p = add_common(sub.add_parser("table", help="the README comparison: teacher, student x {none, logit, feature, sparsekd, rdd} x seeds"))
    p.add_argument("--train-scenes", type=int, default=64)
    p.add_argument("--val-scenes", type=int, default=24)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="none,logit,feature,sparsekd,rdd", help="student methods, comma-separated")
    p.add_argument("--student", default="S", choices=PRESETS[1:])
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=lambda a: report(cmd_table(a), a, lambda r: r["markdown"]))

    p = add_common(sub.add_parser("demo", help="simulate, train a tiny teacher, distil a student with RDD, score, draw"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--output", "-o", default="kd3d-demo")
    p.set_defaults(func=lambda a: report(cmd_demo(a), a, _demo_human))
    return parser


main = dispatching_main(build_parser, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
