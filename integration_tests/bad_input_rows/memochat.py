"""Bad inputs for the ``memochat`` console script: databases, prompts files, servers, imports, options.

Every row fails during validation, before a database, model or output file is created.
"""

from __future__ import annotations

import json
from pathlib import Path

from bad_input_harness import BadInput, file_at

M = "memochat"


def _prompts_without(task: str, placeholder: str) -> object:
    """``{tmp}/p.json``: the built-in prompts with one placeholder removed."""

    def setup(tmp: Path) -> None:
        from memochat.prompts import default_prompts

        data = default_prompts().to_dict()
        data[task] = {k: v.replace(placeholder, "N") for k, v in data[task].items()}
        (tmp / "p.json").write_text(json.dumps(data))

    return setup


def _broken_export(tmp: Path) -> None:
    lines = [json.dumps({"type": "memochat-export", "schema": 2}), json.dumps({"type": "user", "name": "ana"}), '{"type": "session", "user": ']
    (tmp / "e.jsonl").write_text("\n".join(lines) + "\n")


CHAT = [M, "chat", "--db", "{tmp}/m.db", "-m", "hello"]

ROWS: list[BadInput] = [
    BadInput("no-subcommand", [M], expect="required"),
    # ---------------------------------------------------------------- databases
    BadInput("memos-list-missing-db", [M, "memos", "list", "--db", "{tmp}/none.db"], expect="database not found"),
    BadInput("memos-list-unreadable-db", [M, "memos", "list", "--db", "{tmp}/junk.db"], expect="cannot open database",
             setup=file_at("junk.db", b"definitely not sqlite " * 64)),
    BadInput("chat-db-is-a-folder", [M, "chat", "--model", "oracle", "--db", "{tmp}", "-m", "hi"], expect="is a folder"),
    # ---------------------------------------------------------------- prompts and models
    BadInput("chat-prompts-missing-placeholder", [*CHAT, "--model", "oracle", "--prompts", "{tmp}/p.json"],
             expect="missing the placeholder OPTION", setup=_prompts_without("retrieval", "OPTION")),  # type: ignore[arg-type]
    BadInput("chat-prompts-not-json", [*CHAT, "--model", "oracle", "--prompts", "{tmp}/p.json"], expect="not valid JSON",
             setup=file_at("p.json", "{nope")),
    BadInput("chat-unreachable-server", [*CHAT, "--model", "http://127.0.0.1:9/v1", "--timeout", "2"], expect="cannot reach"),
    BadInput("chat-model-missing", [*CHAT, "--model", "{tmp}/no-model"], expect="model not found"),
    BadInput("chat-keep-lines-too-big", [*CHAT, "--model", "oracle", "--keep-lines", "10"], expect="keep_lines must be < max_lines"),
    BadInput("serve-negative-port", [M, "serve", "--model", "oracle", "--db", "{tmp}/m.db", "--port", "-1"], expect="--port must be >= 0"),
    # ---------------------------------------------------------------- memos import / export
    BadInput("memos-import-malformed", [M, "memos", "import", "--db", "{tmp}/m.db", "{tmp}/e.jsonl"], expect="nothing imported",
             setup=_broken_export),
    BadInput("memos-import-not-export", [M, "memos", "import", "--db", "{tmp}/m.db", "{tmp}/e.jsonl"], expect="not a memochat export",
             setup=file_at("e.jsonl", '{"type": "user", "name": "x"}\n')),
    BadInput("memos-export-wrong-suffix", [M, "memos", "export", "--db", "{tmp}/junk.db", "{tmp}/out.txt"], expect="use one of .jsonl",
             setup=file_at("junk.db", b"x" * 200)),
    # ---------------------------------------------------------------- data, training, evaluation, bench
    BadInput("build-data-no-source", [M, "build-data", "-o", "{tmp}/d.jsonl"], expect="at least one"),
    BadInput("build-data-wrong-suffix", [M, "build-data", "--alpaca", "{tmp}/a.json", "-o", "{tmp}/d.txt"], expect="use one of .jsonl"),
    BadInput("build-data-broken-source", [M, "build-data", "--alpaca", "{tmp}/a.json", "-o", "{tmp}/d.jsonl"], expect="not valid JSON",
             setup=file_at("a.json", "[{")),
    BadInput("train-missing-data", [M, "train", "--model", "tiny", "--data", "{tmp}/none.jsonl", "-o", "{tmp}/r"], expect="not found"),
    BadInput("train-zero-steps", [M, "train", "--model", "tiny", "--data", "{tmp}/d.jsonl", "--steps", "0", "-o", "{tmp}/r"],
             expect="--steps must be >= 1"),
    BadInput("eval-consistency-unknown-variant", [M, "eval", "consistency", "--variants", "full,magic"], expect="unknown variant"),
    BadInput("eval-consistency-few-turns", [M, "eval", "consistency", "--turns", "3"], expect="--turns must be >= 8"),
    BadInput("eval-mtbench-bad-file", [M, "eval", "mtbench", "--model", "oracle", "--data", "{tmp}/b.json", "-o", "{tmp}/o.json"],
             expect="expected", setup=file_at("b.json", '[{"type": "nonsense", "conversations": []}]')),
    BadInput("bench-bad-memos", [M, "bench", "--memos", "0", "--kills", "0"], expect="--memos must be comma-separated positive integers"),
    BadInput("demo-zero-answer-tokens", [M, "demo", "--answer-tokens", "0", "-o", "{tmp}/demo"], expect="--answer-tokens must be >= 1"),
]
