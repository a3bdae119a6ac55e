"""MT-Bench+: file checks, answering through the pipeline, the judge's prompt, ratings and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memochat.backends import OpenAIGenerator, ScriptedGenerator
from memochat.config import MemoConfig
from memochat.mtbench import answer, judge, judge_prompt, load_mtbench
from memochat.pipeline import MemoChat
from memochat.server import create_app, running_server
from memochat.store import MemoStore
from slimkit.errors import BadInputError


def _dialogue(i: int, kind: str, probe_info: str) -> dict:  # type: ignore[type-arg]
    turns = [("stem-1-0", "Explain tides."), ("stem-1-1", "Shorter please."), ("writing-7-0", "Write a haiku about rain."),
             (probe_info, "Go back to the tides: what causes them?")]  # fmt: skip
    conv = []
    for info, text in turns:
        conv += [{"from": "human", "value": text, "turn-info": info}, {"from": "chatbot", "value": ""}]
    return {"id": f"d{i}", "type": kind, "conversations": conv}


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    data = [_dialogue(0, "retrospection", "stem-1-Q"), _dialogue(1, "conjunction", "stem-1-writing-7-Q"),
            _dialogue(2, "continuation", "writing-7-Q")]  # fmt: skip
    path = tmp_path / "mtbenchplus.json"
    path.write_text(json.dumps(data))
    return path


def test_answer_then_judge_over_http(tmp_path: Path, bench_file: Path) -> None:
    dialogues = load_mtbench(bench_file)
    bot = MemoChat(ScriptedGenerator(lambda p, t: "bot reply" if t == "chatting" else "1"), MemoStore(tmp_path / "m.db"),
                   MemoConfig(prefilter="none"))  # fmt: skip
    answered = answer(bot, dialogues)
    assert all(c["value"] == "bot reply" for d in answered for c in d["conversations"][1::2])
    assert bot.store.session_state("mtbench-1", "d1").turn == 4  # one user and session per dialogue
    # the judge: a real OpenAI-compatible server whose model rates 80, then forgets the brackets, then 60
    ratings = iter(["Fine. [[80]]", "I would say 70.", "Rating: [[60]]"])
    judge_bot = MemoChat(ScriptedGenerator(lambda p, t: next(ratings) if t == "chatting" else "1"),
                         MemoStore(tmp_path / "j.db"), MemoConfig(prefilter="none"))  # fmt: skip
    with running_server(create_app(judge_bot)) as url:
        result = judge(answered, OpenAIGenerator(url, retries=0))
    assert [r["rating"] for r in result["ratings"]] == [80, None, 60]
    assert result["scores"] == {"retrospection": 80.0, "continuation": 60.0, "conjunction": None, "overall": 70.0}
    assert result["missing"] == 1


def test_judge_prompt_holds_only_the_referenced_turns(bench_file: Path) -> None:
    d0, d1, d2 = load_mtbench(bench_file)
    for d in (d0, d1, d2):
        for c in d["conversations"][1::2]:
            c["value"] = "A"
    p0 = judge_prompt(d0)
    assert "user: Explain tides." in p0 and "user: Shorter please." in p0 and "haiku" not in p0.split("Final question")[0]
    p1 = judge_prompt(d1)
    assert "user: Explain tides." in p1 and "user: Write a haiku about rain." in p1
    p2 = judge_prompt(d2)
    assert "tides." not in p2.split("Final question")[0] and "user: Write a haiku about rain." in p2


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content, msg in ((json.dumps([{"type": "other", "conversations": []}]), "expected"),
                         (json.dumps([_dialogue(0, "retrospection", "stem-1-2")]), "-Q"), ("[", "not valid JSON")):  # fmt: skip
        bad.write_text(content)
        with pytest.raises(BadInputError, match=msg):
            load_mtbench(bad)


def test_dialogues_never_retrieve_each_others_memos(tmp_path: Path, bench_file: Path) -> None:
    """The official memo lives for one dialogue: with the default user-wide memo scope, dialogue 2
    must not be offered the memos dialogue 1 wrote."""
    dialogues = load_mtbench(bench_file)
    gen = ScriptedGenerator(lambda p, t: '[{"topic": "tides", "summary": "s", "start": 1, "end": 2}]' if t == "writing" else "1")
    with MemoStore(tmp_path / "m.db") as store:
        answer(MemoChat(gen, store, MemoConfig(prefilter="none", max_lines=4)), dialogues)
        assert len({m.user for m in store.memos()}) == 3  # each dialogue wrote memos, each under its own user
    # every dialogue opens with "Explain tides.": no memo exists for it yet, so nothing is retrieved then
    assert not [p for t, p in gen.calls if t == "retrieval" and "Query Sentence:\nExplain tides.\n" in p]
    assert any(t == "retrieval" for t, _ in gen.calls)  # later turns do retrieve their own dialogue's memos
