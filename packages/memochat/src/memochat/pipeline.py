"""The memorization-retrieval-response loop, one user turn at a time, over a persistent store.

Per user turn (the official order):

1. **Memorization.** When the session's recent buffer holds ``max_lines`` lines or more than
   ``max_words`` words, the LLM writes memos (topic, summary, line span) over the buffer minus its
   carried-over first ``keep_lines`` lines; the buffer then keeps its last ``keep_lines`` lines.
2. **Retrieval.** When memos exist, the LLM sees the user's sentence and the numbered
   ``topic. summary`` options (option 1 is the "none of the others" sentinel) and answers with
   numbers such as ``2#3``. Past ``prefilter_k`` memos, the prefilter keeps the best candidates first.
3. **Response.** The prompt holds the picked memos with their dialogue lines, the recent lines and
   the input, truncated from the left to ``context_tokens - answer_tokens``.

The turn (its memos, the buffer trim, the user and bot lines) is then committed in one transaction.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field
from typing import Any

from memochat.backends import Generator
from memochat.config import MemoConfig
from memochat.parsing import normalize_answer, parse_memos, parse_picks
from memochat.prefilter import Embedder, MemoIndex, load_embedder, prefilter
from memochat.prompts import Prompts, default_prompts
from memochat.store import Memo, MemoStore, NewMemo, SessionState, TurnConflict
from slimkit.errors import BadInputError
from slimkit.report import ReportMixin

WRITING_STOP = ("]",)
RETRIEVAL_STOP = ("\n",)
MAX_COMMIT_TRIES = 20


@dataclass
class TurnResult(ReportMixin):
    """What one turn did: the answer, the memos written and retrieved, the prompts ("thinking") and timings."""

    response: str
    user: str
    session: str
    turn: int
    written: list[dict[str, Any]] = field(default_factory=list)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    options: int = 0
    candidates: int = 0
    thinking: dict[str, Any] = field(default_factory=dict)
    model_s: float = 0.0
    embed_s: float = 0.0
    overhead_s: float = 0.0


@dataclass
class _Prepared:
    state: SessionState
    new: list[NewMemo]
    trim: bool
    prompt: str
    user_line: str
    result: TurnResult


class MemoChat:
    """Long-range memory for any :class:`~memochat.backends.Generator` through self-written memos."""

    def __init__(self, generator: Generator, store: MemoStore, config: MemoConfig | None = None,
                 prompts: Prompts | None = None, embedder: Embedder | None = None) -> None:  # fmt: skip
        self.generator = generator
        self.store = store
        self.config = config or MemoConfig()
        self.prompts = prompts or default_prompts()
        self._embedder = embedder
        self._embedder_tried = embedder is not None
        self._indexes: dict[tuple[str, str | None], MemoIndex] = {}

    # ------------------------------------------------------------------ helpers

    @property
    def embedder(self) -> Embedder | None:
        if not self._embedder_tried:
            self._embedder_tried = True
            self._embedder = load_embedder(self.config.prefilter)
        return self._embedder

    def _gen(self, prompt: str, max_new: int, stop: tuple[str, ...], task: str, res: TurnResult) -> str:
        t = time.perf_counter()
        try:
            return self.generator.generate(prompt, max_new_tokens=max_new, stop=stop, task=task)
        finally:
            res.model_s += time.perf_counter() - t

    def _fit(self, prompt: str) -> str:
        return self.generator.truncate_left(prompt, self.config.prompt_tokens)

    def index(self, user: str, session: str) -> MemoIndex:
        key = (user, session if self.config.memo_scope == "session" else None)
        if key not in self._indexes:
            self._indexes[key] = MemoIndex(*key)
        idx = self._indexes[key]
        idx.refresh(self.store)
        return idx

    def needs_memo(self, buffer: list[str]) -> bool:
        cfg = self.config
        return len(buffer) >= cfg.max_lines or len(" ### ".join(buffer).split(" ")) > cfg.max_words

    # ------------------------------------------------------------------ the three steps

    def _memorize(self, state: SessionState, res: TurnResult) -> list[NewMemo]:
        cfg = self.config
        lines = state.buffer[cfg.keep_lines :]
        if not lines:
            return []
        prompt = self._fit(self.prompts.writing(lines))
        out = self._gen(prompt, cfg.memo_tokens, WRITING_STOP, "writing", res)
        res.thinking["summarization"] = {"input": prompt, "output": out}
        memos = [NewMemo(it.topic, it.summary, lines[it.start - 1 : it.end]) for it in parse_memos(out, len(lines))]
        if not memos:  # nothing parsed: keep the whole buffer as a partial-dialogs memo
            rng = random.Random(cfg.seed * 1_000_003 + state.session_id * 7919 + state.turn)
            a, b = rng.choice(lines), rng.choice(lines)
            topic = "Partial dialogs" if cfg.fallback_retrievable else cfg.sentinel
            memos = [NewMemo(topic, f"Partial dialogs about: {a} or {b}.", list(lines), retrievable=cfg.fallback_retrievable)]
        return memos

    def _retrieve(self, text: str, state: SessionState, new: list[NewMemo], res: TurnResult) -> list[Memo]:
        cfg = self.config
        idx = self.index(state.user, state.session)
        extra = [Memo(0, state.user, state.session, m.topic, m.summary, m.dialogs, state.turn + 1) for m in new if m.retrievable]
        res.candidates = len(idx.memos) + len(extra)
        if res.candidates == 0:
            return []
        if res.candidates > cfg.prefilter_k and cfg.prefilter != "none":
            shown, timing = prefilter(text, idx.memos, cfg.prefilter_k, index=idx, store=self.store,
                                      embedder=self.embedder, extra=extra)  # fmt: skip
            res.embed_s += timing["embed_s"]
        else:
            shown = list(idx.memos) + extra
        options = [f"{cfg.sentinel}. {cfg.sentinel_summary}"] + [m.option for m in shown]
        res.options = len(options)
        prompt = self._fit(self.prompts.retrieval(text, options))
        out = self._gen(prompt, cfg.retrieval_tokens, RETRIEVAL_STOP, "retrieval", res)
        res.thinking["retrieval"] = {"input": prompt, "output": out}
        return [shown[i - 1] for i in parse_picks(out, len(options), exclude=(0,))]

    def _prepare(self, text: str, user: str, session: str) -> _Prepared:
        if not isinstance(text, str) or not text.strip():
            raise BadInputError("the user message is empty")
        t0 = time.perf_counter()
        cfg = self.config
        state = self.store.session_state(user, session, cfg.seed_lines)
        res = TurnResult("", user, session, state.turn + 1)
        new: list[NewMemo] = []
        trim = self.needs_memo(state.buffer)
        if trim:
            new = self._memorize(state, res)
        recent = state.buffer[-cfg.keep_lines :] if trim and cfg.keep_lines else ([] if trim else state.buffer)
        picked = self._retrieve(text, state, new, res)
        res.written = [{"topic": m.topic, "summary": m.summary, "dialogs": m.dialogs, "retrievable": m.retrievable} for m in new]
        res.retrieved = [{"id": m.id or None, "topic": m.topic, "summary": m.summary} for m in picked]
        evidences = [{"Related Topics": m.topic, "Related Summaries": m.summary, "Related Dialogs": " ### ".join(m.dialogs)}
                     for m in picked]  # fmt: skip
        user_line = "user: " + text
        prompt = self._fit(self.prompts.chatting(evidences, recent, user_line))
        res.thinking["response"] = {"input": prompt}
        res.overhead_s = time.perf_counter() - t0 - res.model_s - res.embed_s
        return _Prepared(state, new, trim, prompt, user_line, res)

    def _commit(self, prep: _Prepared, answer: str) -> TurnResult:
        t0 = time.perf_counter()
        res = prep.result
        res.response = normalize_answer(answer)
        res.thinking["response"]["output"] = answer
        lines = [prep.user_line, "bot: " + res.response]
        state, memos, keep = prep.state, prep.new, self.config.keep_lines if prep.trim else None
        for _ in range(MAX_COMMIT_TRIES):
            try:
                self.store.commit_turn(state, memos, keep, lines)
                break
            except TurnConflict:  # another writer moved the session on: append our lines after its turn
                state = self.store.session_state(state.user, state.session, self.config.seed_lines)
                memos, keep = [], None
        else:  # pragma: no cover - needs MAX_COMMIT_TRIES writers racing on one session
            raise BadInputError(f"session {state.user}/{state.session} is too busy: gave up after {MAX_COMMIT_TRIES} tries")
        res.turn = state.turn + 1
        res.overhead_s += time.perf_counter() - t0
        return res

    # ------------------------------------------------------------------ public

    def chat(self, text: str, user: str = "default", session: str = "default") -> TurnResult:
        """One turn: memorize if due, retrieve, answer, commit. Returns the :class:`TurnResult`."""
        prep = self._prepare(text, user, session)
        answer = self._gen(prep.prompt, self.config.answer_tokens, (), "chatting", prep.result)
        return self._commit(prep, answer)

    def chat_stream(self, text: str, user: str = "default", session: str = "default") -> PyGenerator[str | TurnResult, None, None]:
        """The same turn with the answer streamed: yields text pieces, then the :class:`TurnResult`
        (the turn is committed once the answer is complete; a stream abandoned early commits nothing)."""
        prep = self._prepare(text, user, session)
        pieces: list[str] = []
        t = time.perf_counter()
        stream = self.generator.stream(prep.prompt, max_new_tokens=self.config.answer_tokens, task="chatting")
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:  # abandoned: stop the backend's generation now, not when the stream is garbage-collected
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        prep.result.model_s += time.perf_counter() - t
        yield self._commit(prep, "".join(pieces))
