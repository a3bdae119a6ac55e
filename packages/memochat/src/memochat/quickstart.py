"""``memochat demo`` / ``make demo``: a short memo conversation with SmolLM2-135M-Instruct on the CPU.

Six user turns about a planned trip (our own text): after the fourth, the buffer holds 10 lines
(the seed pair and four turns), so the fifth turn starts by writing the first memos; the sixth asks
about facts from the first turns. Writes ``transcript.md`` (every turn, the memos written and
retrieved) and ``memos.json`` (every stored memo, as a JSON list) into the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from memochat.backends import Generator, load_generator
from memochat.config import MemoConfig
from memochat.consistency import OracleGenerator
from memochat.pipeline import MemoChat
from memochat.store import MemoStore

__all__ = ["run", "DEMO_TURNS"]

DEMO_TURNS = [
    "Hi! I am planning a trip to Lisbon in May with my brother Tomas.",
    "We want to rent bikes there. Is cycling in Lisbon hard because of the hills?",
    "Good to know. My brother is vegetarian, so we need restaurants with vegetarian food.",
    "Also, our budget is 900 euros for the whole week.",
    "Which day trip from Lisbon would you suggest for one day?",
    "Remind me: who am I travelling with, and what is our budget?",
]


def run(out: Path, model: str = "smollm2", generator: Generator | None = None, answer_tokens: int = 64,
        progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run the demo conversation into ``out``; returns ``what`` / ``figure`` / ``files`` for ``make demo``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "memory.db"
    for suffix in ("", "-wal", "-shm"):  # the demo owns its folder: start afresh
        Path(str(db) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    owned = generator is None  # a generator loaded here is closed here; one passed in stays the caller's
    if generator is None:  # oracle: the rule-based model of the consistency benchmark (no weights)
        generator = OracleGenerator() if model == "oracle" else load_generator(model, cache_dir=out.parent / ".memochat-cache")
    try:
        return _run(out, db, model, generator, answer_tokens, progress, time.perf_counter() - t0)
    finally:
        if owned:
            generator.close()


def _run(out: Path, db: Path, model: str, gen: Generator, answer_tokens: int, progress: bool, load_s: float) -> dict[str, Any]:
    cfg = MemoConfig(answer_tokens=answer_tokens, prefilter="none")
    store = MemoStore(db)
    bot = MemoChat(gen, store, cfg)
    lines = [f"# memochat demo ({getattr(gen, 'name', 'model')}: {model})", ""]
    turns: list[dict[str, Any]] = []
    for i, text in enumerate(DEMO_TURNS):
        t = time.perf_counter()
        res = bot.chat(text, user="demo", session="trip")
        seconds = time.perf_counter() - t
        turns.append({"user": text, "bot": res.response, "seconds": seconds, "written": res.written, "retrieved": res.retrieved})
        quoted = res.response.replace("\n", "\n> ")
        lines += [f"**turn {i + 1}** ({seconds:.1f} s)", "", f"> user: {text}", ">", f"> bot: {quoted}", ""]
        for m in res.written:
            lines.append(f"- memo written: **{m['topic']}**: {m['summary']} ({len(m['dialogs'])} lines)")
        for m in res.retrieved:
            lines.append(f"- memo retrieved: **{m['topic']}**")
        lines.append("")
        if progress:
            print(f"demo turn {i + 1}/{len(DEMO_TURNS)}: {seconds:.1f} s", flush=True)
    memos = [m.to_dict() for m in store.memos()]
    store.close()
    (out / "transcript.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "memos.json").write_text(json.dumps(memos, indent=2), encoding="utf-8")
    per_turn = sum(t["seconds"] for t in turns) / len(turns)
    figure = f"{len(memos)} memos written over {len(turns)} turns, {per_turn:.1f} s/turn on CPU"
    return {"what": f"{len(turns)}-turn memo conversation with {model} (memo writing, retrieval, response)",
            "figure": figure, "files": [str(out / "transcript.md"), str(out / "memos.json")],
            "turns": turns, "memos": memos, "load_s": load_s, "seconds_per_turn": per_turn}  # fmt: skip
