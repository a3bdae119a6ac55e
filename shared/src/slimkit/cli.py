"""Shared command-line plumbing: subcommands, ``--json``, one-line errors, progress bars.

Every package CLI is ``main(argv) -> int`` wrapped by :func:`run_main`, so bad
input ends in ``prog: error: <one line>`` and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from slimkit import __version__
from slimkit.bench import env_header
from slimkit.data import DATASETS, image_folder, resolve_dataset
from slimkit.errors import BadInputError
from slimkit.io import save_json
from slimkit.paths import check_input_dir, check_output_file, claim_output_dir
from slimkit.progress import progress
from slimkit.quickstart import run as run_demo
from slimkit.report import finite_json

__all__ = [
    "EXIT_BAD_INPUT",
    "add_common",
    "build_parser",
    "dispatching_main",
    "emit",
    "format_table",
    "main",
    "report",
    "make_parser",
    "progress",
    "resolve_device",
    "run_main",
]

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (no usage dump), exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def make_parser(prog: str, description: str, version: str) -> tuple[argparse.ArgumentParser, Any]:
    """A top-level parser with ``--version`` and a required subcommand group."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    return parser, subparsers


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every subcommand shares."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def at_least(flag: str, value: float | None, low: float, alias: str = "") -> None:
    """``--flag`` must be ``>= low`` (``None``, an option left unset, passes); ``alias`` names the field it fills."""
    if value is not None and value < low:
        also = f" ({alias})" if alias else ""
        raise BadInputError(f"--{flag}{also} must be >= {low}, got {value}")


def positive(flag: str, value: float | None) -> None:
    """``--flag`` must be ``> 0`` (``None``, an option left unset, passes)."""
    if value is not None and not value > 0:
        raise BadInputError(f"--{flag} must be > 0, got {value}")


def train_val_datasets(
    data: str, val_data: str | None, image_size: int, channels: int, seed: int, require_val: bool = False
) -> tuple[Any, Any]:
    """``--data`` / ``--val-data`` as every training CLI reads them: a name in ``DATASETS`` gives its own
    train and val splits (``--val-data`` is then an error); a folder of class subfolders is the training
    set and ``--val-data`` its held-out folder (``None`` when not given, unless ``require_val``)."""
    if data in DATASETS:
        if val_data is not None:
            raise BadInputError(f"--val-data needs --data to be an image folder ({data} has its own held-out split)")
        # digits: the stratified train/val split; crops, cluttered-digits: generated (cached) train/val splits
        return (resolve_dataset(data, "train", image_size, channels, seed),
                resolve_dataset(data, "val", image_size, channels, seed))  # fmt: skip
    check_input_dir(data, "--data folder")
    if val_data is None and require_val:
        raise BadInputError("--data is an image folder: give its held-out images with --val-data FOLDER")
    if val_data is not None:
        check_input_dir(val_data, "--val-data folder")
    val_set = image_folder(val_data, image_size, channels) if val_data else None
    return image_folder(data, image_size, channels), val_set


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda[:N]`` into a device, refusing ones that are not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInputError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {name!r} requested but CUDA is not available")
    return device


def run_main(fn: Callable[[Sequence[str] | None], int | None], prog: str) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI body: user errors become one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            code = fn(argv)
        except BadInputError as exc:
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except FileNotFoundError as exc:
            print(f"{prog}: error: file not found: {exc.filename or exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except IsADirectoryError as exc:
            print(f"{prog}: error: expected a file, got a directory: {exc.filename or exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except SystemExit as exc:  # argparse --help / errors
            return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return int(code or 0)

    return wrapper


def bench_command(args: argparse.Namespace, run: Callable[[torch.device, bool, int], dict[str, Any]]) -> dict[str, Any]:
    """A package's ``bench`` subcommand: ``--repeats`` >= 1 and the ``--output`` (.json) path are checked
    before timing, ``run(device, quick, repeats)`` times, and the result is also written to ``--output``."""
    at_least("repeats", args.repeats, 1)
    device = resolve_device(args.device)
    target = check_output_file(args.output, (".json",)) if args.output else None
    result = run(device, bool(args.quick), args.repeats)
    if target is not None:
        save_json(target, result)
    return result


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def emit(result: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print one JSON document, or a human-readable rendering of the same result.

    Under ``accelerate launch``/torchrun only rank 0 prints, so ``--json`` output stays one document.
    """
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return
    if as_json:  # strict JSON: NaN / inf (an undefined metric) are null, which every JSON reader accepts
        plain = json.loads(json.dumps(result, default=_json_default))
        print(json.dumps(finite_json(plain), indent=2, allow_nan=False))
        return
    if human is not None:
        print(human(result))
    elif isinstance(result, list) and result and isinstance(result[0], dict):
        print(format_table(result))
    elif isinstance(result, dict):
        width = max((len(str(k)) for k in result), default=0)
        for key, value in result.items():
            print(f"{str(key).ljust(width)}  {_fmt(value)}")
    else:
        print(result)


def report(result: Any, args: argparse.Namespace, human: Callable[[Any], str] | None = None) -> int:
    """A subcommand's ending: :func:`emit` ``result`` as ``args.json`` asks (rank 0 only) and return exit code 0."""
    emit(result, bool(getattr(args, "json", False)), human)
    return 0


def dispatching_main(build_parser: Callable[[], argparse.ArgumentParser], prog: str) -> Callable[[Sequence[str] | None], int]:
    """The console-script body the packages share: parse ``argv``, run the chosen subcommand's ``func``
    default, and turn user errors into one stderr line and exit code 2 (:func:`run_main`)."""

    def body(argv: Sequence[str] | None) -> int:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)

    return run_main(body, prog)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table (no external dependency)."""
    if not rows:
        return "(no rows)"
    cols = list(columns) if columns else list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def _cmd_env(args: argparse.Namespace) -> int:
    emit(env_header(), args.json)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise BadInputError(f"--steps must be >= 1, got {args.steps}")
    at_least("seed", args.seed, 0)
    resolve_device(args.device)
    claim_output_dir(args.output, "slimkit demo")  # validated above: the first write
    emit(run_demo(Path(args.output), steps=args.steps, seed=args.seed), args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``slimkit`` parser; every subcommand carries its handler as ``func`` (one dispatch style)."""
    parser, sub = make_parser("slimkit", "slimkit shared utilities", __version__)
    env = add_common(sub.add_parser("env", help="print device, threads and library versions"))
    env.set_defaults(func=_cmd_env)
    demo = add_common(sub.add_parser("demo", help="train a tiny classifier on bundled digits"))
    demo.add_argument("--output", default="slimkit-demo", help="output folder")
    demo.add_argument("--steps", type=int, default=60)
    demo.set_defaults(func=_cmd_demo)
    return parser


_main = dispatching_main(build_parser, "slimkit")


def main(argv: Sequence[str] | None = None) -> int:
    """``slimkit`` console script: environment report and the shared demo."""
    return _main(argv)
