"""``token-rate`` console script: schedules, flops, search, eval, train, bench, visualize, demo.

Every subcommand takes ``--json`` (one JSON document on stdout), ``--device`` and ``--seed``; bad
input ends in one ``token-rate: error: ...`` line and exit code 2. ``search`` also runs under
``accelerate launch -m token_rate.cli search ...``.

Check first, write second: every subcommand validates all its arguments and inputs (numbers,
input files and folders, schedules against the model, output paths through :mod:`slimkit.paths`)
before it writes its first file. Single-file outputs write the format their extension names
(``visualize``: ``.png``; schedules and reports: ``.json``) and replace an existing file atomically;
output folders are reused only when they hold the same kind of output.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.cli import add_common, at_least, emit, format_table, make_parser, positive, resolve_device, run_main
from slimkit.data import DATASETS, read_image, resolve_dataset, sample_images
from slimkit.errors import BadInputError
from slimkit.io import save_json
from slimkit.paths import check_input_dir, check_input_file, check_output_dir, check_output_file, claim_output_dir
from slimkit.train import find_latest_checkpoint
from token_rate import __version__
from token_rate.bench import BenchConfig, run_bench
from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig
from token_rate.diffrate import check_schedule_fits
from token_rate.flops import analytic_macs
from token_rate.model_flops import counted_gmacs, gmacs
from token_rate.models import evaluate, input_spec, load_model, train_digits_vit
from token_rate.patch import current_token_counts, model_dims, model_info, patch
from token_rate.quickstart import run as run_demo
from token_rate.schedule import Schedule, list_schedules, load_schedule
from token_rate.search import SearchSettings, UnlabelledImages, search, search_train_config
from token_rate.table import TableSettings, method_table
from token_rate.visualize import resolve_blocks, visualize

PROG = "token-rate"
KIND_TRAIN = "token-rate train"
KIND_SEARCH = "token-rate search"
KIND_DEMO = "token-rate demo"
KIND_TABLE = "token-rate table"


# ----------------------------------------------------------------------------------------------
# shared helpers: validation first
# ----------------------------------------------------------------------------------------------


def _add_model(p: argparse.ArgumentParser, default: str | None = None) -> None:
    hint = f" (default without --checkpoint: {default})" if default else ""
    p.add_argument("--model", default=None, help=f"digits_vit or a timm model name (random init){hint}")
    p.set_defaults(default_model=default)
    p.add_argument("--checkpoint", default=None, help="weights: a `token-rate train` folder, .safetensors or .pth")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's/checkpoint's)")


def _add_compression(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", default=None, help="published name (see `token-rate schedules`) or schedule JSON")
    p.add_argument("--mode", default=None, choices=("official", "weighted"),
                   help="DiffRate merge mode (default: official; needs --schedule)")
    p.add_argument("--tome-r", type=int, default=None, help="ToMe tokens merged per block")


def _check_checkpoint(args: argparse.Namespace) -> None:
    """A missing, empty or wrong-kind ``--checkpoint`` is refused before anything else runs."""
    if args.checkpoint is None:
        return
    path = Path(args.checkpoint)
    if path.is_dir():
        check_input_dir(path, "checkpoint folder")
        check_input_file(path / "model.safetensors", "checkpoint weights")
    else:
        check_input_file(path, "checkpoint")
    if args.num_classes is not None:
        at_least("num-classes", args.num_classes, 1)


def _load(args: argparse.Namespace) -> nn.Module:
    if args.model is None and args.checkpoint is None and args.default_model is not None:
        args.model = args.default_model
    if args.model is None and args.checkpoint is None:
        raise BadInputError("pass --model NAME and/or --checkpoint PATH (e.g. a folder from `token-rate train`)")
    _check_checkpoint(args)
    return load_model(args.model, checkpoint=args.checkpoint, num_classes=args.num_classes)


def _read_schedule(spec: str, option: str = "--schedule") -> Schedule:
    """A published name or a schedule JSON file, read (and type-checked) before any work."""
    path = Path(spec)
    if path.exists() or "@" not in spec:
        check_input_file(path, f"{option} file", (".json",))
    return load_schedule(spec)


def _check_compression_args(args: argparse.Namespace) -> Schedule | None:
    """Model-independent checks of --schedule / --mode / --tome-r; returns the schedule read."""
    if args.schedule is not None and args.tome_r is not None and args.command not in ("bench", "visualize"):
        raise BadInputError("give either --schedule or --tome-r, not both")
    if args.mode is not None and args.schedule is None:
        raise BadInputError("--mode applies to a DiffRate --schedule; give --schedule or drop --mode")
    at_least("tome-r", args.tome_r, 0)
    return _read_schedule(args.schedule) if args.schedule is not None else None


def _check_against_model(model: nn.Module, schedule: Schedule | None, tome_r: int | None) -> None:
    """The schedule fits the model (tokens, depth, width) and ToMe's r is one the tokens can take."""
    info = model_info(model)
    if schedule is not None:
        check_schedule_fits(schedule, info)
    if tome_r is not None:
        patches = info.dims.num_tokens - info.num_prefix_tokens
        if tome_r > patches // 2:
            raise BadInputError(f"--tome-r {tome_r} is larger than the {patches // 2} merges per block that the "
                                f"model's {patches} patch tokens allow")


def _compression_config(args: argparse.Namespace) -> DiffRateConfig | ToMeConfig | None:
    if args.schedule is not None:
        return DiffRateConfig(schedule=args.schedule, mode=args.mode or "official")
    if args.tome_r is not None:
        return ToMeConfig(r=args.tome_r)
    return None


def _dataset(spec: str, split: str, model: nn.Module, seed: int, labelled: bool = True) -> Any:
    size, chans = input_spec(model)
    if spec in DATASETS:  # digits, or a generated set (crops, cluttered-digits) made at the model's input size
        return resolve_dataset(spec, split=split, image_size=size, channels=chans, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"--data must be one of {', '.join(DATASETS)} or an image folder; not found: {spec}")
    check_input_dir(path, "--data folder")
    if not labelled:
        has_classes = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        if not has_classes:
            return UnlabelledImages(path, size, chans)
    return resolve_dataset(spec, split=split, image_size=size, channels=chans, seed=seed)


# ----------------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------------


def cmd_schedules(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name in list_schedules():
        s = load_schedule(name)
        rows.append(
            {
                "name": name,
                "model": s.meta.get("model"),
                "gmacs": round(gmacs(name), 3),
                "kept_per_block": s.effective(s.num_tokens),
            }
        )
    return {"schedules": rows}


def cmd_flops(args: argparse.Namespace) -> dict[str, Any]:
    resolve_device(args.device)
    schedule = _check_compression_args(args)
    model = _load(args)
    _check_against_model(model, schedule, args.tome_r)
    dims = model_dims(model)
    cfg = _compression_config(args)
    out: dict[str, Any] = {"model": args.model or "checkpoint", "dims": dims.to_dict()}
    out["baseline_gmacs"] = analytic_macs(dims) / 1e9
    size, chans = input_spec(model)
    example = torch.randn(1, chans, size, size)
    if args.count:
        out["baseline_counted_gmacs"] = counted_gmacs(model, example)
    if cfg is not None:
        patch(model, cfg)
        out["config"] = cfg.to_dict()
        out["gmacs"] = gmacs(model)
        out["kept_per_block"] = current_token_counts(model)
        out["reduction"] = 1.0 - out["gmacs"] / out["baseline_gmacs"]
        if args.count:
            out["counted_gmacs"] = counted_gmacs(model, example)
    return out


def _init_schedule(args: argparse.Namespace, model: torch.nn.Module) -> Schedule | None:
    """``--init-schedule``: a published name, a schedule JSON, or merge-only kept counts per block."""
    spec = args.init_schedule
    if spec is None:
        return None
    info = model_info(model)
    dims = info.dims
    if spec.strip() and all(part.strip().isdigit() for part in spec.split(",")):
        merge = [int(part) for part in spec.split(",")]
        if len(merge) != dims.depth:
            raise BadInputError(f"--init-schedule lists {len(merge)} counts for a {dims.depth}-block model")
        sched = Schedule([dims.num_tokens] * dims.depth, merge, num_tokens=dims.num_tokens,
                         num_prefix_tokens=dims.num_prefix_tokens)
    else:
        sched = _read_schedule(spec, "--init-schedule")
    check_schedule_fits(sched, info)
    return sched


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    if (args.target_gmacs is None) == (args.target_ratio is None):
        raise BadInputError("give exactly one of --target-gmacs and --target-ratio")
    for name in ("steps", "batch_size", "grad_accum", "granularity"):
        at_least(name.replace("_", "-"), getattr(args, name), 1)
    positive("lr", args.lr)
    at_least("checkpoint-every", args.checkpoint_every, 0)
    at_least("flops-weight", args.flops_weight, 0)
    output = check_output_file(args.output, (".json",))
    work = args.work_dir or str(output.with_suffix("")) + "-run"
    check_output_dir(work, KIND_SEARCH)
    if args.resume and find_latest_checkpoint(work) is None:
        raise BadInputError(f"--resume: nothing to resume in {work}")
    device = resolve_device(args.device)
    settings = SearchSettings(
        target_gmacs=args.target_gmacs,
        target_ratio=args.target_ratio,
        flops_weight=args.flops_weight,
        penalty=args.penalty,
        label_free=args.label_free,
        output=args.output,
        name=output.stem,
    )
    torch.manual_seed(args.seed)
    model = _load(args)
    config = SearchConfig(granularity=args.granularity, mode=args.mode, init_schedule=_init_schedule(args, model))
    baseline = analytic_macs(model_dims(model)) / 1e9
    target = args.target_gmacs if args.target_gmacs is not None else baseline * args.target_ratio
    if target >= baseline:
        raise BadInputError(f"target {target:.4g} GMACs is not below the uncompressed {baseline:.4g} GMACs")
    data = _dataset(args.data, "train", model, args.seed, labelled=not args.label_free)
    train_cfg = search_train_config(
        work,
        args.steps,
        lr=args.lr,
        min_lr=args.lr / 10,
        batch_size=args.batch_size,
        grad_accum_steps=args.grad_accum,
        checkpoint_every=args.checkpoint_every,
        resume_from="latest" if args.resume else None,
        seed=args.seed,
        cpu=device.type == "cpu",
        progress=not args.json,
        log_every=max(1, args.steps // 20),
    )
    claim_output_dir(work, KIND_SEARCH)
    schedule = search(model.to(device), data, settings, config=config, train_config=train_cfg)
    meta = schedule.meta
    return {
        "output": args.output,
        "target_gmacs": schedule.target_gmacs,
        "searched_gmacs": meta["searched_gmacs"],
        "baseline_gmacs": meta["baseline_gmacs"],
        "relative_error": meta["relative_error"],
        "kept_per_block": schedule.effective(schedule.num_tokens),
        "prune": schedule.prune,
        "merge": schedule.merge,
        "steps": meta["steps"],
        "work_dir": work,
    }


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    at_least("batch-size", args.batch_size, 1)
    device = resolve_device(args.device)
    schedule = _check_compression_args(args)
    model = _load(args)
    _check_against_model(model, schedule, args.tome_r)
    data = _dataset(args.data, "val", model, args.seed)
    cfg = _compression_config(args)
    if cfg is not None:
        patch(model, cfg)
    top1 = evaluate(model.to(device), data, batch_size=args.batch_size, device=device)
    return {"data": args.data, "images": len(data), "top1": top1, "gmacs": gmacs(model),
            "config": cfg.to_dict() if cfg is not None else None}  # fmt: skip


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    at_least("steps", args.steps, 1)
    at_least("batch-size", args.batch_size, 1)
    positive("lr", args.lr)
    device = resolve_device(args.device)
    output = claim_output_dir(args.output, KIND_TRAIN)
    return train_digits_vit(
        output, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        cpu=device.type == "cpu", progress=not args.json,
    )  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    at_least("threads", args.threads, 1)
    at_least("batch-size", args.batch_size, 1)
    at_least("warmup", args.warmup, 0)
    at_least("repeats", args.repeats, 1)
    if args.no_tome and args.tome_r is not None:
        raise BadInputError("--no-tome and --tome-r contradict each other; give one")
    if args.schedule is None and args.tome_r is None:
        raise BadInputError("give --schedule and/or --tome-r to compare against the baseline")
    schedule = _check_compression_args(args)
    if args.output:
        check_output_file(args.output, (".json",))
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = _load(args)
    _check_against_model(model, schedule, args.tome_r)
    cfg = BenchConfig(
        schedule=args.schedule, mode=args.mode or "official", tome_r=args.tome_r, include_tome=not args.no_tome,
        batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats, dtype=args.dtype,
    )  # fmt: skip
    result = run_bench(model.to(device), cfg, device)
    if args.output:
        save_json(args.output, result)
    return result


def cmd_visualize(args: argparse.Namespace) -> dict[str, Any]:
    if args.schedule is None and args.tome_r is None:
        raise BadInputError("give --schedule and/or --tome-r")
    schedule = _check_compression_args(args)
    check_output_file(args.output, (".png",))
    resolve_device(args.device)
    path = Path(args.image)
    if path.suffix or path.exists():
        check_input_file(path, "--image")
        image = read_image(path)
    else:
        image = sample_images([args.image])[args.image]
    block: str | int | None = args.block
    if args.block is not None and args.block.strip().lower() != "all":
        try:
            block = int(args.block)
        except ValueError:
            raise BadInputError(f"--block must be an integer (negative counts back) or 'all', got {block!r}") from None
    model = _load(args)
    _check_against_model(model, schedule, args.tome_r)
    resolve_blocks(block, model_dims(model).depth)
    configs: dict[str, Any] = {}
    if args.schedule is not None:
        label = Path(args.schedule).stem if Path(args.schedule).exists() else args.schedule
        configs[f"DiffRate {label}"] = DiffRateConfig(schedule=args.schedule, mode=args.mode or "official")
    if args.tome_r is not None:
        configs[f"ToMe r={args.tome_r}"] = ToMeConfig(r=args.tome_r)
    return visualize(model, image, configs, args.output, title=args.title, block=block)


def _csv_numbers(text: str, flag: str, kind: type[int] | type[float]) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"{flag} must be comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise BadInputError(f"{flag} is empty")
    return values


def cmd_table(args: argparse.Namespace) -> dict[str, Any]:
    seeds = _csv_numbers(args.seeds, "--seeds", int)
    ratios = _csv_numbers(args.ratios, "--ratios", float)
    for ratio in ratios:
        if not 0.0 < ratio < 1.0:
            raise BadInputError(f"--ratios must each be in (0, 1), got {ratio}")
    for name in ("train-steps", "search-steps", "batch-size", "search-batch-size"):
        at_least(name, getattr(args, name.replace("-", "_")), 1)
    for name in ("train-lr", "search-lr", "flops-weight"):
        positive(name, getattr(args, name.replace("-", "_")))
    if args.train_warmup_steps is not None:
        at_least("train-warmup-steps", args.train_warmup_steps, 0)
    resolve_device(args.device)
    if args.output:
        check_output_dir(args.output, KIND_TABLE)
    settings = TableSettings(
        train_steps=args.train_steps, train_lr=args.train_lr, train_warmup_steps=args.train_warmup_steps,
        batch_size=args.batch_size, search_steps=args.search_steps, search_lr=args.search_lr, search_batch_size=args.search_batch_size,
        flops_weight=args.flops_weight,
    )  # fmt: skip
    output = claim_output_dir(args.output, KIND_TABLE) if args.output else None
    return method_table(args.data, seeds, ratios, settings, output=output, show_progress=not args.json)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    resolve_device(args.device)
    output = claim_output_dir(args.output, KIND_DEMO)
    return run_demo(output)


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``token-rate`` parser; every subcommand sets ``func`` (``set_defaults(func=...)``)."""
    parser, sub = make_parser(PROG, "DiffRate token pruning + merging (and ToMe) for vision transformers", __version__)

    p = add_common(sub.add_parser("schedules", help="list the published DiffRate schedules"))
    p.set_defaults(func=cmd_schedules)

    p = add_common(sub.add_parser("flops", help="analytic and counted GMACs of a model under a schedule / ToMe r"))
    _add_model(p, default="deit_small_patch16_224")
    _add_compression(p)
    p.add_argument("--no-count", dest="count", action="store_false", help="skip the FlopCounterMode cross-check")
    p.set_defaults(func=cmd_flops)

    p = add_common(sub.add_parser("search", help="search a DiffRate schedule for a GMACs target"))
    _add_model(p)
    p.add_argument(
        "--data", default="digits",
        help=f"{', '.join(DATASETS)} (train split) or an image folder (class subfolders unless --label-free)",
    )  # fmt: skip
    p.add_argument("--target-gmacs", type=float, default=None)
    p.add_argument("--target-ratio", type=float, default=None, help="target as a fraction of the model's GMACs")
    p.add_argument("--output", required=True, help="schedule JSON to write")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01, help="logit learning rate (official 0.01, cosine to lr/10)")
    p.add_argument("--flops-weight", type=float, default=5.0, help="lambda of the FLOPs penalty (official 5)")
    p.add_argument("--penalty", default="auto", choices=("auto", "absolute", "relative"))
    p.add_argument("--granularity", type=int, default=4)
    p.add_argument(
        "--init-schedule", default=None,
        help="warm start: published name, schedule JSON, or comma-separated kept counts per block "
        "(merge only); default: uniform logits as in the official code",
    )  # fmt: skip
    p.add_argument("--mode", default="official", choices=("official", "weighted"), help="DiffRate merge mode")
    p.add_argument("--label-free", action="store_true", help="distil from the uncompressed model (no labels)")
    p.add_argument("--work-dir", default=None, help="checkpoints/metrics folder (default: <output>-run)")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --work-dir")
    p.set_defaults(func=cmd_search)

    p = add_common(sub.add_parser("eval", help="top-1 accuracy on a labelled folder or the digits"))
    _add_model(p)
    _add_compression(p)
    p.add_argument("--data", default="digits",
                   help=f"{', '.join(DATASETS)} (held-out val split) or a folder of class subfolders")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_eval)

    p = add_common(sub.add_parser("train", help="train the small digits ViT (so the demo has a model)"))
    p.add_argument("--output", default="digits-vit", help="folder for model.safetensors + config.json")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.set_defaults(func=cmd_train)

    p = add_common(sub.add_parser("bench", help="throughput: baseline vs DiffRate vs ToMe at matched GMACs"))
    _add_model(p, default="deit_small_patch16_224")
    _add_compression(p)
    p.add_argument("--no-tome", action="store_true", help="skip the matched-GMACs ToMe variant")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--output", default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_bench)

    p = add_common(sub.add_parser("visualize", help="PNG of the merged token groups over an image"))
    _add_model(p, default="deit_small_patch16_224")
    _add_compression(p)
    p.add_argument(
        "--image", default="astronaut", help="image file or scikit-image sample name (astronaut, coffee, ...)"
    )
    p.add_argument("--output", default="token-groups.png")
    p.add_argument("--title", default=None)
    p.add_argument("--block", default=None,
                   help="draw the groups after this block (default: the last; -1 = last, 'all' = one panel per block)")
    p.set_defaults(func=cmd_visualize)

    p = add_common(sub.add_parser(
        "table", help="method table: uncompressed, DiffRate (two starts), ToMe at matched GMACs, over seeds"))
    p.add_argument("--data", default="digits", choices=DATASETS,
                   help="digits (val split) or a generated set, crops / cluttered-digits (test split)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (one ViT trained per seed)")
    p.add_argument("--ratios", default="0.5,0.35", help="GMACs budgets as fractions of the uncompressed model")
    defaults = TableSettings()
    p.add_argument("--train-steps", type=int, default=defaults.train_steps)
    p.add_argument("--train-lr", type=float, default=defaults.train_lr)
    p.add_argument("--train-warmup-steps", type=int, default=None,
                   help="linear warm-up steps of the ViT's training (default: train steps // 20)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--search-steps", type=int, default=defaults.search_steps)
    p.add_argument("--search-lr", type=float, default=defaults.search_lr)
    p.add_argument("--search-batch-size", type=int, default=defaults.search_batch_size)
    p.add_argument("--flops-weight", type=float, default=defaults.flops_weight)
    p.add_argument("--output", "-o", default=None, help="folder for results.json and table.md")
    p.set_defaults(func=cmd_table)

    p = add_common(sub.add_parser("demo", help="the quickstart: train, search, compare (about a minute on CPU)"))
    p.add_argument("--output", default="token-rate-demo")
    p.set_defaults(func=cmd_demo)
    return parser


def _human(result: Any) -> str:
    if isinstance(result, dict) and "markdown" in result:
        return str(result["markdown"])
    if isinstance(result, dict) and "schedules" in result:
        return format_table(
            [{**r, "kept_per_block": ",".join(map(str, r["kept_per_block"]))} for r in result["schedules"]]
        )
    if isinstance(result, dict) and "rows" in result:
        cols = ["name", "gmacs", "images_per_s", "median_s", "ratio_vs_baseline", "ratio_min", "ratio_max"]
        env = result["env"]
        head = f"device: {env['device']}  threads: {env['torch_threads']}  torch {env['versions'].get('torch')}"
        return head + "\n" + format_table(result["rows"], cols)
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    result = args.func(args)
    emit(result, args.json, _human)
    return 0


main = run_main(_main, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
