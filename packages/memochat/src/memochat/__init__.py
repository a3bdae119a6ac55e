"""memochat: long-range conversational memory through self-written memos (MemoChat, arXiv 2308.08239).

Typical use::

    store = memochat.MemoStore("memory.db")                       # SQLite, persistent
    bot = memochat.MemoChat(generator, store, memochat.MemoConfig())
    print(bot.chat("I moved to Lisbon last week.", user="ana").response)

``generator`` is any :class:`memochat.backends.Generator`: a local transformers model
(``TransformersGenerator.from_pretrained``), an OpenAI-compatible server (``OpenAIGenerator``) or a
scripted one for tests. ``memochat serve`` puts the same loop behind ``/v1/chat/completions``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from slimkit.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from memochat.api import add_lora, remove_lora
    from memochat.backends import Generator, OpenAIGenerator, ScriptedGenerator, TransformersGenerator
    from memochat.config import LoraConfig, MemoConfig
    from memochat.pipeline import MemoChat, TurnResult
    from memochat.prompts import load_prompts
    from memochat.store import MemoStore

try:
    __version__ = version("memochat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "Generator", "LoraConfig", "MemoChat", "MemoConfig", "MemoStore", "OpenAIGenerator", "ScriptedGenerator",
    "TransformersGenerator", "TurnResult", "__version__", "add_lora", "load_prompts", "remove_lora",
]  # fmt: skip

# Loaded on first access (PEP 562): `import memochat` (the CLI's --version) stays light.
_LAZY = {
    "add_lora": "memochat.api", "remove_lora": "memochat.api",
    "Generator": "memochat.backends", "OpenAIGenerator": "memochat.backends", "ScriptedGenerator": "memochat.backends",
    "TransformersGenerator": "memochat.backends", "LoraConfig": "memochat.config", "MemoConfig": "memochat.config",
    "MemoChat": "memochat.pipeline", "TurnResult": "memochat.pipeline", "load_prompts": "memochat.prompts",
    "MemoStore": "memochat.store",
}  # fmt: skip


__getattr__ = lazy_exports("memochat", _LAZY, globals())
