"""``nm-sparse`` console script: train, deploy, inspect, bench, table, demo.

* ``train``: a built-in/timm/torchvision model on digits or an image folder, any method and
  pattern, through slimkit.train (accelerate; ``accelerate launch -m nm_sparse.cli train``
  works), with checkpoints and ``--resume``;
* ``deploy``: trained checkpoint -> plain model with the N:M weights (BNs folded), checked;
* ``inspect``: N:M validity per layer and a heatmap of sparsity per kernel position;
* ``bench``: kernels vs plain PyTorch (and semi-structured 2:4 on a GPU);
* ``table``: the digits accuracy table (methods x patterns x seeds);
* ``demo``: the quickstart (SR-STE 2:4 on digits, deployed, checked, heatmap).

Every subcommand takes ``--json``, ``--device`` and ``--seed``; bad input is one line on
stderr and exit code 2. Check first, write second: every subcommand validates all its
arguments, inputs and output paths (:mod:`slimkit.paths`) before it writes its first file.
Output folders are reused only when they hold the same kind of output (a re-run, a resume);
single-file outputs must have the extension of the format written (``--plot`` ``.png``,
``bench -o`` ``.json``) and an existing file is replaced atomically.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nm_sparse import __version__
from nm_sparse.api import sparsify
from nm_sparse.bench import BenchSizes, run_benchmarks
from nm_sparse.callbacks import NMSparseCallback
from nm_sparse.check import check
from nm_sparse.checkpoints import (
    RUN_FILE,
    STAGE_DEPLOYED,
    STAGE_TRAINED,
    ModelSpec,
    load_sparse_model,
    read_config,
    save_sparse_model,
)
from nm_sparse.config import BRANCH_INITS, METHODS, NMConfig, as_method_config
from nm_sparse.deploy import deploy
from nm_sparse.fitting import evaluate
from nm_sparse.inspect_plot import position_sparsity, save_heatmap
from nm_sparse.pattern import parse_pattern
from nm_sparse.quickstart import run as run_demo
from nm_sparse.reference import LAYOUTS, SCORERS
from nm_sparse.sparsify import SparsifyReport
from nm_sparse.sweep import accuracy_table
from nm_sparse.zoo import load_model
from slimkit.cli import (
    add_common,
    at_least,
    dispatching_main,
    emit,
    format_table,
    make_parser,
    positive,
    resolve_device,
    train_val_datasets,
)
from slimkit.data import DATASETS
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict, load_json, load_state_dict, save_json
from slimkit.paths import OUTPUT_MARKER, check_output_dir, check_output_file, claim_output_dir
from slimkit.train import TrainConfig, find_latest_checkpoint, process_state, read_checkpoint_marker, train

__all__ = ["PROG", "build_parser", "main"]

PROG = "nm-sparse"
KIND_TRAIN = "nm-sparse train"
KIND_DEPLOY = "nm-sparse deploy"
KIND_TABLE = "nm-sparse table"
KIND_DEMO = "nm-sparse demo"


# --------------------------------------------------------------------------- validation helpers


def _wait_for_everyone() -> None:
    process_state().wait_for_everyone()


def _is_main_process() -> bool:
    return bool(process_state().is_main_process)


# --------------------------------------------------------------------------- parser pieces


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
    p.add_argument("--spre-branch-init", default="kaiming", choices=BRANCH_INITS)


def _nm_config(args: argparse.Namespace) -> NMConfig:
    """The config the flags describe, in the flat form (saved as such in run.json / config.json).

    ``nm_sparse.sparsify`` converts it to the per-method config; saving the flat form keeps run
    folders readable by 0.1 as well.
    """
    at_least("bimask-candidates", args.bimask_candidates, 1)
    at_least("bimask-interval", args.bimask_interval, 1)
    if args.decay < 0:
        raise BadInputError(f"--decay must be >= 0, got {args.decay}")
    flat = NMConfig(
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
    return flat


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=0)


def _check_train_options(args: argparse.Namespace) -> None:
    at_least("steps", args.steps, 1, "max_steps")
    at_least("batch-size", args.batch_size, 1)
    positive("lr", args.lr)
    at_least("weight-decay", args.weight_decay, 0)
    at_least("warmup-steps", args.warmup_steps, 0)


# --------------------------------------------------------------------------- train


def _num_classes(dataset: Any, fallback: int = 10) -> int:
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes else fallback


def _same_config(old: Any, new: NMConfig, where: Path) -> bool:
    """Whether a run.json config entry applies what ``new`` applies (flat or per-method, compared per method)."""
    try:
        config = read_config(old, where)
    except BadInputError:
        return False
    return config_to_dict(as_method_config(config)) == config_to_dict(new.to_method_config())


def _check_resume(out: Path, resume: str, run: dict[str, Any], config: NMConfig, max_steps: int) -> None:
    """A resumed run must be the same run, and its checkpoint must be complete and readable."""
    previous = out / RUN_FILE
    if previous.is_file():
        old = load_json(previous)
        if (
            not isinstance(old, dict)
            or old.get("model") != run["model"]
            or not _same_config(old.get("config"), config, previous)
        ):
            raise BadInputError(f"--resume: {out} was trained with a different model or config")
    if resume == "latest":
        ckpt = find_latest_checkpoint(out) if out.is_dir() else None
        if ckpt is None:
            raise BadInputError(f"nothing to resume in {out}")
    else:
        ckpt = Path(resume)
        if not ckpt.is_dir():
            raise BadInputError(f"--resume: checkpoint folder not found: {ckpt}")
        if read_checkpoint_marker(ckpt) is None:
            raise BadInputError(f"--resume: not a complete slimkit checkpoint: {ckpt}")
    marker = read_checkpoint_marker(ckpt)
    if marker is not None and marker.get("step", 0) > max_steps:
        raise BadInputError(
            f"cannot resume {ckpt} (step {marker['step']}) with --steps {max_steps}: use --steps >= {marker['step']}"
        )
    if (ckpt / "model.safetensors").is_file():
        load_state_dict(ckpt / "model.safetensors")  # CorruptFileError for a damaged file


def _check_train_output(out: Path) -> bool:
    """Validate the run folder; True when it is a 0.1 run folder (run.json, no output marker)."""
    legacy = out.is_dir() and (out / RUN_FILE).is_file() and not (out / OUTPUT_MARKER).exists()
    if not legacy:
        check_output_dir(out, KIND_TRAIN)
    return legacy


def _require_sparsified(report: SparsifyReport, method: str, model: str) -> None:
    """A sparse method that could wrap no layer would train (and save) a dense model: refuse it."""
    if method == "dense" or report.layers:
        return
    refused = [s for s in report.skipped if "kept dense" not in s.reason] or report.skipped
    why = "; ".join(f"{s.name}: {s.reason}" for s in refused[:2]) or "no Linear/Conv layer"
    raise BadInputError(f"{method} {report.pattern} applies to no layer of {model} ({why})")


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    _check_train_options(args)
    at_least("checkpoint-every", args.checkpoint_every, 0)
    at_least("num-workers", args.num_workers, 0)
    if args.image_size is not None:
        at_least("image-size", args.image_size, 1)
    if args.num_classes is not None:
        at_least("num-classes", args.num_classes, 1)
    config = _nm_config(args)
    device = resolve_device(args.device)
    out = Path(args.output)
    legacy = _check_train_output(out)
    builtin = args.model.startswith("small_resnet")
    generated = args.data in DATASETS and args.data != "digits"  # crops, cluttered-digits: 32x32 RGB
    image_size = args.image_size or (8 if builtin and not generated else 32)
    channels = args.channels or (1 if builtin and args.data == "digits" else 3)
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
    train_set, val_set = train_val_datasets(args.data, args.val_data, image_size, channels, args.seed)
    num_classes = args.num_classes or _num_classes(train_set)
    spec = ModelSpec(args.model, num_classes, channels, image_size)
    run = {"model": asdict(spec), "config": config_to_dict(config), "data": args.data}
    if args.resume:
        _check_resume(out, args.resume, run, config, args.steps)
    torch.manual_seed(args.seed)
    model = spec.build()
    report = sparsify(model, config)  # an --include that matches nothing fails here, before any write
    _require_sparsified(report, config.method, args.model)
    _wait_for_everyone()  # every rank validated the same arguments before rank 0 writes (no check/claim race)
    main_process = _is_main_process()
    if main_process:  # the first write
        if legacy:
            save_json(out / OUTPUT_MARKER, {"kind": KIND_TRAIN})
        else:
            claim_output_dir(out, KIND_TRAIN)
        save_json(out / RUN_FILE, {**run, "train": config_to_dict(train_config)})
    result = train(model, train_set, train_config, callbacks=[NMSparseCallback()])
    summary: dict[str, Any] = {
        "output": str(out),
        "model": args.model,
        "method": config.method,
        "pattern": config.pattern,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "sparsified_layers": len(report.layers),
        "skipped_layers": len(report.skipped),
    }
    if main_process:
        model.to(device)
        if val_set is not None:
            summary["val_top1"] = evaluate(model, val_set, device=device)
        model.cpu()
        saved = save_sparse_model(
            out / "model", model, spec, config, STAGE_TRAINED, {"val_top1": summary.get("val_top1")}
        )
        summary["model_dir"] = str(saved)
        summary["checkpoint"] = result.checkpoint_dir
    return summary


# --------------------------------------------------------------------------- deploy / inspect


def _sample_input(spec: Any, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, spec.in_chans, spec.image_size, spec.image_size, generator=gen)


def cmd_deploy(args: argparse.Namespace) -> dict[str, Any]:
    resolve_device(args.device)
    check_output_dir(args.output, KIND_DEPLOY)
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
    out = claim_output_dir(args.output, KIND_DEPLOY)  # the first write
    saved = save_sparse_model(
        out, model, spec, config, STAGE_DEPLOYED,
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
    resolve_device(args.device)
    pattern = parse_pattern(args.pattern) if args.pattern is not None else None
    if args.plot:
        check_output_file(args.plot, (".png",))
    model, _, config, stage = load_sparse_model(args.checkpoint)
    report = check(model, pattern=pattern)
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


# --------------------------------------------------------------------------- bench / table / demo


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    pattern = parse_pattern(args.pattern)
    if args.repeats < 1:
        raise BadInputError("--repeats must be >= 1")
    device = resolve_device(args.device)
    if args.output:
        check_output_file(args.output, (".json",))
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
    methods = _csv(args.methods, "--methods")
    for method in methods:
        if method not in METHODS:
            raise BadInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    patterns = [str(parse_pattern(p)) for p in _csv(args.patterns, "--patterns")]
    try:
        seeds = [int(s) for s in _csv(args.seeds, "--seeds")]
    except ValueError:
        raise BadInputError(f"--seeds must be integers, got {args.seeds!r}") from None
    _check_train_options(args)
    at_least("bimask-interval", args.bimask_interval, 1)
    at_least("bimask-candidates", args.bimask_candidates, 1)
    device = resolve_device(args.device)
    if args.output:
        check_output_dir(args.output, KIND_TABLE)
    base = load_model(args.model)  # unknown names fail before the first run
    for method in methods:  # so does a sparse method that would wrap no layer (a dense row under its name)
        for pattern in patterns:
            if method != "dense":
                report = sparsify(copy.deepcopy(base), NMConfig(method=method, pattern=pattern))
                _require_sparsified(report, method, args.model)
    output = claim_output_dir(args.output, KIND_TABLE) if args.output else None
    return accuracy_table(
        methods,
        patterns,
        seeds,
        model=args.model,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        bimask_interval=args.bimask_interval,
        bimask_candidates=args.bimask_candidates,
        device=device,
        output=output,
    )


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    at_least("steps", args.steps, 1)
    resolve_device(args.device)
    output = claim_output_dir(args.output, KIND_DEMO)  # validated first, then the first write
    return run_demo(output, steps=args.steps, seed=args.seed)


# --------------------------------------------------------------------------- handlers + parser


def _run_train(args: argparse.Namespace) -> int:
    summary = cmd_train(args)
    if _is_main_process():  # one report under `accelerate launch`
        emit(summary, args.json)
    return 0


def _run_deploy(args: argparse.Namespace) -> int:
    emit(cmd_deploy(args), args.json)
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    result = cmd_inspect(args)
    emit(result, args.json, _inspect_human)
    return 0 if result["all_valid"] else 1


def _run_bench(args: argparse.Namespace) -> int:
    emit(cmd_bench(args), args.json, _bench_human)
    return 0


def _run_table(args: argparse.Namespace) -> int:
    emit(cmd_table(args), args.json, lambda r: r["markdown"])
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    emit(cmd_demo(args), args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``nm-sparse`` parser; every subcommand carries its handler as ``func`` (``set_defaults``)."""
    parser, sub = make_parser(PROG, "N:M sparse training (SR-STE, SpRe, Bi-Mask) and deployment", __version__)

    p = add_common(sub.add_parser("train", help="train a model with an N:M method"))
    p.add_argument(
        "--model", default="small_resnet", help="small_resnet, small_resnet_wide, or a timm/torchvision name"
    )
    p.add_argument(
        "--data",
        default="digits",
        help=f"{', '.join(DATASETS)} (bundled / generated offline, see slimkit.data) or an image folder with "
        "class subfolders",
    )
    p.add_argument("--val-data", default=None, help="validation image folder (named sets: their own held-out split)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size (default: 32 on crops/cluttered-digits, else 8 for small_resnet, else 32)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=None,
        choices=(1, 3),
        help="input channels (default: 1 on digits with small_resnet, else 3)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="default: the data set's (or folder's) class count")
    p.add_argument("--output", "-o", default="nm-sparse-run", help="run folder (default: nm-sparse-run)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of this run")
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_nm_options(p)
    _add_train_options(p)
    p.set_defaults(func=_run_train)

    p = add_common(sub.add_parser("deploy", help="checkpoint -> plain N:M model (safetensors + config.json)"))
    p.add_argument("checkpoint", help="run folder, model folder or checkpoint folder")
    p.add_argument("--output", "-o", required=True, help="folder for model.safetensors + config.json")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorms (SpRe branches are always folded)")
    p.set_defaults(func=_run_deploy)

    p = add_common(sub.add_parser("inspect", help="N:M validity per layer and a per-kernel-position sparsity heatmap"))
    p.add_argument("checkpoint", help="trained or deployed model (folder or .safetensors)")
    p.add_argument("--plot", default=None, help="write the heatmap PNG here (.png)")
    p.add_argument("--pattern", default=None, help="check every Linear/Conv against this N:M too")
    p.set_defaults(func=_run_inspect)

    p = add_common(sub.add_parser("bench", help="mask / permutation-scoring / compressed-matmul timings"))
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds on a laptop)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--output", "-o", default=None, help="also write the JSON result here (.json)")
    p.set_defaults(func=_run_bench)

    p = add_common(sub.add_parser("table", help="top-1 table over methods, patterns and seeds on one offline set"))
    p.add_argument("--methods", default="dense,unstructured,asp,srste,spre,bimask")
    p.add_argument("--data", default="digits", choices=DATASETS,
                   help="digits (val split) or a generated set, crops / cluttered-digits (test split)")
    p.add_argument("--patterns", default="2:4,1:4")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--model", default="small_resnet")
    p.add_argument("--output", "-o", default=None, help="folder for results.json and table.md")
    p.add_argument("--bimask-interval", type=int, default=50)
    p.add_argument("--bimask-candidates", type=int, default=10)
    _add_train_options(p)
    p.set_defaults(func=_run_table)

    p = add_common(sub.add_parser("demo", help="the quickstart: SR-STE 2:4 on digits, deployed and checked (~30 s)"))
    p.add_argument("--output", "-o", default="nm-sparse-demo", help="output folder (default: nm-sparse-demo)")
    p.add_argument("--steps", type=int, default=200)
    p.set_defaults(func=_run_demo)
    return parser


main = dispatching_main(build_parser, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
