"""``nm-sparse`` console script: train, deploy, inspect, bench, table.

* ``train``: a built-in/timm/torchvision model on digits or an image folder, any method and
  pattern, through slimkit.train (accelerate; ``accelerate launch -m nm_sparse.cli train``
  works), with checkpoints and ``--resume``;
* ``deploy``: trained checkpoint -> plain model with the N:M weights (BNs folded), checked;
* ``inspect``: N:M validity per layer and a heatmap of sparsity per kernel position;
* ``bench``: kernels vs plain PyTorch (and semi-structured 2:4 on a GPU);
* ``table``: the digits accuracy table (methods x patterns x seeds).

Every subcommand takes ``--json``, ``--device`` and ``--seed``; bad input is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nm_sparse.config import METHODS, NMConfig
from nm_sparse.masks import LAYOUTS, SCORERS
from slimkit.cli import add_common, emit, format_table, make_parser, resolve_device, run_main
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict, load_json, load_state_dict, save_json

PROG = "nm-sparse"


def _version() -> str:
    from nm_sparse import __version__

    return __version__


# --------------------------------------------------------------------------- parser


def _add_nm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="srste", choices=METHODS, help="sparsification method (default: srste)")
    p.add_argument("--pattern", default="2:4", help="N:M with N kept per group of M (default: 2:4)")
    p.add_argument("--layout", default="cin", choices=LAYOUTS, help="conv grouping: cin (deployable) or flat")
    p.add_argument("--decay", type=float, default=2e-4, help="SR-STE decay on pruned weights (default: 2e-4)")
    p.add_argument("--include", action="append", default=None, help="only these layers (glob; repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="skip these layers (glob; repeatable)")
    p.add_argument("--sparse-first", action="store_true", help="also sparsify the first conv")
    p.add_argument("--sparse-last", action="store_true", help="also sparsify the last Linear (classifier)")
    p.add_argument("--bimask-candidates", type=int, default=10, help="Bi-Mask K random permutations (default: 10)")
    p.add_argument("--bimask-interval", type=int, default=100, help="Bi-Mask search period T in steps (default: 100)")
    p.add_argument("--bimask-scorer", default="kept", choices=SCORERS, help="Bi-Mask permutation score")
    p.add_argument("--spre-branch-init", default="kaiming", choices=("kaiming", "copy", "zeros"))


def _nm_config(args: argparse.Namespace) -> NMConfig:
    return NMConfig(
        method=args.method,
        pattern=args.pattern,
        layout=args.layout,
        decay=args.decay,
        include=args.include,
        exclude=list(args.exclude),
        keep_first_dense=not args.sparse_first,
        keep_last_dense=not args.sparse_last,
        bimask_candidates=args.bimask_candidates,
        bimask_interval=args.bimask_interval,
        bimask_scorer=args.bimask_scorer,
        spre_branch_init=args.spre_branch_init,
        seed=args.seed,
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = make_parser(PROG, "N:M sparse training (SR-STE, SpRe, Bi-Mask) and deployment", _version())

    p = add_common(sub.add_parser("train", help="train a model with an N:M method"))
    p.add_argument("--model", default="small_resnet", help="small_resnet, small_resnet_wide, or a timm/torchvision name")
    p.add_argument("--data", default="digits", help="'digits' (bundled) or an image folder with class subfolders")
    p.add_argument("--val-data", default=None, help="validation image folder (digits: its own held-out split)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: 8 for small_resnet, else 32)")
    p.add_argument("--channels", type=int, default=None, choices=(1, 3), help="input channels (default: 1 on digits with small_resnet, else 3)")
    p.add_argument("--num-classes", type=int, default=None, help="default: 10 for digits, else the folder's class count")
    p.add_argument("--output", "-o", default="nm-sparse-run", help="run folder (default: nm-sparse-run)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of this run")
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_nm_options(p)
    _add_train_options(p)

    p = add_common(sub.add_parser("deploy", help="checkpoint -> plain N:M model (safetensors + config.json)"))
    p.add_argument("checkpoint", help="run folder, model folder or checkpoint folder")
    p.add_argument("--output", "-o", required=True, help="folder for model.safetensors + config.json")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorms (SpRe branches are always folded)")

    p = add_common(sub.add_parser("inspect", help="N:M validity per layer and a per-kernel-position sparsity heatmap"))
    p.add_argument("checkpoint", help="trained or deployed model (folder or .safetensors)")
    p.add_argument("--plot", default=None, help="write the heatmap PNG here")
    p.add_argument("--pattern", default=None, help="check every Linear/Conv against this N:M too")

    p = add_common(sub.add_parser("bench", help="mask / permutation-scoring / compressed-matmul timings"))
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds on a laptop)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--output", "-o", default=None, help="also write the JSON result here")

    p = add_common(sub.add_parser("table", help="digits top-1 table over methods, patterns and seeds"))
    p.add_argument("--methods", default="dense,unstructured,asp,srste,spre,bimask")
    p.add_argument("--patterns", default="2:4,1:4")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--model", default="small_resnet")
    p.add_argument("--output", "-o", default=None, help="folder for results.json and table.md")
    p.add_argument("--bimask-interval", type=int, default=50)
    p.add_argument("--bimask-candidates", type=int, default=10)
    _add_train_options(p)
    return parser


# --------------------------------------------------------------------------- train


def _datasets(args: argparse.Namespace, image_size: int, channels: int) -> tuple[Any, Any]:
    from slimkit.data import digits, image_folder

    train_set: Any
    val_set: Any
    if args.data == "digits":
        train_set = digits("train", size=image_size, channels=channels, seed=args.seed)
        val_set = digits("val", size=image_size, channels=channels, seed=args.seed)
        return train_set, val_set
    if not Path(args.data).is_dir():
        raise BadInputError(f"--data must be 'digits' or an existing folder, got {args.data!r}")
    train_set = image_folder(args.data, image_size, channels)
    val_set = image_folder(args.val_data, image_size, channels) if args.val_data else None
    return train_set, val_set


def _num_classes(dataset: Any, fallback: int = 10) -> int:
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes else fallback


def _check_resume(out: Path, resume: str, run: dict[str, Any]) -> None:
    """A resumed run must be the same run, and its checkpoint weights must be readable."""
    from slimkit.train import find_latest_checkpoint

    previous = out / "run.json"
    if previous.is_file():
        old = load_json(previous)
        if not isinstance(old, dict) or old.get("model") != run["model"] or old.get("config") != run["config"]:
            raise BadInputError(f"--resume: {out} was trained with a different model or NMConfig")
    ckpt = find_latest_checkpoint(out) if resume == "latest" else Path(resume)
    if ckpt is None:
        raise BadInputError(f"--resume latest: no checkpoint under {out / 'checkpoints'}")
    if not ckpt.is_dir():
        raise BadInputError(f"--resume: checkpoint folder not found: {ckpt}")
    if (ckpt / "model.safetensors").is_file():
        load_state_dict(ckpt / "model.safetensors")  # CorruptFileError for a damaged file


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from accelerate import PartialState

    from nm_sparse.models import STAGE_TRAINED, ModelSpec, evaluate, fit, save_sparse_model
    from slimkit.train import TrainConfig

    device = resolve_device(args.device)
    builtin = args.model.startswith("small_resnet")
    image_size = args.image_size or (8 if builtin else 32)
    channels = args.channels or (1 if builtin and args.data == "digits" else 3)
    config = _nm_config(args)
    train_set, val_set = _datasets(args, image_size, channels)
    num_classes = args.num_classes or _num_classes(train_set)
    spec = ModelSpec(args.model, num_classes, channels, image_size)
    out = Path(args.output)
    train_config = TrainConfig(
        output_dir=str(out),
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        resume_from=args.resume,
        num_workers=args.num_workers,
        progress=not (args.no_progress or args.json),
        cpu=device.type == "cpu",
    )
    run = {"model": asdict(spec), "config": config_to_dict(config), "data": args.data}
    if args.resume:
        _check_resume(out, args.resume, run)
    torch.manual_seed(args.seed)
    model = spec.build()
    state = PartialState()
    if state.is_main_process:
        save_json(out / "run.json", {**run, "train": config_to_dict(train_config)})
    result, report = fit(model, train_set, train_config, config)
    summary: dict[str, Any] = {
        "output": str(out),
        "model": args.model,
        "method": config.method,
        "pattern": config.pattern,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "sparsified_layers": len(report["layers"]),
        "skipped_layers": len(report["skipped"]),
    }
    if state.is_main_process:
        model.to(device)
        if val_set is not None:
            summary["val_top1"] = evaluate(model, val_set, device=device)
        model.cpu()
        saved = save_sparse_model(out / "model", model, spec, config, STAGE_TRAINED, {"val_top1": summary.get("val_top1")})
        summary["model_dir"] = str(saved)
        summary["checkpoint"] = result.checkpoint_dir
    return summary


# --------------------------------------------------------------------------- deploy / inspect


def _sample_input(spec: Any, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, spec.in_chans, spec.image_size, spec.image_size, generator=gen)


def cmd_deploy(args: argparse.Namespace) -> dict[str, Any]:
    from nm_sparse.deploy import deploy
    from nm_sparse.models import STAGE_DEPLOYED, load_sparse_model, save_sparse_model

    model, spec, config, stage = load_sparse_model(args.checkpoint)
    if stage == STAGE_DEPLOYED:
        raise BadInputError(f"{args.checkpoint} is already deployed")
    x = _sample_input(spec, args.seed)
    with torch.no_grad():
        before = model(x)
    report = deploy(model, fold_bn=not args.no_fold_bn)
    with torch.no_grad():
        after = model(x)
    diff = float((before - after).abs().max())
    saved = save_sparse_model(
        args.output, model, spec, config, STAGE_DEPLOYED,
        {"fold_bn": not args.no_fold_bn, "all_valid": report.check.all_valid, "max_abs_diff": diff},
    )  # fmt: skip
    return {
        "output": str(saved),
        "files": [str(saved / "model.safetensors"), str(saved / "config.json")],
        "method": config.method,
        "pattern": config.pattern,
        "deployed_layers": len(report.layers),
        "folded_bn": len(report.folded_bn),
        "all_valid": report.check.all_valid,
        "sparsity": report.check.sparsity,
        "max_abs_diff": diff,
    }


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    from nm_sparse.check import check
    from nm_sparse.inspect_plot import position_sparsity, save_heatmap
    from nm_sparse.models import STAGE_DEPLOYED, load_sparse_model

    model, _, config, stage = load_sparse_model(args.checkpoint)
    report = check(model, pattern=args.pattern)
    n, m = config.n, config.m
    rows = position_sparsity(model, n, m)
    result: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "stage": stage,
        "method": config.method,
        "pattern": config.pattern,
        "all_valid": report.all_valid,
        "sparsity": report.sparsity,
        "layers": [
            {
                "name": layer.name,
                "type": layer.type,
                "shape": "x".join(str(s) for s in layer.shape),
                "pattern": layer.pattern,
                "valid": layer.valid,
                "max_nz_per_group": layer.max_nonzeros_per_group,
                "sparsity": round(layer.sparsity, 4),
            }
            for layer in report.layers
        ],
        "kernel_positions": rows,
    }
    if args.plot:
        title = f"{config.method} {config.pattern} ({stage}): sparsity per kernel position"
        if stage == STAGE_DEPLOYED:
            title += " (no dense weights left: inspect the training run to compare with unstructured)"
        result["plot"] = str(save_heatmap(rows, args.plot, title))
    return result


def _inspect_human(result: dict[str, Any]) -> str:
    head = (
        f"{result['method']} {result['pattern']} ({result['stage']}): "
        f"{'valid' if result['all_valid'] else 'INVALID'}, sparsity {result['sparsity']:.3f}"
    )
    lines = [head, format_table(result["layers"])]
    if "plot" in result:
        lines.append(f"heatmap: {result['plot']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- bench / table


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from nm_sparse.bench import BenchSizes, run_benchmarks
    from nm_sparse.pattern import parse_pattern

    pattern = parse_pattern(args.pattern)
    if args.repeats < 1:
        raise BadInputError("--repeats must be >= 1")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    sizes = BenchSizes.quick() if args.quick else BenchSizes()
    result = run_benchmarks(device, pattern.n, pattern.m, sizes, repeats=args.repeats)
    if args.output:
        save_json(args.output, result)
    return result


def _bench_human(result: dict[str, Any]) -> str:
    cols = ["section", "shape", "name", "median_s", "ratio_vs_baseline", "reason"]
    rows = [{c: r.get(c, "") for c in cols} for r in result["rows"]]
    return f"{result['env']['device']}, pattern {result['pattern']}, {result['dtype']}\n" + format_table(rows, cols)


def _csv(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BadInputError(f"{what} must not be empty")
    return items


def cmd_table(args: argparse.Namespace) -> dict[str, Any]:
    from nm_sparse.bench import accuracy_table
    from nm_sparse.pattern import parse_pattern

    methods = _csv(args.methods, "--methods")
    for method in methods:
        if method not in METHODS:
            raise BadInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    patterns = [str(parse_pattern(p)) for p in _csv(args.patterns, "--patterns")]
    try:
        seeds = [int(s) for s in _csv(args.seeds, "--seeds")]
    except ValueError:
        raise BadInputError(f"--seeds must be integers, got {args.seeds!r}") from None
    device = resolve_device(args.device)
    result = accuracy_table(
        methods,
        patterns,
        seeds,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        bimask_interval=args.bimask_interval,
        bimask_candidates=args.bimask_candidates,
        device=device,
        output=Path(args.output) if args.output else None,
    )
    return result


# --------------------------------------------------------------------------- main


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from accelerate import PartialState

        summary = cmd_train(args)
        if PartialState().is_main_process:  # one report under `accelerate launch`
            emit(summary, args.json)
    elif args.command == "deploy":
        emit(cmd_deploy(args), args.json)
    elif args.command == "inspect":
        result = cmd_inspect(args)
        emit(result, args.json, _inspect_human)
        return 0 if result["all_valid"] else 1
    elif args.command == "bench":
        emit(cmd_bench(args), args.json, _bench_human)
    elif args.command == "table":
        emit(cmd_table(args), args.json, lambda r: r["markdown"])
    return 0


main = run_main(_body, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
