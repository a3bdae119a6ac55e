"""The memorization-retrieval-response loop on a real store with a scripted model."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from memochat.backends import Generator, ScriptedGenerator
from memochat.config import MemoConfig
from memochat.pipeline import MemoChat
from memochat.store import MemoStore
from slimkit.errors import BadInputError


def _tasks(gen: ScriptedGenerator) -> list[str]:
    return [t for t, _ in gen.calls]


def test_memo_writing_every_four_turns_and_buffer_keeps_two_lines(store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    gen = scripted()
    bot = MemoChat(gen, store, MemoConfig(prefilter="none"))
    wrote = [bool(bot.chat(f"message {i}").written) for i in range(9)]
    # 2 seed lines + 4 turns = 10 lines: the 5th turn writes, then 2 kept + 4 turns = 10 again at the 9th
    assert wrote == [False, False, False, False, True, False, False, False, True]
    state = store.session_state("default", "default")
    assert state.buffer == ["user: message 7", "bot: an answer", "user: message 8", "bot: an answer"]  # 2 kept + this turn
    memos = store.memos()
    assert [m.topic for m in memos] == ["first half", "second half"] * 2
    # the first write covers the 8 lines after the seed pair, split in halves
    assert memos[0].dialogs == ["user: message 0", "bot: an answer", "user: message 1", "bot: an answer"]
    assert memos[1].dialogs == ["user: message 2", "bot: an answer", "user: message 3", "bot: an answer"]
    # the second write skips the 2 carried lines (message 3), so it starts at message 4
    assert memos[2].dialogs[0] == "user: message 4"
    # retrieval runs on every turn once memos exist, never before
    assert _tasks(gen)[:4] == ["chatting"] * 4
    assert _tasks(gen)[4:7] == ["writing", "retrieval", "chatting"]


def test_official_defaults() -> None:
    cfg = MemoConfig()
    assert (cfg.max_lines, cfg.max_words, cfg.keep_lines, cfg.prompt_tokens) == (10, 1024, 2, 1536)
    assert cfg.seed_lines == ["user: Hi!", "bot: Hi! How can I help you today?"]  # the official session seed
    assert (cfg.sentinel, cfg.sentinel_summary) == ("NOTO", "None of the others.")


def test_new_session_starts_with_the_seed_pair(store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    gen = scripted()
    MemoChat(gen, store, MemoConfig(prefilter="none")).chat("first")
    assert "Recent Dialogs:\nuser: Hi! ### bot: Hi! How can I help you today?\n```" in gen.calls[0][1]


def test_word_trigger_fires_on_long_messages(store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    bot = MemoChat(scripted(), store, MemoConfig(prefilter="none", max_words=50))
    long = " ".join(["word"] * 60)
    assert not bot.chat(long).written  # the buffer held only the seed lines before this turn
    assert bot.chat("short").written  # now it holds > 50 words


def test_retrieval_prompt_options_and_picked_memos(replies: Callable[..., Callable[[str, str], str]], store: MemoStore) -> None:
    gen = ScriptedGenerator(replies(retrieval="3#9#0"))
    bot = MemoChat(gen, store, MemoConfig(prefilter="none"))
    for i in range(5):
        res = bot.chat(f"m{i}")
    prompt = next(p for t, p in gen.calls if t == "retrieval")
    options = re.findall(r"^\((\d+)\) (.*)$", prompt, re.M)
    assert options == [("1", "NOTO. None of the others."), ("2", "first half. the start"), ("3", "second half. the rest")]
    assert "Query Sentence:\nm4\n" in prompt
    assert [m["topic"] for m in res.retrieved] == ["second half"]  # 9 out of range, 0 ignored
    answer_prompt = gen.calls[-1][1]
    assert "'Related Topics': 'second half'" in answer_prompt and "'Related Topics': 'first half'" not in answer_prompt
    # after writing, the answer prompt's recent lines are the 2 kept lines only
    assert "Recent Dialogs:\nuser: m3 ### bot: an answer\n```" in answer_prompt


@pytest.mark.parametrize("retrievable", [True, False])
def test_unparsable_memo_output_falls_back(replies: Callable[..., Callable[[str, str], str]], store: MemoStore, retrievable: bool) -> None:
    gen = ScriptedGenerator(replies(writing="I cannot do that.", retrieval="2"))
    bot = MemoChat(gen, store, MemoConfig(prefilter="none", fallback_retrievable=retrievable))
    for i in range(5):
        res = bot.chat(f"m{i}")
    (memo,) = store.memos()
    assert memo.summary.startswith("Partial dialogs about: ") and len(memo.dialogs) == 8
    assert memo.retrievable is retrievable
    assert memo.topic == ("Partial dialogs" if retrievable else "NOTO")
    # the official behaviour files it under the sentinel: never offered, so no retrieval call happens
    assert ("retrieval" in _tasks(gen)) is retrievable
    assert bool(res.retrieved) is retrievable


@pytest.mark.parametrize("bad", ["", "   ", "]]]", "#", "-1#-2", "∞"])
def test_garbage_model_output_never_breaks_a_turn(store: MemoStore, bad: str) -> None:
    bot = MemoChat(ScriptedGenerator(lambda p, t: bad), store, MemoConfig(prefilter="none"))
    for i in range(6):
        res = bot.chat(f"m{i}")
    assert res.turn == 6 and store.check()["ok"]


def test_prompts_are_truncated_from_the_left(replies: Callable[..., Callable[[str, str], str]], store: MemoStore) -> None:
    gen = ScriptedGenerator(replies(chatting=" ".join(["blah"] * 300)))
    cfg = MemoConfig(prefilter="none", context_tokens=200, answer_tokens=50, max_lines=1000, max_words=10**6)
    bot = MemoChat(gen, store, cfg)
    for i in range(3):
        bot.chat(f"question {i}")
    last = gen.calls[-1][1]
    assert len(last.split(" ")) == 150  # the word budget of the scripted model: context - answer
    assert last.endswith("User Input:\nuser: question 2 ### bot: ")


def test_memo_scope_user_versus_session(replies: Callable[..., Callable[[str, str], str]], tmp_path: Path) -> None:
    for scope, expect_options in (("user", 3), ("session", 0)):
        store = MemoStore(tmp_path / f"{scope}.db")
        bot = MemoChat(ScriptedGenerator(replies()), store, MemoConfig(prefilter="none", memo_scope=scope))
        for i in range(5):
            bot.chat(f"m{i}", session="a")
        res = bot.chat("other session", session="b")
        assert res.options == expect_options
        store.close()


def test_prefilter_caps_the_options(replies: Callable[..., Callable[[str, str], str]], store: MemoStore) -> None:
    bot = MemoChat(ScriptedGenerator(replies()), store, MemoConfig(prefilter="bm25", prefilter_k=3))
    for i in range(13):
        res = bot.chat(f"m{i}")
    assert res.candidates == 6 and res.options == 4  # 3 kept + the sentinel


class _Exploding(Generator):
    def __init__(self, at: int, reply: Callable[[str, str], str]) -> None:
        self.n, self.at, self.reply = 0, at, reply

    def generate(self, prompt: str, *, max_new_tokens: int, stop=(), task: str = "chatting") -> str:  # type: ignore[no-untyped-def]
        self.n += 1
        if self.n == self.at:
            raise RuntimeError("model crashed")
        return self.reply(prompt, task)


def test_a_failed_turn_commits_nothing(replies: Callable[..., Callable[[str, str], str]], store: MemoStore) -> None:
    gen = _Exploding(0, replies())
    bot = MemoChat(gen, store, MemoConfig(prefilter="none"))
    for i in range(4):  # calls 1-4: one answer each
        bot.chat(f"m{i}")
    before = store.export_records()
    for at in (5, 6, 7):  # turn 5's memo writing, retrieval, then answer fail in turn
        gen.n, gen.at = 4, at
        with pytest.raises(RuntimeError):
            bot.chat("m4")
        assert store.export_records() == before
    gen.n, gen.at = 4, 0
    res = bot.chat("m4")
    assert res.turn == 5 and len(res.written) == 2 and store.check()["ok"]


def test_empty_message_is_bad_input(store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    with pytest.raises(BadInputError, match="empty"):
        MemoChat(scripted(), store).chat("   ")


def test_streaming_commits_the_same_turn(replies: Callable[..., Callable[[str, str], str]], store: MemoStore) -> None:
    bot = MemoChat(ScriptedGenerator(replies(chatting="streamed   answer")), store, MemoConfig(prefilter="none"))
    pieces = list(bot.chat_stream("hi"))
    assert pieces[0] == "streamed   answer" and pieces[-1].response == "streamed answer"  # type: ignore[union-attr]
    assert store.lines("default")[-2:] == ["user: hi", "bot: streamed answer"]
