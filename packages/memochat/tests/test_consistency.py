"""The consistency benchmark: generated conversations, exact match, and the oracle's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memochat.config import MemoConfig
from memochat.consistency import (
    KINDS,
    Conversation,
    OracleGenerator,
    exact_match,
    load_conversations,
    make_conversations,
    run_variant,
    save_conversations,
)  # fmt: skip
from slimkit.errors import BadInputError


def test_conversations_are_deterministic_and_well_formed() -> None:
    a, b = make_conversations(2, 3, 10, seed=5), make_conversations(2, 3, 10, seed=5)
    assert [c.to_dict() for c in a] == [c.to_dict() for c in b]
    assert [c.to_dict() for c in a] != [c.to_dict() for c in make_conversations(2, 3, 10, seed=6)]
    for conv in a:
        assert [len(s) for s in conv.sessions] == [10, 10, 10]
        assert not any(t.probe for t in conv.sessions[0])  # facts first, probes only in later sessions
        probes = [t.probe for s in conv.sessions[1:] for t in s if t.probe]
        assert sorted(p.kind for p in probes) == sorted(KINDS * 2)
        planted = " ".join(t.user for t in conv.sessions[0])
        for p in probes:
            assert all(e in planted for e in p.expect)  # every answer was planted


def test_exact_match_is_whole_word_and_case_blind() -> None:
    assert exact_match("It is Biscuit, I think", ["biscuit"])
    assert not exact_match("Biscuits", ["Biscuit"])
    assert exact_match("4417 and teal", ["4417", "teal"]) and not exact_match("4417", ["4417", "teal"])


def test_oracle_table_separates_the_variants() -> None:
    convs = make_conversations(1, 3, 20, seed=0)
    oracle = OracleGenerator()
    res = {v: run_variant(v, oracle, convs, MemoConfig(prefilter="bm25")) for v in ("full", "none", "memochat", "memochat+prefilter")}
    assert res["none"]["em"] == 0.0
    assert res["memochat"]["em"] == 1.0 and res["memochat+prefilter"]["em"] == 1.0
    assert res["full"]["em"] < 1.0  # the early facts fell out of the 1536-token window
    assert res["memochat"]["probes"] == 6


def test_round_trip_and_validation(tmp_path: Path) -> None:
    convs = make_conversations(1, 2, 8)
    save_conversations(tmp_path / "c.json", convs)
    assert [c.to_dict() for c in load_conversations(tmp_path / "c.json")] == [c.to_dict() for c in convs]
    bad = convs[0].to_dict()
    bad["sessions"][1][0]["probe"] = {"kind": "guess", "expect": ["x"]}
    (tmp_path / "b.json").write_text(json.dumps([bad]))
    with pytest.raises(BadInputError, match="probe kind"):
        load_conversations(tmp_path / "b.json")
    with pytest.raises(BadInputError, match="turns >= 8"):
        make_conversations(1, 2, 5)
    assert Conversation.from_dict({"id": "x", "sessions": [[{"user": "hi"}]]}).sessions[0][0].probe is None


def test_probes_close_each_later_session_and_plants_open_the_first() -> None:
    for conv in make_conversations(2, 4, 12, seed=3):
        assert all(t.probe is None for t in conv.sessions[0]) and all("my " in t.user for t in conv.sessions[0][:7])
        for s in conv.sessions[1:]:
            assert [t.probe is not None for t in s] == [False] * 9 + [True] * 3
            assert sorted(t.probe.kind for t in s[-3:] if t.probe) == sorted(KINDS)


def test_a_failing_model_leaves_no_store_open(monkeypatch: pytest.MonkeyPatch) -> None:
    from memochat.store import MemoStore

    closed: list[object] = []
    real_close = MemoStore.close

    def close(self: MemoStore) -> None:
        closed.append(self)
        real_close(self)

    class Failing(OracleGenerator):
        calls = 0

        def generate(self, prompt: str, **kwargs: object) -> str:  # type: ignore[override]
            Failing.calls += 1
            if Failing.calls == 5:
                raise RuntimeError("model crashed")
            return super().generate(prompt, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MemoStore, "close", close)
    with pytest.raises(RuntimeError, match="model crashed"):
        run_variant("memochat", Failing(), make_conversations(1, 2, 8), MemoConfig(prefilter="none"))
    assert len(closed) == 1
