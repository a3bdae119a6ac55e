from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimkit.cli import (
    add_common,
    at_least,
    dispatching_main,
    emit,
    format_table,
    make_parser,
    positive,
    report,
    resolve_device,
    run_main,
    train_val_datasets,
)
from slimkit.errors import BadInputError


def _body(argv: Sequence[str] | None) -> int:
    parser, sub = make_parser("toy", "toy cli", "1.0")
    p = add_common(sub.add_parser("go"))
    p.add_argument("--n", type=int, required=True)
    args = parser.parse_args(argv)
    if args.n < 0:
        raise BadInputError("n must be >= 0\n(second line folded)")
    emit({"n": args.n, "device": str(resolve_device(args.device))}, args.json)
    return 0


main = run_main(_body, "toy")


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["go", "--n", "3", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 3, "device": "cpu"}


def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["go", "--n", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "toy: error: n must be >= 0 (second line folded)"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["go"]) == 2
    assert main([]) == 2
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("toy") for line in err) and len(err) == 3


def test_slimkit_demo_with_a_negative_seed_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slimkit.cli import main as slimkit_main

    out = tmp_path / "demo"
    assert slimkit_main(["demo", "--seed", "-1", "--output", str(out)]) == 2
    assert capsys.readouterr().err == "slimkit: error: --seed must be >= 0, got -1\n"
    assert not out.exists()


def test_unknown_device() -> None:
    with pytest.raises(BadInputError):
        resolve_device("tpu:9")


def test_table() -> None:
    text = format_table([{"a": 1, "b": 0.123456}, {"a": 22, "b": "x"}])
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[2].split() == ["1", "0.1235"] and len(lines) == 4


def test_console_script_env_json() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from slimkit.cli import main; raise SystemExit(main())", "env", "--json"],
        capture_output=True, text=True, check=True,
    )
    header = json.loads(out.stdout)
    assert header["versions"]["torch"] and header["torch_threads"] >= 1


def test_only_rank_zero_prints(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    emit({"a": 1}, True)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    emit({"a": 1}, True)
    assert json.loads(capsys.readouterr().out) == {"a": 1}


def test_json_output_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    """An undefined metric (NaN, inf) is null: strict readers (jq, JSON.parse) refuse NaN."""
    emit({"ap": float("nan"), "rows": [{"x": float("inf")}, 1.5], "t": torch.tensor([1.0])}, True)
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "ap": None, "rows": [{"x": None}, 1.5], "t": [1.0]}


def test_build_parser_dispatches_with_func() -> None:
    import argparse

    from slimkit.cli import _cmd_demo, _cmd_env, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == ["demo", "env"]
    assert parser.parse_args(["env"]).func is _cmd_env
    assert parser.parse_args(["demo", "--steps", "3"]).func is _cmd_demo


def test_progress_lives_in_its_own_module() -> None:
    import slimkit.cli
    import slimkit.progress

    assert slimkit.cli.progress is slimkit.progress.progress
    assert list(slimkit.progress.progress(range(3), disable=True)) == [0, 1, 2]


def test_train_val_datasets_reads_data_and_val_data_one_way(tmp_path: Path) -> None:
    train, val = train_val_datasets("digits", None, 8, 1, 0)
    assert len(train) + len(val) == 1797
    with pytest.raises(BadInputError, match=r"--val-data needs --data to be an image folder \(digits has its own"):
        train_val_datasets("digits", str(tmp_path), 8, 1, 0)
    for root in ("tr", "va"):
        for c in ("a", "b"):
            (tmp_path / root / c).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / root / c / "x.png")
    folder_train, no_val = train_val_datasets(str(tmp_path / "tr"), None, 8, 3, 0)
    assert len(folder_train) == 2 and no_val is None
    with pytest.raises(BadInputError, match="give its held-out images with --val-data FOLDER"):
        train_val_datasets(str(tmp_path / "tr"), None, 8, 3, 0, require_val=True)
    _, folder_val = train_val_datasets(str(tmp_path / "tr"), str(tmp_path / "va"), 8, 3, 0, require_val=True)
    assert len(folder_val) == 2
    with pytest.raises(BadInputError, match="--val-data folder not found"):
        train_val_datasets(str(tmp_path / "tr"), str(tmp_path / "nope"), 8, 3, 0)


def test_at_least_and_positive_name_the_flag_and_pass_unset_options() -> None:
    at_least("steps", 1, 1)
    at_least("steps", None, 1)
    positive("lr", None)
    positive("lr", 1e-9)
    with pytest.raises(BadInputError) as exc:
        at_least("steps", 0, 1, "max_steps")
    assert str(exc.value) == "--steps (max_steps) must be >= 1, got 0"
    with pytest.raises(BadInputError) as exc:
        positive("lr", 0.0)
    assert str(exc.value) == "--lr must be > 0, got 0.0"


def _toy_parser() -> object:
    parser, sub = make_parser("toy2", "toy cli", "2.0")
    p = add_common(sub.add_parser("go"))
    p.add_argument("--n", type=int, default=1)

    def go(args: object) -> int:
        if args.n < 0:
            raise BadInputError("n must be >= 0")
        return report({"n": args.n}, args)  # type: ignore[arg-type]

    p.set_defaults(func=go)
    return parser


def test_dispatching_main_runs_the_subcommand_and_report_prints_on_rank_0_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = dispatching_main(_toy_parser, "toy2")  # type: ignore[arg-type]
    assert toy(["go", "--n", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 4}
    assert toy(["go", "--n", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "toy2: error: n must be >= 0"
    monkeypatch.setenv("RANK", "1")  # another process of `accelerate launch`: silent, same exit code
    assert toy(["go", "--json"]) == 0 and capsys.readouterr().out == ""
