"""The ``qdetr`` console script: make-data, train, eval, export, visualize, bops, demo.

Every subcommand validates its arguments, inputs and output paths before it writes anything; a
user error is one stderr line and exit code 2 (``slimkit.cli.run_main``). ``train`` runs under
``accelerate launch`` (``-m qdetr.cli train``) like the other packages' CLIs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdetr import __version__
from qdetr.bench import BenchSizes, run_benchmarks
from qdetr.bops import detr_ops
from qdetr.checkpoints import CATEGORIES, check_categories, load_model_folder, save_model_folder
from qdetr.config import ALIGNMENTS, PAIRINGS, SELECTIONS, DRDConfig, QDetrConfig
from qdetr.data import COINS_KIND, CocoDetectionSet, collate, make_coins, make_shapes_splits
from qdetr.drd import CoAttendedTap
from qdetr.evaluate import evaluate_model
from qdetr.export import export
from qdetr.models import detr_r50, tiny_detr
from qdetr.pretrain import pretrain_backbone
from qdetr.quickstart import run as run_demo
from qdetr.training import METHODS, SCHEDULES, FitSettings, fit
from qdetr.visualize import check_query_models, detections_png, query_distribution_png
from slimkit.bench import rows_text
from slimkit.cli import (
    add_common,
    at_least,
    bench_command,
    dispatching_main,
    make_parser,
    positive,
    report,
    resolve_device,
)
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict, save_json
from slimkit.paths import check_output_dir, check_output_file, claim_output_dir
from slimkit.train import process_state

__all__ = ["build_parser", "main"]

PROG = "qdetr"
KIND_TRAIN = "qdetr train"
KIND_DEMO = "qdetr demo"
KIND_VISUALIZE = "qdetr visualize"
DATA_KINDS = ("shapes", "coins")


# --------------------------------------------------------------------------- make-data


def cmd_make_data(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("train", "val"):
        at_least(name, getattr(args, name), 1)
    out = Path(args.output)  # the writers check and claim their own folders, atomically
    if args.kind == "shapes":
        size = args.image_size or 64
        result = make_shapes_splits(out, args.train, args.val, args.seed, image_size=size,
                                    max_objects=args.max_objects)  # fmt: skip
    else:
        size = args.image_size or 128
        for name in ("train", "val"):  # both folders are checked before either is written
            check_output_dir(out / name, COINS_KIND)
        result = {
            "train": make_coins(out / "train", args.train, args.seed, image_size=size),
            "val": make_coins(out / "val", args.val, args.seed + 1, image_size=size),
        }
    return {"kind": args.kind, "output": str(out), **result}


# --------------------------------------------------------------------------- train / eval


def _quant_config(args: argparse.Namespace) -> QDetrConfig:
    alignment = args.alignment if args.alignment is not None else ("cross" if args.method == "qdetr" else "none")
    return QDetrConfig(w_bits=args.w_bits, a_bits=args.a_bits, attn_bits=args.attn_bits, alignment=alignment,
                       act_granularity=args.act_granularity, seed=args.seed)  # fmt: skip


def _drd_layers(text: str | None) -> list[int]:
    """``--drd-layers`` ("-1", "0,1") as decoder layer indices; anything else is a one-line error."""
    if not text:
        return [-1]
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInputError(f"--drd-layers must be comma-separated integers (decoder layers), got {text!r}") from None


def _drd_config(args: argparse.Namespace) -> DRDConfig:
    layers = _drd_layers(args.drd_layers)
    return DRDConfig(tau=args.tau, weight=args.drd_weight, layers=layers, select=args.select, pairing=args.pairing)


def _check_data(name: str, model: nn.Module, extra: dict[str, Any], data_name: str, dataset: CocoDetectionSet) -> bool:
    """Refuse (one line) a COCO folder the model was not trained on: other categories than the model's
    recorded ones (ids, names or order), or, without a record, another number of classes.
    Returns whether the categories themselves were checked (False: only their count)."""
    checked = check_categories(name, extra.get(CATEGORIES), data_name, dataset.label_categories)
    config: Any = getattr(model, "config", None)
    labels = int(getattr(config, "num_labels", 0) or 0)
    if labels != dataset.num_labels:
        raise BadInputError(f"{name} predicts {labels} classes, {data_name} has {dataset.num_labels}")
    return checked


def _start_model(args: argparse.Namespace, train_set: CocoDetectionSet) -> nn.Module:
    """The FP weights training starts from: a random tiny DETR, or a saved FP model folder."""
    if args.model == "tiny":
        torch.manual_seed(args.seed)
        return tiny_detr(train_set.num_labels)
    model, quant, extra = load_model_folder(args.model)
    if quant is not None:
        raise BadInputError(f"--model {args.model} is already quantized; start from a full-precision model")
    _check_data(f"--model {args.model}", model, extra, "the data", train_set)
    return model


def _calibration(plain: CocoDetectionSet, n: int) -> torch.Tensor:
    """The first ``n`` training images (``plain``: the set without augmentation): the batch every process calibrates on."""
    return collate([plain[i] for i in range(min(n, len(plain)))])["pixel_values"]


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("steps", "batch-size", "calibration-images"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    for name in ("backbone-steps", "checkpoint-every", "weight-decay", "warmup-steps", "pretrain-steps"):
        at_least(name, getattr(args, name.replace("-", "_")), 0)
    positive("lr", args.lr)
    if args.method == "logit-kd" and args.model == "tiny":  # KL slot by slot: slot i must be the teacher's slot i
        raise BadInputError("--method logit-kd matches student and teacher query by query: start the student from "
                            "the FP teacher (--model <teacher folder>), not from a random --model tiny")  # fmt: skip
    quantized = args.method != "fp"
    quant = _quant_config(args) if quantized else None
    drd = _drd_config(args) if args.method == "qdetr" else None
    settings = FitSettings(
        steps=args.steps, backbone_steps=args.backbone_steps if quantized else 0, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, schedule=args.schedule,
        checkpoint_every=args.checkpoint_every, seed=args.seed, cpu=resolve_device(args.device).type == "cpu",
        progress=not (args.no_progress or args.json), resume=args.resume,
    )  # fmt: skip
    out = Path(args.output)
    check_output_dir(out, KIND_TRAIN)
    train_set = CocoDetectionSet(args.data, image_size=args.image_size, train=True)
    val_set = CocoDetectionSet(args.val_data, image_size=args.image_size)
    if val_set.label_categories != train_set.label_categories:  # ids and names: the model is scored with --data's
        raise BadInputError(f"--val-data categories {val_set.label_categories} differ from --data's "
                            f"{train_set.label_categories}")  # fmt: skip
    model = _start_model(args, train_set)
    teacher = None
    if args.method in ("qdetr", "logit-kd"):
        source = args.teacher or (args.model if args.model != "tiny" else None)
        if source is None:
            raise BadInputError(f"--method {args.method} distils from an FP teacher: give --teacher (or an FP --model folder)")
        teacher, t_quant, t_extra = load_model_folder(source)
        if t_quant is not None:
            raise BadInputError(f"--teacher {source} is quantized; the teacher is the full-precision model")
        _check_data(f"teacher {source}", teacher, t_extra, "the data", train_set)  # its logits must mean the same
    if drd is not None and teacher is not None:  # --drd-layers must exist in both decoders, before the first write
        for net in (model, teacher):
            CoAttendedTap(net, drd.layers).close()
    plain = CocoDetectionSet(args.data, image_size=args.image_size) if quantized or args.pretrain_steps else None
    calibration = _calibration(plain, args.calibration_images) if plain is not None and quantized else None
    state = process_state()
    state.wait_for_everyone()  # every process validated the arguments before the first write
    if state.is_main_process:
        claim_output_dir(out, KIND_TRAIN)
        save_json(out / "run.json", {
            "method": args.method, "model": args.model, "teacher": args.teacher, "data": args.data,
            "val_data": args.val_data, "quant": config_to_dict(quant) if quant else None,
            "drd": config_to_dict(drd) if drd else None, "settings": vars(settings),
        })  # fmt: skip
    pretrained = None
    # the offline stand-in for an ImageNet backbone (qdetr.pretrain); a resumed run's checkpoint already holds it
    if plain is not None and args.pretrain_steps and args.resume is None:
        pretrained = pretrain_backbone(model, plain, out / "pretrain", args.pretrain_steps, seed=args.seed,
                                       progress=settings.progress, held_out=val_set)  # fmt: skip
    results = fit(model, train_set, args.method, out, settings, quant, teacher, drd, calibration)
    metrics = evaluate_model(model, val_set, batch_size=args.batch_size, device=next(model.parameters()).device)
    summary = {
        "output": str(out), "method": args.method, "steps": sum(r.steps for r in results),
        "final_loss": results[-1].final_loss, "val": metrics,
        "bits": f"{quant.w_bits}-{quant.a_bits}-{quant.attn_bits}" if quant else "32-32-32",
        "backbone_pretraining": pretrained,
    }  # fmt: skip
    if state.is_main_process:
        save_model_folder(out / "model", model, quant, {"method": args.method, "val": metrics},
                          categories=train_set.label_categories)  # fmt: skip
        save_json(out / "result.json", summary)
    return summary


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    at_least("batch-size", args.batch_size, 1)
    model, quant, extra = load_model_folder(args.checkpoint)
    dataset = CocoDetectionSet(args.data, image_size=args.image_size)
    checked = _check_data(str(args.checkpoint), model, extra, str(args.data), dataset)
    device = resolve_device(args.device)
    model.to(device)  # type: ignore[arg-type]
    metrics = evaluate_model(model, dataset, batch_size=args.batch_size, device=device)
    bits = f"{quant.w_bits}-{quant.a_bits}-{quant.attn_bits}" if quant else "32-32-32"
    return {"checkpoint": str(args.checkpoint), "data": str(args.data), "bits": bits, "images": len(dataset),
            "categories_checked": checked, **metrics}  # fmt: skip


def _metrics_human(result: dict[str, Any]) -> str:
    m = result.get("val", result)
    head = f"{result.get('method', result.get('checkpoint', ''))} ({result.get('bits', '')})"
    line = f"{head}: AP {100 * m['AP']:.1f}  AP50 {100 * m['AP50']:.1f}  AP75 {100 * m['AP75']:.1f}"
    if result.get("categories_checked") is False:
        line += "  (the model records no categories: only their number was checked against the data)"
    return line


# --------------------------------------------------------------------------- export / visualize


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    target = check_output_file(args.output, (".safetensors",))
    model, quant, extra = load_model_folder(args.checkpoint)
    if quant is None:
        raise BadInputError(f"{args.checkpoint} is a full-precision model; export takes a quantized model folder "
                            "written by train (RUN/model)")  # fmt: skip
    result = export(model.eval(), target, quant, categories=extra.get(CATEGORIES))
    return {"checkpoint": str(args.checkpoint), "output": str(target), **result.to_dict()}


def _export_human(r: dict[str, Any]) -> str:
    return (f"{r['output']} ({r['bits']}): quantized weights {r['weights_fp32_bytes']:,} B fp32 -> "
            f"{r['weights_exported_bytes']:,} B packed ({r['compression']:.1f}x, {r['bits_per_weight']:.2f} bits/weight); "
            f"file {r['file_bytes']:,} B")  # fmt: skip


def cmd_visualize(args: argparse.Namespace) -> dict[str, Any]:
    at_least("images", args.images, 1)
    if not 0 <= args.threshold <= 1:
        raise BadInputError(f"--threshold must be in [0, 1], got {args.threshold}")
    out = check_output_dir(args.output, KIND_VISUALIZE)
    model, quant, extra = load_model_folder(args.checkpoint)
    dataset = CocoDetectionSet(args.data, image_size=args.image_size)
    _check_data(str(args.checkpoint), model, extra, str(args.data), dataset)
    teacher: nn.Module | None = None
    if args.teacher is not None:
        if quant is None:
            raise BadInputError(f"--teacher compares a quantized model with its FP teacher, but {args.checkpoint} "
                                "is full precision")  # fmt: skip
        teacher, t_quant, _ = load_model_folder(args.teacher)
        if t_quant is not None:
            raise BadInputError(f"--teacher {args.teacher} is quantized; the teacher is the full-precision model")
        check_query_models(teacher, model, args.layer)
    device = resolve_device(args.device)
    indices = list(range(min(args.images, len(dataset))))
    claim_output_dir(out, KIND_VISUALIZE)  # every check passed: the first write
    model.to(device)  # type: ignore[arg-type]
    detections = detections_png(model, dataset, indices, out / "detections.png", threshold=args.threshold)
    result: dict[str, Any] = {
        "checkpoint": str(args.checkpoint), "data": str(args.data), "output": str(out), "images": len(indices),
        "threshold": args.threshold, "detections_png": str(out / "detections.png"),
        "boxes": sum(len(d["scores"]) for d in detections), "detections": detections,
    }  # fmt: skip
    if teacher is not None:
        pixels = collate([dataset[i] for i in indices])["pixel_values"]
        stats = query_distribution_png(teacher.to(device), model, pixels, out / "queries.png", layer=args.layer)
        result.update({"queries_png": str(out / "queries.png"), "layer": args.layer, "queries": stats})
    return result


def _visualize_human(r: dict[str, Any]) -> str:
    lines = [f"{r['detections_png']}: {r['images']} image(s), {r['boxes']} box(es) with score >= {r['threshold']:g}"]
    if "queries" in r:
        curves = ", ".join(f"{k} mean {v['mean']:.3f} std {v['std']:.3f}" for k, v in r["queries"].items())
        lines.append(f"{r['queries_png']}: decoder layer {r['layer']} cross-attention queries ({curves})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- bops / demo


def cmd_bops(args: argparse.Namespace) -> dict[str, Any]:
    at_least("height", args.height, 32)
    at_least("width", args.width, 32)
    if args.model == "detr-r50":
        model: nn.Module = detr_r50()
    elif args.model == "tiny":
        model = tiny_detr(3)
    else:
        model = load_model_folder(args.model)[0]
    config = QDetrConfig(w_bits=args.w_bits, a_bits=args.a_bits, attn_bits=args.attn_bits)
    return {"model": args.model, **detr_ops(model, config, args.height, args.width)}


def _bops_human(r: dict[str, Any]) -> str:
    c = r["config"]
    return (f"{r['model']} at {r['input'][0]}x{r['input'][1]}: FP {r['fp']['macs'] / 1e9:.2f} GMACs; "
            f"{c['w_bits']}-{c['a_bits']}-{c['attn_bits']}: {r['quantized']['ops'] / 1e9:.2f} G OPs "
            f"= {r['speedup']:.2f}x fewer (paper: {r['paper_speedup']}x; {r['convention']})")  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    return bench_command(args, lambda device, quick, repeats: run_benchmarks(
        device, BenchSizes.quick() if quick else BenchSizes(), repeats=repeats))


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    at_least("steps", args.steps, 2)
    out = Path(args.output)
    claim_output_dir(out, KIND_DEMO)
    return run_demo(out, steps=args.steps, seed=args.seed, progress=not args.json)


def _demo_human(r: dict[str, Any]) -> str:
    rows = [f"{r['what']}", f"{'model':<14} {'AP':>6} {'AP50':>6}"]
    for key, label in (("fp", "FP teacher"), ("qdetr", "Q-DETR 4-4-8")):
        rows.append(f"{label:<14} {100 * r[key]['AP']:>6.1f} {100 * r[key]['AP50']:>6.1f}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- parser


def _add_bits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--w-bits", type=int, default=4, help="weight bits 2..8 (default 4)")
    p.add_argument("--a-bits", type=int, default=4, help="activation bits 2..8 (default 4)")
    p.add_argument("--attn-bits", type=int, default=8, help="q / k / softmax / v bits (default 8, the paper's)")


def build_parser() -> argparse.ArgumentParser:
    """The ``qdetr`` parser; every subcommand carries its handler as ``func``."""
    parser, sub = make_parser(PROG, "Low-bit DETR with Q-DETR's distribution rectification distillation", __version__)

    p = add_common(sub.add_parser("make-data", help="write a COCO-format detection set (generated shapes or coins)"))
    p.add_argument("kind", choices=DATA_KINDS)
    p.add_argument("--train", type=int, default=512, help="training images (default 512)")
    p.add_argument("--val", type=int, default=128, help="held-out images (default 128)")
    p.add_argument("--image-size", type=int, default=None, help="side in pixels (default 64 shapes, 128 coins)")
    p.add_argument("--max-objects", type=int, default=3, help="shapes per image at most (default 3)")
    p.add_argument("--output", "-o", required=True, help="folder for train/ and val/ (COCO folders)")
    p.set_defaults(func=lambda a: report(cmd_make_data(a), a, lambda r: f"{r['kind']} set written to {r['output']}"))

    p = add_common(sub.add_parser("train", help="train a DETR: fp, or quantized with lsq / logit-kd / qdetr"))
    p.add_argument("--method", default="qdetr", choices=METHODS)
    p.add_argument("--data", required=True, help="training COCO folder (annotations.json + images/)")
    p.add_argument("--val-data", required=True, help="held-out COCO folder, scored at the end")
    p.add_argument("--model", default="tiny", help="start from: tiny (random) or a full-precision model folder")
    p.add_argument("--teacher", default=None, help="FP teacher folder (qdetr, logit-kd; default: --model)")
    _add_bits(p)
    p.add_argument("--alignment", default=None, choices=ALIGNMENTS,
                   help="DA on decoder queries (default: cross for qdetr, none otherwise)")
    p.add_argument("--act-granularity", default="tensor", choices=("tensor", "channel"))
    p.add_argument("--tau", type=float, default=0.5, help="FQM: keep queries with GIoU > tau x the best (0.5)")
    p.add_argument("--drd-weight", type=float, default=1.0, help="lambda of L_det + lambda L_DRD (1.0)")
    p.add_argument("--drd-layers", default="-1", help="decoder layers distilled, comma-separated (-1 = last)")
    p.add_argument("--select", default="exists", choices=SELECTIONS)
    p.add_argument("--pairing", default="argmax", choices=PAIRINGS)
    p.add_argument("--image-size", type=int, default=None, help="resize the longer side to this (default: as stored)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--backbone-steps", type=int, default=100, help="first stage: quantized backbone only (100)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4, the paper's)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--schedule", default="step", choices=SCHEDULES,
                   help="lr schedule: step (DETR's x0.1 after 2/3 of the steps, default), cosine, constant")
    p.add_argument("--calibration-images", type=int, default=8, help="images whose batch initialises the quantizers")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="first train the backbone to classify the training objects' crops (default 0: off)")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of this run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, model/, result.json)")
    p.set_defaults(func=lambda a: report(cmd_train(a), a, _metrics_human))

    p = add_common(sub.add_parser("eval", help="COCO AP of a trained model on a COCO folder"))
    p.add_argument("checkpoint", help="model folder written by train (RUN/model) or a transformers DETR folder")
    p.add_argument("--data", required=True, help="COCO folder to score")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=lambda a: report(cmd_eval(a), a, _metrics_human))

    p = add_common(sub.add_parser("export", help="write packed integer weight codes plus steps (one .safetensors file)"))
    p.add_argument("checkpoint", help="quantized model folder written by train (RUN/model)")
    p.add_argument("--output", "-o", required=True, help="the .safetensors file to write")
    p.set_defaults(func=lambda a: report(cmd_export(a), a, _export_human))

    p = add_common(sub.add_parser("visualize", help="PNGs: detections on held-out images, and (--teacher) DA's query histograms"))
    p.add_argument("checkpoint", help="model folder written by train (RUN/model) or a transformers DETR folder")
    p.add_argument("--data", required=True, help="COCO folder whose first images are drawn")
    p.add_argument("--teacher", default=None, help="FP model folder: also write queries.png (FP vs quantized vs after DA)")
    p.add_argument("--images", type=int, default=8, help="images drawn, and run for the query histograms (default 8)")
    p.add_argument("--threshold", type=float, default=0.5, help="draw predicted boxes scoring at least this (0.5)")
    p.add_argument("--layer", type=int, default=-1, help="decoder layer of the query histograms (default -1, the last)")
    p.add_argument("--image-size", type=int, default=None, help="resize the longer side to this (default: as stored)")
    p.add_argument("--output", "-o", required=True, help="folder for detections.png and queries.png")
    p.set_defaults(func=lambda a: report(cmd_visualize(a), a, _visualize_human))

    p = add_common(sub.add_parser("bops", help="FP vs quantized operations (BOPs / 64 convention) and the speedup"))
    p.add_argument("--model", default="detr-r50", help="detr-r50, tiny, or a model folder")
    _add_bits(p)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1216)
    p.set_defaults(func=lambda a: report(cmd_bops(a), a, _bops_human))

    p = add_common(sub.add_parser("bench", help="timings: FQM score and DA + LSQ+ vs PyTorch, one train step per method"))
    p.add_argument("--quick", action="store_true", help="small sizes (seconds on a laptop)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--output", "-o", default=None, help="also write the JSON result here (.json)")
    p.set_defaults(func=lambda a: report(cmd_bench(a), a, rows_text))

    p = add_common(sub.add_parser("demo", help="shapes data, FP teacher, 4-bit Q-DETR, AP of both"))
    p.add_argument("--steps", type=int, default=300, help="FP steps (Q-DETR gets half)")
    p.add_argument("--output", "-o", default="qdetr-demo")
    p.set_defaults(func=lambda a: report(cmd_demo(a), a, _demo_human))
    return parser


main = dispatching_main(build_parser, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
