from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import pytest

from slimkit.cli import add_common, emit, format_table, make_parser, resolve_device, run_main
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
