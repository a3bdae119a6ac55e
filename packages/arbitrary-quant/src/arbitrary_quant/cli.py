"""The ``arbitrary-quant`` console script: train, eval, export, calibrate, bops, tables, bench, demo.

Every subcommand validates its arguments, inputs and output paths before it writes anything;
a user error is one stderr line and exit code 2 (``slimkit.cli.run_main``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arbitrary_quant import __version__
from arbitrary_quant.api import quantize_
from arbitrary_quant.baselines import init_lsq, recursive_loss
from arbitrary_quant.bench import BenchSizes, run_benchmarks
from arbitrary_quant.bivit import layer_bits
from arbitrary_quant.bivit_training import BiViTTableSettings, bivit_table, train_binary, train_teacher, vit_ops
from arbitrary_quant.checkpoints import load_quant_model, model_files, save_quant_model
from arbitrary_quant.config import AnyPrecisionConfig, BiViTConfig, DFSQConfig, LSQConfig, MultiQuantConfig
from arbitrary_quant.dfsq import dfsq
from arbitrary_quant.dfsq_table import METHODS as DFSQ_METHODS
from arbitrary_quant.dfsq_table import DFSQTableSettings, dfsq_table
from arbitrary_quant.export import export
from arbitrary_quant.flags import add_settings_flags, settings_from_args
from arbitrary_quant.multiquant import current_bits, init_bounds, multiquant, set_bits
from arbitrary_quant.quickstart import bits_report
from arbitrary_quant.quickstart import run as run_demo
from arbitrary_quant.sr import sr_eval_pairs, sr_patches
from arbitrary_quant.sr_training import evaluate_psnr, load_sr_model, load_user_sr_model
from arbitrary_quant.table import METHODS as TABLE_METHODS
from arbitrary_quant.table import MultiBitTableSettings, multibit_table
from arbitrary_quant.training import AllBitsForward, multibit_loss, multiquant_optimizer
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
    train_val_datasets,
)
from slimkit.data import DATASETS, first_inputs, image_folder, num_classes, resolve_dataset
from slimkit.errors import BadInputError
from slimkit.evaluate import top1
from slimkit.io import config_to_dict, load_into, save_json, save_model
from slimkit.models import read_checkpoint
from slimkit.opcount import count_ops
from slimkit.paths import check_input_dir, check_output_dir, check_output_file, claim_output_dir
from slimkit.train import TrainConfig, clear_run, process_state, train
from slimkit.zoo import BUILTIN_MODELS, ModelSpec, load_model

__all__ = ["build_parser", "main"]

PROG = "arbitrary-quant"
KIND_TRAIN = "arbitrary-quant train"
KIND_DEMO = "arbitrary-quant demo"
KIND_TABLE = "arbitrary-quant table"
KIND_DFSQ_TABLE = "arbitrary-quant dfsq-table"
KIND_BIVIT_TABLE = "arbitrary-quant bivit-table"
RUN_FILE = "run.json"
METHODS = ("multiquant", "any-precision", "lsq", "bivit")
#: ``train --method bivit`` without ``--model``: the small timm ViT of ``bivit-table`` (4x4 patches).
SMALL_VIT = "vit_tiny_patch16_224"
SMALL_VIT_KWARGS = {"patch_size": 4, "depth": 4, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 2.0}
DISTILL = ("ranking", "logits", "none")


# --------------------------------------------------------------------------- argument helpers


def _bits(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise BadInputError(f"--bits must be comma-separated integers, got {text!r}") from None
    if not bits:
        raise BadInputError("--bits is empty")
    return bits


def _layout(args: argparse.Namespace) -> tuple[int, int]:
    """(image size, channels): digits is 8x8 grey for the built-in ResNets, everything else 32x32 RGB."""
    builtin = args.model in BUILTIN_MODELS and getattr(args, "method", None) != "bivit"
    digits_small = builtin and args.data == "digits"
    size = args.image_size or (8 if digits_small else 32)
    channels = args.channels or (1 if args.data == "digits" else 3)
    at_least("image-size", size, 4)
    if channels not in (1, 3):
        raise BadInputError(f"--channels must be 1 or 3, got {channels}")
    return size, channels


# --------------------------------------------------------------------------- train


def _multiquant_config(args: argparse.Namespace) -> MultiQuantConfig:
    return MultiQuantConfig(
        groups=args.groups, bit_list=_bits(args.bits), selection=args.selection,
        distill_weight=args.distill_weight, shuffle=not args.no_shuffle, seed=args.seed,
    )  # fmt: skip


def _method_config(args: argparse.Namespace) -> MultiQuantConfig | AnyPrecisionConfig | LSQConfig:
    if args.method == "multiquant":
        return _multiquant_config(args)
    if args.method == "any-precision":
        return AnyPrecisionConfig(bit_list=_bits(args.bits), seed=args.seed)
    bits = _bits(args.bits)
    if len(bits) != 1:
        raise BadInputError(f"--method lsq trains one bit-width: give one --bits value, got {args.bits!r}")
    return LSQConfig(w_bits=bits[0], a_bits=bits[0], seed=args.seed)


def _bit_list(config: Any) -> tuple[int, ...] | None:
    """The switchable bit-widths of a config, ``None`` for a fixed-bit one (LSQ, Bi-ViT)."""
    return None if isinstance(config, (LSQConfig, BiViTConfig)) else tuple(config.bit_list)


def _training(model: nn.Module, config: Any, args: argparse.Namespace, first: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """What to train and how: (module handed to slimkit.train, its loss_fn / optimizer_fn)."""
    if isinstance(config, MultiQuantConfig):
        init_bounds(model, first)
        return AllBitsForward(model, config.bit_list), {
            "loss_fn": multibit_loss(config.distill_weight),
            "optimizer_fn": multiquant_optimizer(model, args.bounds_lr),
        }
    if isinstance(config, AnyPrecisionConfig):
        return AllBitsForward(model, config.bit_list), {"loss_fn": recursive_loss()}
    init_lsq(model, first)
    return model, {}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    if args.method == "bivit":
        return cmd_train_bivit(args)
    args.model = args.model or "small_resnet"
    for name in ("steps", "batch-size"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    for name in ("warmup-steps", "checkpoint-every", "weight-decay"):
        at_least(name, getattr(args, name.replace("-", "_")), 0)
    for name in ("lr", "bounds-lr"):
        positive(name, getattr(args, name.replace("-", "_")))
    config = _method_config(args)
    device = resolve_device(args.device)
    out = Path(args.output)
    check_output_dir(out, KIND_TRAIN)
    size, channels = _layout(args)
    train_set, val_set = train_val_datasets(args.data, args.val_data, size, channels, args.seed, require_val=True)
    spec = ModelSpec(args.model, num_classes(train_set), channels, size)
    torch.manual_seed(args.seed)
    model = quantize_(load_model(spec.name, spec.num_classes, spec.in_chans), config)
    train_config = TrainConfig(
        output_dir=str(out), max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every,
        seed=args.seed, resume_from=args.resume, progress=not (args.no_progress or args.json),
        cpu=device.type == "cpu", log_every=max(1, args.steps // 20),
        find_unused_parameters=True,  # a bit-width's forward leaves the other widths' BN / bounds unused
    )  # fmt: skip
    trained, how = _training(model, config, args, first_inputs(train_set, args.batch_size))
    state = process_state()
    state.wait_for_everyone()  # every process validated the arguments before the first write
    if state.is_main_process:
        claim_output_dir(out, KIND_TRAIN)
        run = {"model": asdict(spec), "config": config_to_dict(config), "data": args.data}
        save_json(out / RUN_FILE, {**run, "train": config_to_dict(train_config)})
    result = train(trained, train_set, train_config, **how)
    model.eval()
    rows = bits_report(model, val_set, _bit_list(config), size)
    summary = {
        "output": str(out), "method": args.method, "model": args.model, "data": args.data,
        "steps": result.steps, "final_loss": result.final_loss, "rows": rows,
    }  # fmt: skip
    if state.is_main_process:
        save_quant_model(out / "model", model, spec, config, {"val_top1": {str(r["bits"]): r["top1"] for r in rows}})
        save_json(out / "result.json", summary)
    return summary


def _bivit_spec(args: argparse.Namespace, classes: int, size: int, channels: int) -> ModelSpec:
    """The ViT to binarize: ``--model`` (a timm ViT at ``--image-size``) or the small ViT of bivit-table."""
    if args.model is None:
        if size % SMALL_VIT_KWARGS["patch_size"]:
            raise BadInputError(f"--image-size {size} is not a multiple of the small ViT's 4x4 patches")
        return ModelSpec(SMALL_VIT, classes, channels, size, kwargs={"img_size": size, **SMALL_VIT_KWARGS})
    if args.model in BUILTIN_MODELS:
        raise BadInputError(f"--method bivit binarizes a timm ViT; {args.model!r} is a CNN")
    return ModelSpec(args.model, classes, channels, size, kwargs={"img_size": size})


def _bivit_config(args: argparse.Namespace) -> BiViTConfig:
    if args.distill == "ranking":
        return BiViTConfig(attention=args.attention, seed=args.seed)
    kd = 0.0 if args.distill == "none" else BiViTConfig().kd_weight
    return BiViTConfig(attention=args.attention, ranking_loss=None, kd_weight=kd, seed=args.seed)


def _bivit_teacher(
    args: argparse.Namespace, teacher: nn.Module, spec: ModelSpec, train_set: Any, common: dict[str, Any]
) -> None:
    """Fill ``teacher``: ``--teacher`` weights, the teacher of the run being resumed, or train it now."""
    if args.teacher is not None:
        given = Path(args.teacher)
        load_into(teacher, read_checkpoint(model_files(given, "--teacher")[0] if given.is_dir() else given))
        return
    out = Path(args.output)
    saved = out / "teacher" / "model.safetensors"
    if args.resume is not None and saved.is_file():  # resuming the student: the teacher is done
        load_into(teacher, read_checkpoint(saved))
        return
    steps = args.teacher_steps
    config = TrainConfig(output_dir=str(out / "teacher"), max_steps=steps, lr=args.lr, weight_decay=0.05,
                         warmup_steps=max(1, steps // 20), log_every=max(1, steps // 20), **common)  # fmt: skip
    state = process_state()
    if state.is_main_process:
        clear_run(out / "teacher")
    state.wait_for_everyone()
    train_teacher(teacher, train_set, config)
    if state.is_main_process:
        save_model(out / "teacher", teacher, None, {"role": "Bi-ViT FP teacher", "model": asdict(spec)})


def cmd_train_bivit(args: argparse.Namespace) -> dict[str, Any]:
    """Bi-ViT: an FP teacher (``--teacher`` weights, or trained here first), then its binarized copy
    trained with the ranking-aware distillation (or without it, ``--distill``)."""
    for name in ("steps", "batch-size", "teacher-steps"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    for name in ("warmup-steps", "checkpoint-every", "weight-decay"):
        at_least(name, getattr(args, name.replace("-", "_")), 0)
    positive("lr", args.lr)
    config = _bivit_config(args)
    device = resolve_device(args.device)
    out = Path(args.output)
    check_output_dir(out, KIND_TRAIN)
    size, channels = _layout(args)
    train_set, val_set = train_val_datasets(args.data, args.val_data, size, channels, args.seed, require_val=True)
    spec = _bivit_spec(args, num_classes(train_set), size, channels)
    torch.manual_seed(args.seed)
    teacher, student = spec.build(), spec.build()
    if args.teacher is not None:
        _bivit_teacher(args, teacher, spec, train_set, {})  # a bad --teacher fails before anything is written
    state = process_state()
    state.wait_for_everyone()  # every process validated the arguments before the first write
    if state.is_main_process:
        claim_output_dir(out, KIND_TRAIN)
        save_json(out / RUN_FILE, {"model": asdict(spec), "config": config_to_dict(config), "data": args.data,
                                   "teacher": args.teacher})  # fmt: skip
    common = {"batch_size": args.batch_size, "seed": args.seed, "cpu": device.type == "cpu",
              "progress": not (args.no_progress or args.json)}  # fmt: skip
    if args.teacher is None:
        _bivit_teacher(args, teacher, spec, train_set, common)
    train_config = TrainConfig(
        output_dir=str(out), max_steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every, resume_from=args.resume,
        log_every=max(1, args.steps // 20), **common,
        find_unused_parameters=True,  # the wrapped Linears' original weights: BinaryLinear trains its own copies
    )  # fmt: skip
    first = first_inputs(train_set, args.batch_size)  # the binarizers' scales: the same on every process
    result = train_binary(student, teacher, train_set, config, train_config, init_inputs=first)
    student.eval()
    rows = bits_report(student, val_set, None, size, layer_bits(student))
    teacher_top1 = top1(teacher.eval(), val_set)
    summary = {
        "output": str(out), "method": "bivit", "model": spec.name, "data": args.data, "steps": result.steps,
        "final_loss": result.final_loss, "teacher_top1": teacher_top1, "rows": rows,
    }  # fmt: skip
    if state.is_main_process:
        extra = {"val_top1": {"1": rows[0]["top1"]}, "teacher_top1": teacher_top1}
        save_quant_model(out / "model", student, spec, config, extra)
        save_json(out / "result.json", summary)
    return summary


def _rows_human(result: dict[str, Any]) -> str:
    lines = [f"{'bits':>4}  {'top-1':>7}  {'body MACs':>12}  {'body BOPs':>14}"]
    for r in result["rows"]:
        lines.append(f"{r['bits']:>4}  {100 * r['top1']:>6.2f}%  {r['body_macs']:>12,}  {r['body_bops']:>14,}")
    head = f"{result.get('method', '')} {result.get('model', '')} on {result.get('data', '')}".strip()
    if "teacher_top1" in result:
        lines.append(f"FP teacher top-1 {100 * result['teacher_top1']:.2f}%")
    return head + "\n" + "\n".join(lines)


# --------------------------------------------------------------------------- eval / bops / demo


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    model, spec, config, _ = load_quant_model(args.checkpoint)
    trained = _bit_list(config)
    bits = _bits(args.bits) if args.bits else trained
    if trained is None and args.bits:
        raise BadInputError(f"{type(config).__name__} runs at one bit-width; leave out --bits")
    unknown = [b for b in bits or () if b not in (trained or ())]
    if unknown:
        raise BadInputError(f"--bits {unknown} not in the trained bit_list {list(trained or ())}")
    if args.data in DATASETS:
        data = resolve_dataset(args.data, args.split, spec.image_size, spec.in_chans, args.seed)
    else:
        check_input_dir(args.data, "--data folder")
        data = image_folder(args.data, spec.image_size, spec.in_chans)
    model.eval()
    bivit = isinstance(config, BiViTConfig)
    rows = bits_report(model, data, bits, spec.image_size, layer_bits(model) if bivit else None)
    method = type(config).__name__.removesuffix("Config")
    return {"checkpoint": str(args.checkpoint), "method": method, "model": spec.name, "data": args.data, "rows": rows}


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    target = check_output_file(args.output, (".safetensors",))
    model, _, config, _ = load_quant_model(args.checkpoint)
    report = export(model.eval(), target, config)
    return {"checkpoint": str(args.checkpoint), "output": str(target), **report.to_dict()}


def _export_human(result: dict[str, Any]) -> str:
    return (
        f"{result['output']}: quantized weights {result['weights_fp32_bytes']:,} B fp32 -> "
        f"{result['weights_exported_bytes']:,} B packed ({result['compression']:.1f}x, "
        f"{result['bits_per_weight']:.2f} bits/weight); file {result['file_bytes']:,} B"
    )


def cmd_bops(args: argparse.Namespace) -> dict[str, Any]:
    at_least("image-size", args.image_size, 4)
    if args.method == "bivit":
        if args.model in BUILTIN_MODELS:
            raise BadInputError(f"--method bivit counts a timm ViT (e.g. --model deit_tiny_patch16_224); {args.model!r} is a CNN")
        return vit_ops(args.model, args.image_size)
    at_least("channels", args.channels, 1)
    at_least("num-classes", args.num_classes, 1)
    config = _multiquant_config(args)
    model: nn.Module = load_model(args.model, num_classes=args.num_classes, in_chans=args.channels)
    x = torch.zeros(1, args.channels, args.image_size, args.image_size)
    fp = count_ops(model.eval(), x)
    multiquant(model, config)
    original = {r.name: r.macs for r in fp.rows}
    rows = []
    for bits in config.bit_list:
        set_bits(model, bits)
        ops = count_ops(model.eval(), x)
        quant = [r for r in ops.rows if not r.is_fp]
        macs = sum(original.get(r.name.replace(".base_layer", ""), 0) for r in quant)
        rows.append({
            "bits": bits, "quantized_macs": macs, "bops": ops.bops, "bops_over_macs": ops.bops / max(1, macs),
            "fp_flops": ops.fp_flops, "ops": ops.ops,
        })  # fmt: skip
    assert current_bits(model) == config.bit_list[-1]
    return {"model": args.model, "image_size": args.image_size, "fp_macs": fp.macs, "rows": rows}


def _bops_human(result: dict[str, Any]) -> str:
    if "ratio" in result:  # Bi-ViT: FP FLOPs vs binary OPs
        return (f"{result['model']} at {result['img_size']}: FP {result['fp_model']['fp_flops']:,} FLOPs; Bi-ViT "
                f"{result['bivit']['ops']:,.0f} OPs = {result['bivit']['fp_flops']:,} FP FLOPs + "
                f"{result['bivit']['bops']:,} BOPs / 64: {result['ratio']:.1f}x fewer (paper: {result['paper_ratio']}x)")
    lines = [f"{result['model']} at {result['image_size']}x{result['image_size']}: FP {result['fp_macs']:,} MACs"]
    for r in result["rows"]:
        lines.append(f"{r['bits']}-bit: {r['bops']:,} BOPs = {r['bops_over_macs']:.1f} x quantized MACs")
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Post-training quantization of an SR network (a saved EDSR, or ``--arch`` + weights):
    calibrate, score FP and quantized, write the packed model."""
    target = check_output_file(args.output, (".safetensors",))
    for name in ("patches", "patch-size", "calib-batch", "eval-max-size"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    include = [g.strip() for g in args.include.split(",") if g.strip()] if args.include else None
    exclude = [g.strip() for g in args.exclude.split(",") if g.strip()] if args.exclude else []
    config = DFSQConfig(bits=args.bits, w_bits=args.w_bits, activation=DFSQ_METHODS[args.method], seed=args.seed,
                        include=include, exclude=exclude)  # fmt: skip
    for folder, what in ((args.calib_data, "--calib-data folder"), (args.eval_data, "--eval-data folder")):
        if folder is not None:
            check_input_dir(folder, what)
    if args.arch is None:
        if args.scale is not None or args.arch_kwargs is not None:
            raise BadInputError("--scale and --arch-kwargs go with --arch (a saved EDSR knows its scale)")
        model: nn.Module = load_sr_model(args.checkpoint)[0]
        scale = int(model.scale)  # type: ignore[arg-type]
    else:
        model = load_user_sr_model(args.arch, args.checkpoint, args.arch_kwargs)
        given: Any = args.scale if args.scale is not None else getattr(model, "scale", None)
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise BadInputError("--scale: the upscaling factor of the --arch model (it has no integer .scale)")
        scale = given
    pairs = sr_eval_pairs("test", scale, max_size=args.eval_max_size, folder=args.eval_data)
    cal = sr_patches("train", scale, args.patch_size, args.patches, seed=args.seed, augment=False, folder=args.calib_data)
    batches = list(first_inputs(cal).split(args.calib_batch))
    fp = evaluate_psnr(model, pairs, scale)
    dfsq(model, batches, config)
    quant = evaluate_psnr(model, pairs, scale)
    report = export(model, target, config)
    return {
        "checkpoint": str(args.checkpoint), "method": args.method, "bits": args.bits, "output": str(target),
        "images": len(pairs), "calibration_patches": len(cal),
        "fp": {"psnr": fp["psnr"], "ssim": fp["ssim"]}, "quantized": {"psnr": quant["psnr"], "ssim": quant["ssim"]},
        "gap_db": quant["psnr"] - fp["psnr"], "export": report.to_dict(),
    }  # fmt: skip


def _calibrate_human(r: dict[str, Any]) -> str:
    return (
        f"{r['method']} W{r['bits']}A{r['bits']} on {r['images']} images: PSNR {r['fp']['psnr']:.3f} dB FP -> "
        f"{r['quantized']['psnr']:.3f} dB ({r['gap_db']:+.3f}); packed model {r['output']} "
        f"({r['export']['bits_per_weight']:.2f} bits per quantized weight)"
    )


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    return bench_command(args, lambda device, quick, repeats: run_benchmarks(
        device, BenchSizes.quick() if quick else BenchSizes(), repeats=repeats))


def _csv(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BadInputError(f"{what} is empty")
    return items


def cmd_table(args: argparse.Namespace) -> dict[str, Any]:
    try:
        seeds = [int(x) for x in _csv(args.seeds, "--seeds")]
    except ValueError:
        raise BadInputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    methods = _csv(args.methods, "--methods")
    unknown = [m for m in methods if m not in TABLE_METHODS]
    if unknown:
        raise BadInputError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(TABLE_METHODS)}")
    MultiQuantConfig(bit_list=_bits(args.bits))  # the same bit-width rules as train
    at_least("image-size", args.image_size, 4)
    if args.data not in DATASETS:
        raise BadInputError(f"--data must be one of {', '.join(DATASETS)}, got {args.data!r}")
    settings = MultiBitTableSettings(
        data=args.data, image_size=args.image_size, bits=_bits(args.bits), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr,
    )  # fmt: skip
    output = None
    if args.output:
        check_output_dir(args.output, KIND_TABLE)
        output = claim_output_dir(args.output, KIND_TABLE)
    return multibit_table(settings, seeds, methods, output=output, show_progress=not args.json)


def _settings_table(args: argparse.Namespace, settings_cls: Any, run: Any, kind: str) -> dict[str, Any]:
    """A table whose flags are its settings dataclass: parse, check and claim the output, run."""
    settings = settings_from_args(settings_cls, args)
    output = None
    if args.output:
        check_output_dir(args.output, kind)
        output = claim_output_dir(args.output, kind)
    result: dict[str, Any] = run(settings, output=output, show_progress=not args.json)
    return result


def cmd_dfsq_table(args: argparse.Namespace) -> dict[str, Any]:
    return _settings_table(args, DFSQTableSettings, dfsq_table, KIND_DFSQ_TABLE)


def cmd_bivit_table(args: argparse.Namespace) -> dict[str, Any]:
    return _settings_table(args, BiViTTableSettings, bivit_table, KIND_BIVIT_TABLE)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    at_least("steps", args.steps, 1)
    out = Path(args.output)
    claim_output_dir(out, KIND_DEMO)
    clear_run(out)
    return run_demo(out, steps=args.steps, seed=args.seed)


# --------------------------------------------------------------------------- parser


def _add_model_options(p: argparse.ArgumentParser, model_default: str | None = "small_resnet") -> None:
    p.add_argument("--model", default=model_default,
                   help=f"{', '.join(BUILTIN_MODELS)}, or a timm / torchvision name (default: small_resnet; "
                        "with --method bivit a timm ViT, default a 4-block ViT with 4x4 patches)")
    p.add_argument("--bits", default="2,4,6,8", help="comma-separated bit-widths 2..8; odd ones add the narrow branch (default: 2,4,6,8)")
    p.add_argument("--groups", type=int, default=4, help="branches G (default: 4)")
    p.add_argument("--selection", default="amortized", choices=("amortized", "prefix"))
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--no-shuffle", action="store_true", help="no channel shuffle after downsampling BasicBlocks")


def build_parser() -> argparse.ArgumentParser:
    """The ``arbitrary-quant`` parser; every subcommand carries its handler as ``func``."""
    parser, sub = make_parser(PROG, "Arbitrary-bit quantization: MultiQuant, DFSQ, Bi-ViT", __version__)

    p = add_common(sub.add_parser("train", help="train MultiQuant (every bit-width on every batch) or a baseline"))
    p.add_argument("--method", default="multiquant", choices=METHODS,
                   help="multiquant, any-precision (shared weights, DoReFa), lsq (one bit-width) or bivit (binary ViT)")
    _add_model_options(p, model_default=None)
    p.add_argument("--teacher", default=None, help="bivit: FP weights of --model (.safetensors/.pt or a folder "
                   "holding model.safetensors); without it the teacher is trained first for --teacher-steps")
    p.add_argument("--teacher-steps", type=int, default=600, help="bivit: FP teacher steps without --teacher (600)")
    p.add_argument("--attention", default="learnable", choices=("learnable", "sign"),
                   help="bivit: Bi-ViT's learnable attention scale, or plain sign")
    p.add_argument("--distill", default="ranking", choices=DISTILL,
                   help="bivit: logit KD + attention ranking loss (ranking), logit KD only, or none")
    p.add_argument("--data", default="digits", help=f"{', '.join(DATASETS)} or an image folder with class subfolders")
    p.add_argument("--val-data", default=None, help="held-out image folder (named sets use their own split)")
    p.add_argument("--image-size", type=int, default=None, help="default: 8 for small_resnet on digits, else 32")
    p.add_argument("--channels", type=int, default=None, help="default: 1 on digits, else 3")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--bounds-lr", type=float, default=1e-4, help="Adam lr of the quantizer bounds (official 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of this run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, metrics, model/, result.json)")
    p.set_defaults(func=lambda a: report(cmd_train(a), a, _rows_human))

    p = add_common(sub.add_parser("eval", help="top-1 of a trained model at every (or the given) bit-width"))
    p.add_argument("checkpoint", help="model folder written by train (RUN/model) or its model.safetensors")
    p.add_argument("--data", default="digits", help=f"{', '.join(DATASETS)} or an image folder")
    p.add_argument("--split", default="val", choices=("val", "test"), help="split of a named set (default: val)")
    p.add_argument("--bits", default=None, help="comma-separated bit-widths (default: every trained one)")
    p.set_defaults(func=lambda a: report(cmd_eval(a), a, _rows_human))

    p = add_common(sub.add_parser("export", help="write packed integer / sign-bit weights plus scales (safetensors)"))
    p.add_argument("checkpoint", help="model folder written by train (RUN/model) or its model.safetensors")
    p.add_argument("--output", "-o", required=True, help="the .safetensors file to write")
    p.set_defaults(func=lambda a: report(cmd_export(a), a, _export_human))

    p = add_common(sub.add_parser("bops", help="MACs, BOPs and OPs: a CNN made MultiQuant per bit-width, or a timm ViT made Bi-ViT"))
    p.add_argument("--method", default="multiquant", choices=("multiquant", "bivit"))
    _add_model_options(p)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=lambda a: report(cmd_bops(a), a, _bops_human))

    p = add_common(sub.add_parser("table", help="MultiQuant vs Any-Precision vs per-bit LSQ: top-1 per bit-width over seeds"))
    defaults = MultiBitTableSettings()
    p.add_argument("--data", default=defaults.data, help=f"{', '.join(DATASETS)}")
    p.add_argument("--image-size", type=int, default=defaults.image_size)
    p.add_argument("--bits", default=",".join(map(str, defaults.bits)))
    p.add_argument("--methods", default=",".join(TABLE_METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--output", "-o", default=None, help="folder for results.json and table.md")
    p.set_defaults(func=lambda a: report(cmd_table(a), a, lambda r: r["markdown"]))

    p = add_common(sub.add_parser("calibrate", help="post-training quantization of an SR network (DFSQ or a baseline)"))
    p.add_argument("checkpoint", help="EDSR folder written by arbitrary_quant.sr_training.save_sr_model, or with "
                   "--arch the weights file (.safetensors / .pth) of your network")
    p.add_argument("--arch", default=None, help="your SR network's builder, MODULE:CALLABLE (importable here)")
    p.add_argument("--arch-kwargs", default=None, help="JSON object of keyword arguments for --arch")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor of the --arch network (default: its .scale)")
    p.add_argument("--include", default=None, help="comma-separated globs of the convs to quantize "
                   "(default: the two convs of every residual block, found structurally)")
    p.add_argument("--exclude", default=None, help="comma-separated globs of convs to leave in FP")
    p.add_argument("--method", default="dfsq", choices=tuple(DFSQ_METHODS))
    p.add_argument("--bits", type=int, default=4, help="activation (and weight) bits (default: 4)")
    p.add_argument("--w-bits", type=int, default=None, help="weight bits (default: --bits)")
    p.add_argument("--calib-data", default=None, help="HR image folder for calibration (default: the bundled photos)")
    p.add_argument("--eval-data", default=None, help="HR image folder to score (default: the bundled held-out photos)")
    p.add_argument("--eval-max-size", type=int, default=None, help="centre-crop evaluation images to this HR side")
    p.add_argument("--patches", type=int, default=32, help="calibration LR patches (official: 32)")
    p.add_argument("--patch-size", type=int, default=48, help="HR patch side")
    p.add_argument("--calib-batch", type=int, default=16)
    p.add_argument("--output", "-o", required=True, help="the packed .safetensors to write")
    p.set_defaults(func=lambda a: report(cmd_calibrate(a), a, _calibrate_human))

    p = add_common(sub.add_parser("dfsq-table", help="DFSQ vs MinMax vs Percentile PTQ of a trained EDSR: PSNR per bit-width"))
    add_settings_flags(p, DFSQTableSettings())
    p.add_argument("--output", "-o", default=None, help="folder for results.json and table.md")
    p.set_defaults(func=lambda a: report(cmd_dfsq_table(a), a, lambda r: r["markdown"]))

    p = add_common(sub.add_parser("bivit-table", help="Bi-ViT ablation: FP teacher, sign, + learnable scale, + ranking KD"))
    add_settings_flags(p, BiViTTableSettings())
    p.add_argument("--output", "-o", default=None, help="folder for results.json and table.md")
    p.set_defaults(func=lambda a: report(cmd_bivit_table(a), a, lambda r: r["markdown"]))

    p = add_common(sub.add_parser("bench", help="kernel timings: packed / binary matmul and the DFSQ quantizer vs PyTorch"))
    p.add_argument("--quick", action="store_true", help="small sizes (seconds on a laptop)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--output", "-o", default=None, help="also write the JSON result here (.json)")
    p.set_defaults(func=lambda a: report(cmd_bench(a), a, rows_text))

    p = add_common(sub.add_parser("demo", help="the quickstart: MultiQuant on digits at 2/4/6/8 bits (under a minute)"))
    p.add_argument("--output", "-o", default="arbitrary-quant-demo")
    p.add_argument("--steps", type=int, default=150)
    p.set_defaults(func=lambda a: report(cmd_demo(a), a, lambda r: json.dumps(r, indent=2)))
    return parser


main = dispatching_main(build_parser, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
