"""MT-Bench+ (the paper's test set) for a user-supplied file in the official format, and its judge.

File format (``mtbenchplus.json``): a JSON list of dialogues ``{"id", "type", "conversations"}``;
``type`` is ``retrospection``, ``continuation`` or ``conjunction``; ``conversations`` alternates
``{"from": "human", "value", "turn-info"}`` and ``{"from": "chatbot", "value"}``. A human turn's
``turn-info`` is ``<category>-<question id>-<round>``; the final probe's is ``<category>-<id>-Q``
(or ``<cat>-<id>-<cat>-<id>-Q`` when it refers to two earlier questions).

:func:`answer` fills every chatbot turn by running the dialogue through a :class:`MemoChat`
(a user of its own per dialogue, so no dialogue retrieves another's memos, as in the official
loop, whose memo lives for one dialogue). :func:`judge` asks an OpenAI-compatible judge model to rate each
final answer 1-100 for consistency with the bot's own earlier answers on the referenced question(s)
(the judge sees only those turns), reads ``[[rating]]`` (a reply without one is counted as missing,
not as zero) and averages per type and overall.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memochat.backends import Generator
from memochat.parsing import parse_rating
from memochat.pipeline import MemoChat
from memochat.prompts import Prompts, default_prompts
from slimkit.errors import BadInputError
from slimkit.io import load_json
from slimkit.progress import progress

TYPES = ("retrospection", "continuation", "conjunction")


def load_mtbench(path: str | Path) -> list[dict[str, Any]]:
    """The dialogues of an MT-Bench+ file, checked (types, alternation, the final probe's turn-info)."""
    p = Path(path)
    data = load_json(p, "MT-Bench+ file")
    if not isinstance(data, list) or not data:
        raise BadInputError(f"MT-Bench+ file {p} must hold a non-empty JSON list")
    for i, d in enumerate(data):
        where = f"{p}[{i}]"
        if not isinstance(d, dict) or d.get("type") not in TYPES or not isinstance(d.get("conversations"), list):
            raise BadInputError(f"{where}: expected {{id, type: {'|'.join(TYPES)}, conversations: [...]}}")
        conv = d["conversations"]
        if len(conv) < 2 or len(conv) % 2:
            raise BadInputError(f"{where}: conversations must alternate human and chatbot turns")
        for j, turn in enumerate(conv):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise BadInputError(f"{where}.conversations[{j}]: each turn needs a string 'value'")
            if j % 2 == 0 and not isinstance(turn.get("turn-info"), str):
                raise BadInputError(f"{where}.conversations[{j}]: human turns need 'turn-info'")
        if not conv[-2]["turn-info"].endswith("-Q"):
            raise BadInputError(f"{where}: the last human turn must be the probe (turn-info ending in -Q)")
    return data


def answer(bot: MemoChat, dialogues: Sequence[dict[str, Any]], show_progress: bool = False) -> list[dict[str, Any]]:
    """Copies of ``dialogues`` with every chatbot turn answered by ``bot``: dialogue ``i`` is user
    ``mtbench-<i>``, session ``<id>``, so its memos stay its own whatever ``memo_scope`` says."""
    out = []
    total = sum(len(d["conversations"]) // 2 for d in dialogues)
    bar = progress(total=total, desc="mtbench", disable=None if show_progress else True)
    for i, d in enumerate(dialogues):
        conv = [dict(t) for t in d["conversations"]]
        for j in range(0, len(conv), 2):
            res = bot.chat(conv[j]["value"], user=f"mtbench-{i}", session=str(d.get("id", i)))
            conv[j + 1]["value"] = res.response
            conv[j + 1]["thinking"] = json.dumps(res.thinking)
            bar.update(1)
        out.append({**d, "conversations": conv})
    bar.close()
    return out


def judge_prompt(dialogue: dict[str, Any], prompts: Prompts | None = None) -> str:
    """The judge prompt: the referenced earlier turns, the probe and the final answer."""
    prm = prompts or default_prompts()
    conv = dialogue["conversations"]
    parts = conv[-2]["turn-info"].split("-")
    refs = {"-".join(parts[0:2])} | ({"-".join(parts[2:4])} if len(parts) == 5 else set())
    history = []
    for j in range(0, len(conv) - 2, 2):
        if conv[j]["turn-info"].rsplit("-", 1)[0] in refs:
            history += ["user: " + conv[j]["value"], "bot: " + conv[j + 1]["value"]]
    return prm.judge(history, conv[-2]["value"], conv[-1]["value"])


def judge(dialogues: Sequence[dict[str, Any]], judge_model: Generator, prompts: Prompts | None = None,
          max_tokens: int = 512, show_progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Ratings per dialogue and the mean per type and overall (missing ratings left out and counted)."""
    rows = []
    for d in progress(dialogues, desc="judge", disable=None if show_progress else True):
        prompt = judge_prompt(d, prompts)
        reply = judge_model.generate(prompt, max_new_tokens=max_tokens, task="judge")
        rows.append({"id": d.get("id"), "type": d["type"], "rating": parse_rating(reply), "evaluation": reply})
    return {"ratings": rows, **scores(rows)}


def scores(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def mean(vals: list[int]) -> float | None:
        return round(sum(vals) / len(vals), 2) if vals else None

    by = {t: [r["rating"] for r in rows if r["type"] == t and r["rating"] is not None] for t in TYPES}
    allv = [v for vals in by.values() for v in vals]
    return {"scores": {**{t: mean(v) for t, v in by.items()}, "overall": mean(allv)},
            "missing": sum(r["rating"] is None for r in rows), "judged": len(rows)}  # fmt: skip
