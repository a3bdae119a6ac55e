"""Tolerant readers of model outputs: memo items, retrieval picks, judge ratings, chat answers.

None of them raises on model output: broken JSON, out-of-range or non-numeric picks and empty
answers all turn into "nothing found", which the pipeline handles.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|-?\d+")
_KEYS = ("topic", "summary", "start", "end")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


@dataclass(frozen=True)
class MemoItem:
    """One topic the model found: its name, summary and 1-based inclusive line span."""

    topic: str
    summary: str
    start: int
    end: int


def _clean(text: str) -> str:
    """Whitespace runs collapsed; the text itself (apostrophes and quotes inside it) kept."""
    return re.sub(r"\s+", " ", text).strip()


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _from_json(text: str) -> list[dict[str, object]] | None:
    """The first JSON list of objects in ``text``, or ``None``."""
    start = text.find("[")
    while start != -1:
        end = text.rfind("]")
        while end > start:
            try:
                data = json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                end = text.rfind("]", start, end)
                continue
            if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
                return data  # an empty list (``lines []``) before the real answer does not hide it
            break
        start = text.find("[", start + 1)
    return None


def _from_tokens(text: str) -> list[dict[str, object]]:
    """Walk the quoted strings and integers for ``topic X (summary Y) start N end M`` runs."""
    tokens = [_clean(t[1:-1]) if t[0] in "'\"" else t for t in _TOKEN.findall(text)]  # the delimiting quotes dropped
    found: list[dict[str, object]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "topic" and i + 1 < len(tokens):
            item: dict[str, object] = {"topic": tokens[i + 1]}
            j = i + 2
            for key in ("summary", "start", "end"):
                if j + 1 < len(tokens) and tokens[j] == key:
                    item[key] = tokens[j + 1]
                    j += 2
            if "start" in item and "end" in item:
                found.append(item)
                i = j
                continue
        i += 1
    return found


def parse_memos(text: str, num_lines: int) -> list[MemoItem]:
    """Memo items from a memo-writing answer over ``num_lines`` lines.

    Valid JSON is read directly; otherwise the quoted strings and numbers are walked for
    ``topic, X, summary, Y, start, N, end, M`` as the official parser does (``summary`` may be
    absent, as in the TopiOCQA task). Spans are clipped to ``1..num_lines`` and put in order;
    items without a topic or with a span entirely outside the lines are dropped.
    """
    if not isinstance(text, str) or num_lines < 1:
        return []
    raw = _from_json(text)
    if raw is None:
        raw = _from_tokens(text)
    items: list[MemoItem] = []
    for entry in raw:
        topic = _clean(str(entry.get("topic", "") or ""))
        summary = _clean(str(entry.get("summary", "") or ""))
        start, end = _as_int(entry.get("start")), _as_int(entry.get("end"))
        if not topic or start is None or end is None:
            continue
        if start > end:
            start, end = end, start
        if end < 1 or start > num_lines:
            continue
        items.append(MemoItem(topic, summary, max(1, start), min(num_lines, end)))
    return items


def parse_picks(text: str, num_options: int, exclude: tuple[int, ...] = ()) -> list[int]:
    """0-based option indices from a retrieval answer such as ``2#3`` (options numbered from 1).

    The official split on ``#`` first; when no part is a bare integer, every integer in the
    answer is tried. ``0``, negatives, numbers past ``num_options``, repeats and the options in
    ``exclude`` (the sentinel) are dropped; the official code read ``0`` as the last option.
    """
    if not isinstance(text, str):
        return []

    def valid(values: list[int]) -> list[int]:
        out: list[int] = []
        for v in values:
            idx = v - 1
            if 0 <= idx < num_options and idx not in exclude and idx not in out:
                out.append(idx)
        return out

    split = [p.strip() for p in text.strip().split("#")]
    picks = valid([int(p) for p in split if re.fullmatch(r"-?\d+", p)])
    if picks or any(re.fullmatch(r"-?\d+", p) for p in split):
        return picks
    return valid([int(m) for m in re.findall(r"(?<!\w)-?\d+", text)])  # a sign kept (-2 is not option 2), 2-3 read as 2, 3


def parse_rating(text: str) -> int | None:
    """The judge's ``[[rating]]`` as an integer 1..100 (a decimal is rounded), ``None`` when absent or out of range."""
    if not isinstance(text, str):
        return None
    match = _RATING.search(text)
    if match is None:
        return None
    value = round(float(match.group(1)))
    return value if 1 <= value <= 100 else None


def normalize_answer(text: str) -> str:
    """Runs of spaces inside each line collapsed, lines kept (the official post-processing)."""
    return "\n".join(" ".join(line.split()) for line in (text or "").split("\n")).strip()
