"""Instruction data for the paper's three tasks, built from local copies of public datasets.

Input formats (the files as their projects release them; nothing is downloaded):

* **TopiOCQA** (``topiocqa_train.json``): a JSON list of turns ``{"Conversation_no": int,
  "Turn_no": int, "Context": [str, ...], "Question": str, "Answer": str, "Topic": str}``; the last
  turn of a conversation holds the whole context. Gives memo writing *without* summaries (topics
  per turn, merged while the topic stays) and retrieval (user questions -> topic options).
* **DialogSum** (``dialogsum.train.jsonl``): one JSON object per line ``{"fname", "dialogue",
  "summary", "topic"}``, speakers written ``#Person1#:`` / ``#Person2#:`` (read as user / bot).
  2-4 dialogues are joined into one conversation; gives memo writing *with* summaries, retrieval
  (``topic. summary`` options) and memo-grounded chat (a dialogue's first part as the evidence, the
  next bot line as the target).
* **Alpaca-GPT4** (Flacuna's ``alpaca_gpt4.json``): a JSON list ``{"id", "conversations":
  [{"from": "human", "value"}, {"from": "gpt", "value"}]}``; plain chat in the response prompt's
  layout, and "continue" turns (part of a multi-line answer as the recent dialogue, the rest as target).

Every builder returns records ``{"id", "type", "input", "output"}``; ``type`` is one of
:data:`TASK_TYPES`. :func:`mix` draws the 1k or 10k mixture with the official type proportions.
:func:`encode` tokenizes a record with the paper's loss masking (prompt tokens ignored, the answer
and EOS trained).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memochat.prompts import Prompts, default_prompts
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import atomic_write

TASK_TYPES = ("writing_topiocqa", "retrieval_topiocqa", "writing_dialogsum", "retrieval_dialogsum",
              "chatting_dialogsum", "chatting_alpacagpt4")  # fmt: skip
#: The official 1k mixture's counts per type (a 10 % sample of the 10k mixture, so its proportions).
OFFICIAL_MIX = {"retrieval_dialogsum": 197, "writing_topiocqa": 192, "chatting_alpacagpt4": 183,
                "chatting_dialogsum": 158, "retrieval_topiocqa": 156, "writing_dialogsum": 114}  # fmt: skip
CONTINUE_WORDS = ("continue", "keep going", "please continue", "go on")
IGNORE_INDEX = -100


def _read_json(path: str | Path, what: str, jsonl: bool = False) -> list[Any]:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{what} file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        data = [json.loads(line) for line in text.splitlines() if line.strip()] if jsonl else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{what} file {p} is not valid {'JSONL' if jsonl else 'JSON'} ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise BadInputError(f"{what} file {p} must hold a non-empty list of records")
    return data


def _fields(rec: Any, where: str, **types: type) -> None:
    if not isinstance(rec, dict):
        raise BadInputError(f"{where}: expected a JSON object")
    for key, typ in types.items():
        if not isinstance(rec.get(key), typ):
            raise BadInputError(f"{where}: field {key!r} must be {typ.__name__}")


def _retrieval(prompts: Prompts, query: str, options: list[str], answers: set[str], rng: random.Random, sentinel: str) -> tuple[str, str]:
    """A retrieval example: shuffled options plus the sentinel; answer = the true options' numbers."""
    opts = list(dict.fromkeys(options))
    rng.shuffle(opts)
    opts = [f"{sentinel}. None of the others.", *opts]
    picks = [str(i + 1) for i, o in enumerate(opts) if o in answers]
    return prompts.retrieval(query, opts), "#".join(picks) if picks else "1"


def build_topiocqa(path: str | Path, prompts: Prompts | None = None, seed: int = 0, sentinel: str = "NOTO") -> list[dict[str, str]]:
    prm = prompts or default_prompts()
    rows = _read_json(path, "TopiOCQA")
    rng = random.Random(seed)
    convs: dict[Any, list[dict[str, Any]]] = {}
    for i, r in enumerate(rows):
        _fields(r, f"{path}[{i}]", Context=list, Question=str, Answer=str, Topic=str)
        convs.setdefault(r.get("Conversation_no", i), []).append(r)
    out: list[dict[str, str]] = []
    for no, turns in convs.items():
        last = turns[-1]
        raw = [str(x) for x in last["Context"]] + [last["Question"], last["Answer"]]
        lines = [("user: " if j % 2 == 0 else "bot: ") + t for j, t in enumerate(raw)]
        topics = [t["Topic"] for t in turns][-(len(lines) // 2) :]
        if len(topics) * 2 != len(lines):
            continue  # context and turns disagree: skip the conversation
        items: list[dict[str, Any]] = []
        for t, topic in enumerate(topics):
            if items and items[-1]["topic"] == topic:
                items[-1]["end"] = 2 * t + 2
            else:
                items.append({"topic": topic, "summary": "", "start": 2 * t + 1, "end": 2 * t + 2})
        out.append({"id": f"topiocqa-{no}-w", "type": "writing_topiocqa",
                    "input": prm.writing(lines, "writing_topiocqa"), "output": json.dumps(items)})  # fmt: skip
        k = rng.randint(1, min(3, len(topics)))
        chosen = sorted(rng.sample(range(len(topics)), k))
        query = " ".join(raw[2 * t] for t in chosen)
        answers = {topics[t] for t in chosen}
        options = list(topics)
        if rng.random() < 0.1:  # some queries match no option: the answer is the sentinel
            options = [o for o in options if o not in answers]
            answers = set()
        if options:
            inp, ans = _retrieval(prm, query, options, answers, rng, sentinel)
            out.append({"id": f"topiocqa-{no}-r", "type": "retrieval_topiocqa", "input": inp, "output": ans})
    return out


def _dialog_lines(dialogue: str) -> list[str]:
    out = []
    for line in dialogue.split("\n"):
        line = line.strip()
        if line:
            out.append(line.replace("#Person1#:", "user:").replace("#Person2#:", "bot:").replace("#Person1#", "user").replace("#Person2#", "bot"))
    return out


def build_dialogsum(path: str | Path, prompts: Prompts | None = None, seed: int = 0, sentinel: str = "NOTO") -> list[dict[str, str]]:
    prm = prompts or default_prompts()
    rows = _read_json(path, "DialogSum", jsonl=str(path).endswith(".jsonl"))
    for i, r in enumerate(rows):
        _fields(r, f"{path}[{i}]", dialogue=str, summary=str, topic=str)
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    i = 0
    while i < len(rows):
        group = rows[i : i + rng.randint(2, 4)]
        i += len(group)
        gid = "+".join(str(r.get("fname", n)) for n, r in enumerate(group))
        lines: list[str] = []
        items = []
        options = []
        for r in group:
            dl = _dialog_lines(r["dialogue"])
            summary = r["summary"].replace("#Person1#", "user").replace("#Person2#", "bot")
            items.append({"topic": r["topic"], "summary": summary, "start": len(lines) + 1, "end": len(lines) + len(dl)})
            options.append(f"{r['topic']}. {summary}")
            lines += dl
        out.append({"id": f"dialogsum-{gid}-w", "type": "writing_dialogsum", "input": prm.writing(lines), "output": json.dumps(items)})
        src = rng.randrange(len(group))
        dl = _dialog_lines(group[src]["dialogue"])
        users = [j for j, line in enumerate(dl) if line.startswith("user:")]
        if users:
            j = rng.choice(users)
            query = dl[j][len("user: ") :]
            opts = list(options)
            answers = {options[src]}
            if rng.random() < 0.1:
                opts = [o for k, o in enumerate(opts) if k != src]
                answers = set()
            inp, ans = _retrieval(prm, query, opts, answers, rng, sentinel)
            out.append({"id": f"dialogsum-{gid}-r", "type": "retrieval_dialogsum", "input": inp, "output": ans})
        # memo-grounded chat: the dialogue's first part is the evidence, the next bot line the target
        turns = [j for j in range(2, len(dl) - 1) if dl[j].startswith("user:") and dl[j + 1].startswith("bot:")]
        if turns:
            j = rng.choice(turns)
            r = group[src]
            evidence = {"Related Topics": r["topic"], "Related Summaries": r["summary"].replace("#Person1#", "user").replace("#Person2#", "bot"),
                        "Related Dialogs": " ### ".join(dl[: max(1, j - 2)])}  # fmt: skip
            recent = dl[max(0, j - 2) : j]
            out.append({"id": f"dialogsum-{gid}-c", "type": "chatting_dialogsum",
                        "input": prm.chatting([evidence], recent, dl[j]), "output": dl[j + 1][len("bot: ") :]})  # fmt: skip
    return out


def build_alpaca(path: str | Path, prompts: Prompts | None = None, seed: int = 0, continue_rate: float = 0.35) -> list[dict[str, str]]:
    prm = prompts or default_prompts()
    rows = _read_json(path, "Alpaca-GPT4")
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for i, r in enumerate(rows):
        _fields(r, f"{path}[{i}]", conversations=list)
        conv = r["conversations"]
        if len(conv) < 2 or not all(isinstance(c, dict) and isinstance(c.get("value"), str) for c in conv[:2]):
            raise BadInputError(f"{path}[{i}]: conversations must start with a human and a gpt message")
        question, answer = conv[0]["value"], conv[1]["value"]
        parts = [p for p in answer.split("\n") if p.strip()]
        if rng.random() < continue_rate and len(parts) >= 2 and len(answer.split(" ")) >= 32:
            cut = rng.randrange(1, len(parts))
            recent = ["user: " + question, "bot: " + "\n".join(parts[:cut])]
            inp = prm.chatting([], recent, "user: " + rng.choice(CONTINUE_WORDS))
            out.append({"id": f"alpaca-{r.get('id', i)}-cont", "type": "chatting_alpacagpt4", "input": inp, "output": "\n".join(parts[cut:])})
        else:
            out.append({"id": f"alpaca-{r.get('id', i)}", "type": "chatting_alpacagpt4",
                        "input": prm.chatting([], [], "user: " + question), "output": answer})  # fmt: skip
    return out


def mix(records: Sequence[dict[str, str]], size: int, seed: int = 0) -> list[dict[str, str]]:
    """``size`` records drawn with the official type proportions (types short of their share give
    all they have; the rest is filled from the others), shuffled."""
    rng = random.Random(seed)
    by_type: dict[str, list[dict[str, str]]] = {}
    for r in records:
        by_type.setdefault(r["type"], []).append(r)
    total = sum(OFFICIAL_MIX.values())
    chosen: list[dict[str, str]] = []
    rest: list[dict[str, str]] = []
    for t, pool in by_type.items():
        pool = list(pool)
        rng.shuffle(pool)
        want = round(size * OFFICIAL_MIX.get(t, 0) / total)
        chosen += pool[:want]
        rest += pool[want:]
    rng.shuffle(rest)
    chosen += rest[: max(0, size - len(chosen))]
    rng.shuffle(chosen)
    return chosen[:size]


def counts(records: Sequence[dict[str, str]]) -> dict[str, int]:
    return {t: sum(r["type"] == t for r in records) for t in TASK_TYPES if any(r["type"] == t for r in records)}


def save_records(path: str | Path, records: Sequence[dict[str, str]]) -> None:
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_records(path: str | Path) -> list[dict[str, str]]:
    """Records from a JSONL file written by :func:`save_records` (``memochat build-data``)."""
    rows = _read_json(path, "instruction data", jsonl=True)
    for i, r in enumerate(rows):
        _fields(r, f"{path}:{i + 1}", type=str, input=str, output=str)
        if r["type"] not in TASK_TYPES:
            raise BadInputError(f"{path}:{i + 1}: unknown task type {r['type']!r}")
    return rows


def encode(tokenizer: Any, record: dict[str, str], max_len: int = 2048, template: str = "raw",
           prefix: str = "", suffix: str = "\n") -> dict[str, list[int]]:  # fmt: skip
    """``input_ids`` / ``labels`` with the paper's loss masking: prompt tokens ``-100``, the answer and
    EOS trained; a sequence past ``max_len`` loses tokens from the left (the prompt's start)."""
    if template == "chat":
        src = tokenizer.apply_chat_template([{"role": "user", "content": record["input"]}], add_generation_prompt=True, tokenize=True)
        src = list(src["input_ids"] if hasattr(src, "keys") else src)
    else:
        src = list(tokenizer.encode(prefix + record["input"] + suffix, add_special_tokens=False))
    tgt = [*tokenizer.encode(record["output"], add_special_tokens=False), int(tokenizer.eos_token_id)]
    ids = src + tgt
    labels = [IGNORE_INDEX] * len(src) + tgt
    if len(ids) > max_len:
        ids, labels = ids[-max_len:], labels[-max_len:]
    return {"input_ids": [int(i) for i in ids], "labels": labels}


# --------------------------------------------------------------------------- small offline sources

_PEOPLE = ["Mara", "Jonas", "Ines", "Tariq", "Lena", "Oskar", "Priya", "Felix"]
_THINGS = [("train tickets", "travel"), ("a birthday cake", "party planning"), ("a broken laptop", "repairs"),
           ("a new apartment", "housing"), ("a job offer", "work"), ("a piano lesson", "music"),
           ("a marathon", "sports"), ("a garden", "gardening")]  # fmt: skip


def write_sample_sources(folder: str | Path, n: int = 24, seed: int = 0) -> dict[str, Path]:
    """Small synthetic files in the three source formats (our own text), for tests and CPU demos."""
    rng = random.Random(seed)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    topi: list[dict[str, Any]] = []
    dsum: list[dict[str, Any]] = []
    alp: list[dict[str, Any]] = []
    for i in range(n):
        (a, ta), (b, tb) = rng.sample(_THINGS, 2)
        who = rng.choice(_PEOPLE)
        context: list[str] = []
        turns = [(f"What should I know about {a}?", f"{a.capitalize()} needs some planning ahead.", ta),
                 (f"Who can help with {a}?", f"{who} knows a lot about {ta}.", ta),
                 (f"And what about {b}?", f"For {b}, start early and ask around.", tb)]  # fmt: skip
        for t, (q, ans, topic) in enumerate(turns):
            topi.append({"Conversation_no": i, "Turn_no": t + 1, "Context": list(context), "Question": q, "Answer": ans, "Topic": topic})
            context += [q, ans]
        dsum.append({"fname": f"train_{i}", "topic": ta,
                     "dialogue": f"#Person1#: I need help with {a}.\n#Person2#: Sure, what is the problem?\n"
                                 f"#Person1#: {who} said it costs {10 + i} euros.\n#Person2#: That sounds fair for {a}.\n"
                                 f"#Person1#: Should I pay now?\n#Person2#: Yes, pay {who} today.",
                     "summary": f"#Person1# asks about {a}; #Person2# advises paying {who} {10 + i} euros today."})  # fmt: skip
        steps = [f"First, check the details of {a}.", f"Then, talk to {who}.", f"Finally, write down the cost of {10 + i} euros."]
        alp.append({"id": f"a{i}", "conversations": [{"from": "human", "value": f"How do I handle {a}?"},
                                                     {"from": "gpt", "value": "\n".join(steps) + " That is all you need to do for it, and if anything goes wrong you can always ask again later."}]})  # fmt: skip
    paths = {"topiocqa": root / "topiocqa_train.json", "dialogsum": root / "dialogsum.train.jsonl", "alpaca": root / "alpaca_gpt4.json"}
    paths["topiocqa"].write_text(json.dumps(topi, indent=1), encoding="utf-8")
    paths["dialogsum"].write_text("\n".join(json.dumps(d) for d in dsum) + "\n", encoding="utf-8")
    paths["alpaca"].write_text(json.dumps(alp, indent=1), encoding="utf-8")
    return paths


def build_all(topiocqa: str | Path | None, dialogsum: str | Path | None, alpaca: str | Path | None,
              prompts: Prompts | None = None, seed: int = 0) -> list[dict[str, str]]:  # fmt: skip
    """Every record the given sources yield (at least one source is needed)."""
    if topiocqa is None and dialogsum is None and alpaca is None:
        raise BadInputError("give at least one of --topiocqa, --dialogsum, --alpaca")
    out: list[dict[str, str]] = []
    if topiocqa is not None:
        out += build_topiocqa(topiocqa, prompts, seed)
    if dialogsum is not None:
        out += build_dialogsum(dialogsum, prompts, seed)
    if alpaca is not None:
        out += build_alpaca(alpaca, prompts, seed)
    return out
