"""Instruction builders, the official mix, and the paper's loss masking."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memochat.data import (
    IGNORE_INDEX,
    OFFICIAL_MIX,
    build_all,
    build_alpaca,
    build_dialogsum,
    build_topiocqa,
    encode,
    mix,
    write_sample_sources,
)  # fmt: skip
from memochat.models import ByteTokenizer
from slimkit.errors import BadInputError


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sample_sources(tmp_path_factory.mktemp("src"), n=12)


def test_topiocqa_writing_merges_topics_and_retrieval_points_right(sources: dict[str, Path]) -> None:
    recs = build_topiocqa(sources["topiocqa"])
    writing = [r for r in recs if r["type"] == "writing_topiocqa"]
    assert len(writing) == 12
    items = json.loads(writing[0]["output"])
    assert items[0]["start"] == 1 and items[-1]["end"] == 6 and all(i["summary"] == "" for i in items)
    assert len(items) == 2  # the first two turns share their topic and are merged
    assert "(line 6) bot: " in writing[0]["input"]
    for r in (r for r in recs if r["type"] == "retrieval_topiocqa"):
        options = dict(re.findall(r"^\((\d+)\) (.*)$", r["input"], re.M))
        assert options["1"].startswith("NOTO")
        picks = r["output"].split("#")
        query = r["input"].split("Query Sentence:\n")[1].split("\nTopic Options:")[0]
        if picks != ["1"]:  # each picked topic is one of the questions' topics
            assert all(options[p] in {"travel", "party planning", "repairs", "housing", "work", "music", "sports", "gardening"} for p in picks)
            assert query


def test_dialogsum_tasks(sources: dict[str, Path]) -> None:
    recs = build_dialogsum(sources["dialogsum"])
    kinds = {r["type"] for r in recs}
    assert kinds == {"writing_dialogsum", "retrieval_dialogsum", "chatting_dialogsum"}
    w = next(r for r in recs if r["type"] == "writing_dialogsum")
    items = json.loads(w["output"])
    assert [i["start"] for i in items] == [1 + 6 * k for k in range(len(items))]  # 6 lines per dialogue
    assert "#Person" not in w["input"] and "user: I need help" in w["input"]
    c = next(r for r in recs if r["type"] == "chatting_dialogsum")
    assert "Related Evidences:\n(1) {'Related Topics'" in c["input"] and c["output"].startswith("Yes, pay")


def test_alpaca_plain_and_continue(sources: dict[str, Path]) -> None:
    recs = build_alpaca(sources["alpaca"], continue_rate=1.0)
    assert all(r["type"] == "chatting_alpacagpt4" for r in recs)
    cont = [r for r in recs if r["id"].endswith("-cont")]
    assert cont and all("Recent Dialogs:\nuser: How do I handle" in r["input"] for r in cont)
    assert len(build_alpaca(sources["alpaca"], continue_rate=0.0)) == 12


def test_mix_follows_the_official_proportions(sources: dict[str, Path]) -> None:
    recs = build_all(sources["topiocqa"], sources["dialogsum"], sources["alpaca"]) * 60  # enough of every type
    got = mix(recs, 1000, seed=0)
    assert len(got) == 1000
    for t, n in OFFICIAL_MIX.items():
        assert abs(sum(r["type"] == t for r in got) - n) <= 1


def test_loss_masking_and_left_truncation() -> None:
    tok = ByteTokenizer()
    rec = {"type": "retrieval_dialogsum", "input": "pick one", "output": "2#3"}
    e = encode(tok, rec, max_len=100, prefix="<s>\n")
    n_src = len(tok.encode("<s>\npick one\n"))
    assert e["labels"][:n_src] == [IGNORE_INDEX] * n_src
    assert e["labels"][n_src:] == [*tok.encode("2#3"), tok.eos_token_id] == e["input_ids"][n_src:]
    short = encode(tok, rec, max_len=6)
    assert short["input_ids"] == e["input_ids"][-6:] and short["labels"][-4:] == [*tok.encode("2#3"), 2]


def test_bad_sources(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps([{"Context": "oops"}]))
    with pytest.raises(BadInputError, match="Context"):
        build_topiocqa(tmp_path / "t.json")
    (tmp_path / "d.jsonl").write_text("{broken\n")
    with pytest.raises(BadInputError, match="not valid JSONL"):
        build_dialogsum(tmp_path / "d.jsonl")
    with pytest.raises(BadInputError, match="at least one"):
        build_all(None, None, None)
