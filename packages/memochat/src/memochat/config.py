"""Configurations: the memo pipeline's constants (:class:`MemoConfig`) and LoRA tuning (:class:`LoraConfig`).

Every constant of the official MemoChat loop is a field here, with the official value as default
(10 buffered lines or 1024 words trigger memo writing, 2 lines kept, a 2048-token context of which
512 are left for the answer). Serialized only through :mod:`slimkit.io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimkit.errors import BadInputError

PREFILTERS = ("auto", "embedding", "bm25", "none")
MEMO_SCOPES = ("user", "session")
SYNC_MODES = ("NORMAL", "FULL")


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInputError(f"{name} must be an integer >= {low}, got {value!r}")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class MemoConfig:
    """The memorization-retrieval-response loop.

    ``max_lines`` / ``max_words`` / ``keep_lines``: memo writing runs before a turn when the recent
    buffer holds at least ``max_lines`` lines or more than ``max_words`` space-separated words, over
    the buffer minus its first ``keep_lines`` (carried-over) lines; afterwards the buffer keeps its
    last ``keep_lines``. ``context_tokens - answer_tokens`` is the prompt budget (truncated from the
    left); ``memo_tokens`` / ``retrieval_tokens`` / ``answer_tokens`` cap each task's output.
    ``prefilter_k``: past this many memos, ``prefilter`` keeps the best ``prefilter_k`` before the
    LLM picks (``auto``: embeddings when the model loads, BM25 otherwise). ``memo_scope``: memos of
    all a user's sessions (``user``) or of the session only. ``fallback_retrievable``: when memo
    writing parses to nothing, the buffer is kept as a "partial dialogs" memo the LLM can pick
    (``False``: filed under the sentinel as the official code does, so it is never retrieved).
    ``seed_lines``: the greeting pair every new session's buffer starts with (the official one).
    """

    max_lines: int = 10
    max_words: int = 1024
    keep_lines: int = 2
    context_tokens: int = 2048
    answer_tokens: int = 512
    memo_tokens: int = 512
    retrieval_tokens: int = 32
    prefilter: str = "auto"
    prefilter_k: int = 32
    memo_scope: str = "user"
    fallback_retrievable: bool = True
    seed_lines: list[str] = field(default_factory=lambda: ["user: Hi!", "bot: Hi! How can I help you today?"])
    sentinel: str = "NOTO"
    sentinel_summary: str = "None of the others."
    seed: int = 0

    def __post_init__(self) -> None:
        _int("max_lines", self.max_lines, 1)
        _int("max_words", self.max_words, 1)
        _int("keep_lines", self.keep_lines, 0)
        if self.keep_lines >= self.max_lines:
            raise BadInputError(f"keep_lines must be < max_lines, got {self.keep_lines} >= {self.max_lines}")
        for name in ("context_tokens", "answer_tokens", "memo_tokens", "retrieval_tokens", "prefilter_k"):
            _int(name, getattr(self, name), 1)
        if self.answer_tokens >= self.context_tokens:
            raise BadInputError(f"answer_tokens must be < context_tokens, got {self.answer_tokens} >= {self.context_tokens}")
        _one_of("prefilter", self.prefilter, PREFILTERS)
        _one_of("memo_scope", self.memo_scope, MEMO_SCOPES)
        if not isinstance(self.fallback_retrievable, bool):
            raise BadInputError(f"fallback_retrievable must be true or false, got {self.fallback_retrievable!r}")
        if not isinstance(self.seed_lines, (list, tuple)) or not all(isinstance(s, str) for s in self.seed_lines):
            raise BadInputError(f"seed_lines must be a list of strings, got {self.seed_lines!r}")
        self.seed_lines = list(self.seed_lines)
        if not isinstance(self.sentinel, str) or not self.sentinel.strip():
            raise BadInputError("sentinel must be a non-empty string")
        _int("seed", self.seed, 0)

    @property
    def prompt_tokens(self) -> int:
        """The input budget every prompt is truncated (from the left) to."""
        return self.context_tokens - self.answer_tokens


@dataclass
class LoraConfig:
    """LoRA adapters on a causal LM (through peft): rank, alpha, dropout and the target module names.

    The default targets are the attention and MLP projections of Llama-style models (SmolLM2, Vicuna).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def __post_init__(self) -> None:
        _int("r", self.r, 1)
        _int("alpha", self.alpha, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise BadInputError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not isinstance(self.targets, (list, tuple)) or not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise BadInputError(f"targets must be a non-empty list of module names, got {self.targets!r}")
        self.targets = list(self.targets)
