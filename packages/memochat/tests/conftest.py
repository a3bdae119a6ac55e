"""Shared fixtures: a real SQLite store in a temp folder and a scripted model with fixed task answers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from memochat.backends import ScriptedGenerator
from memochat.store import MemoStore


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """memochat's models are tiny: one thread is faster than two fighting a busy CPU (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MemoStore]:
    s = MemoStore(tmp_path / "memory.db")
    yield s
    s.close()


def task_replies(writing: str | None = None, retrieval: str = "2", chatting: str = "an answer") -> Callable[[str, str], str]:
    """A reply function: two memos over the buffer's halves, a fixed pick, a fixed answer."""

    def reply(prompt: str, task: str) -> str:
        if task == "writing":
            if writing is not None:
                return writing
            n = prompt.count("(line ")
            return json.dumps([{"topic": "first half", "summary": "the start", "start": 1, "end": n // 2},
                               {"topic": "second half", "summary": "the rest", "start": n // 2 + 1, "end": n}])  # fmt: skip
        if task == "retrieval":
            return retrieval
        return chatting

    return reply


@pytest.fixture
def replies() -> Callable[..., Callable[[str, str], str]]:
    return task_replies


@pytest.fixture
def scripted() -> Callable[..., ScriptedGenerator]:
    return lambda **kw: ScriptedGenerator(task_replies(**kw))
