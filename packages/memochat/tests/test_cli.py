"""The console script end to end (in process), with the oracle and tiny models so it runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memochat.cli import main
from memochat.data import write_sample_sources


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_chat_and_memos_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "m.db")
    msgs = [f"By the way, my locker code is {4000 + i}." if i == 0 else f"filler message {i}" for i in range(5)]
    msgs.append("Quick check: what is my locker code?")
    argv = ["chat", "--model", "oracle", "--db", db, "--user", "ana", "--json", "--prefilter", "none"]
    for m in msgs:
        argv += ["-m", m]
    assert main(argv) == 0
    turns = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(turns) == 6 and turns[4]["written"] and turns[5]["response"] == "4000"
    listed = _json(capsys, ["memos", "list", "--db", db, "--json"])
    assert listed["memos"][0]["topic"] == "locker code" and listed["sessions"][0]["turns"] == 6
    shown = _json(capsys, ["memos", "show", "--db", db, str(listed["memos"][0]["id"]), "--json"])
    assert shown["dialogs"][0] == "user: By the way, my locker code is 4000."
    out = tmp_path / "e.jsonl"
    assert _json(capsys, ["memos", "export", "--db", db, str(out), "--json"])["exported"] == len(out.read_text().splitlines())
    got = _json(capsys, ["memos", "import", "--db", str(tmp_path / "copy.db"), str(out), "--json"])
    assert got["imported"]["memo"] == len(listed["memos"])
    assert _json(capsys, ["memos", "check", "--db", str(tmp_path / "copy.db"), "--json"])["ok"]
    assert _json(capsys, ["memos", "delete", "--db", db, "--user", "ana", "--json"])["deleted_memos"] == len(listed["memos"])


def test_build_data_and_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_sample_sources(tmp_path / "src", n=6)
    data = tmp_path / "train.jsonl"
    built = _json(capsys, ["build-data", "--topiocqa", str(src["topiocqa"]), "--dialogsum", str(src["dialogsum"]),
                           "--alpaca", str(src["alpaca"]), "-o", str(data), "--json"])  # fmt: skip
    assert built["records"] == len(data.read_text().splitlines()) and len(built["by_type"]) == 6
    res = _json(capsys, ["train", "--model", "tiny", "--data", str(data), "--steps", "2", "--max-len", "128", "--heldout", "1",
                         "--eval-every", "1", "--no-progress", "-o", str(tmp_path / "run"), "--json"])  # fmt: skip
    assert [r["step"] for r in res["curves"]] == [0, 1, 2]
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "adapter.safetensors").is_file()


def test_eval_consistency_bench_and_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _json(capsys, ["eval", "consistency", "--conversations", "1", "--sessions", "2", "--turns", "8", "--no-progress",
                         "--prefilter", "bm25", "-o", str(tmp_path / "cons"), "--json"])  # fmt: skip
    assert [v["variant"] for v in res["variants"]] == ["full", "none", "memochat", "memochat+prefilter"]
    assert (tmp_path / "cons" / "table.md").read_text().startswith("| backend | variant |")
    bench = _json(capsys, ["bench", "--memos", "10", "--kills", "0", "--turns", "3", "--prefilter", "bm25", "--json"])
    assert bench["overhead"][0]["memos"] == 10 and bench["overhead"][0]["overhead_ms_median"] > 0
    demo = _json(capsys, ["demo", "--model", "oracle", "-o", str(tmp_path / "demo"), "--json"])
    assert len(demo["turns"]) == 6 and (tmp_path / "demo" / "transcript.md").is_file()
    assert [bool(t["written"]) for t in demo["turns"]] == [False] * 4 + [True, False]  # the 5th turn writes the first memos


@pytest.mark.parametrize("memos", ["10,abc", "1e4", "0"])
def test_bench_bad_memo_counts_are_one_line_exit_2(memos: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--memos", memos, "--kills", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memochat: error: --memos must be") and len(err.strip().splitlines()) == 1


def test_import_of_a_file_with_a_session_twice_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "m.db")
    assert main(["chat", "--model", "oracle", "--db", db, "--prefilter", "none", "-m", "hello", "--json"]) == 0
    out = tmp_path / "e.jsonl"
    assert main(["memos", "export", "--db", db, str(out)]) == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines + [x for x in lines if json.loads(x)["type"] in ("session", "line")]) + "\n")
    capsys.readouterr()
    target = tmp_path / "copy.db"
    assert main(["memos", "import", "--db", str(target), str(out)]) == 2
    err = capsys.readouterr().err
    assert "appears twice; nothing imported" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()  # checked whole before the database is touched
