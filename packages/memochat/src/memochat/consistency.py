"""A consistency benchmark that needs no judge: planted facts, later probes, exact match.

:func:`make_conversations` writes long multi-session conversations (deterministic per seed): the user
states facts ("my locker code is 4417"), lists ("my packing list is passport, charger, umbrella")
and long filler messages; in later sessions probes ask for them back:

* **retrospection**: one fact (``What is my locker code?`` -> ``4417``);
* **continuation**: the item after a given one in a planted list;
* **conjunction**: two facts in one question (both values must appear).

A probe scores 1 when every expected string occurs in the answer (case-insensitive, whole words).
:func:`run_variant` runs one way of giving the model memory over the conversations:
``full`` (all earlier lines, truncated from the left to the prompt budget), ``none`` (the input
only), ``memochat`` and ``memochat+prefilter``. :class:`OracleGenerator` answers every pipeline task
as well as the prompt it sees allows, which isolates the memory mechanism from model quality.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memochat.backends import Generator
from memochat.config import MemoConfig
from memochat.pipeline import MemoChat
from memochat.prefilter import load_embedder
from memochat.prompts import Prompts, default_prompts
from memochat.store import MemoStore
from slimkit.errors import BadInputError
from slimkit.io import load_json
from slimkit.progress import progress

VARIANTS = ("full", "none", "memochat", "memochat+prefilter")
KINDS = ("retrospection", "continuation", "conjunction")

_ATTRS: list[tuple[str, list[str]]] = [
    ("locker code", ["4417", "9031", "2268", "7754", "5120", "8392"]),
    ("cat's name", ["Biscuit", "Pepper", "Mochi", "Juniper", "Tofu", "Waffle"]),
    ("home town", ["Tromso", "Valparaiso", "Kumasi", "Brno", "Matsue", "Arequipa"]),
    ("favourite dish", ["ratatouille", "bibimbap", "feijoada", "shakshuka", "pierogi", "laksa"]),
    ("sister's job", ["glassblower", "cartographer", "beekeeper", "luthier", "stonemason", "archivist"]),
    ("bike colour", ["teal", "maroon", "ochre", "lilac", "crimson", "olive"]),
    ("dentist's name", ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Castillo", "Novak"]),
    ("wifi password", ["kestrel88", "harbor42", "quartz19", "lantern07", "meadow65", "falcon23"]),
]
_LISTS: list[tuple[str, list[str]]] = [
    ("packing list", ["passport", "charger", "umbrella", "sunscreen", "headphones", "notebook"]),
    ("reading list", ["Dune", "Beloved", "Solaris", "Middlemarch", "Ulysses", "Kindred"]),
    ("errand list", ["bakery", "pharmacy", "post office", "hardware store", "library", "laundromat"]),
]
_FILLER = [
    "I have been thinking about how to plan my week better, because work keeps piling up and I never seem to find "
    "time for exercise or cooking; do you have a simple routine that busy people actually manage to keep?",
    "Can you explain in a few sentences why the sky looks blue during the day but red and orange at sunset? I "
    "remember something about scattering from school but never understood the details properly.",
    "What are some good questions to ask at the end of a job interview, the kind that show real interest in the "
    "team without sounding rehearsed? I have one next Thursday and want to be ready.",
    "I want to start growing herbs on my windowsill. Which ones are easiest for a beginner who forgets to water "
    "them sometimes, and how much light do they really need in winter?",
    "Give me a short summary of how compound interest works, with a small numeric example, because my friend "
    "keeps talking about it and I nod along without really following.",
    "What is a good way to practise a new language for twenty minutes a day without getting bored? I tried apps "
    "before but lost interest after about two weeks every single time.",
    "Could you suggest a relaxing evening routine that helps with falling asleep earlier? Lately I scroll on my "
    "phone until midnight and then feel tired for the whole next morning.",
    "How do I politely decline an invitation from a colleague without hurting their feelings? It happens often "
    "and I never know what to say, so I usually just accept and regret it.",
    "Tell me a few tips for taking better photos with a phone camera, especially indoors in the evening when the "
    "light is warm and everything ends up looking a bit blurry and orange.",
    "What should I keep in mind when buying a second-hand bicycle from someone online? I do not know much about "
    "bikes and I am worried about paying too much for something broken.",
]
_FACT = re.compile(r"\bmy ([a-z' ]+?) is ([A-Za-z0-9][\w-]*)")
_LIST = re.compile(r"\bmy ([a-z' ]+? list) is ([^.]+)\.")


@dataclass
class Probe:
    kind: str
    expect: list[str]


@dataclass
class Turn:
    user: str
    probe: Probe | None = None


@dataclass
class Conversation:
    id: str
    sessions: list[list[Turn]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sessions": [[{"user": t.user, "probe": None if t.probe is None else
                                              {"kind": t.probe.kind, "expect": t.probe.expect}} for t in s]
                                            for s in self.sessions]}  # fmt: skip

    @staticmethod
    def from_dict(d: Any, where: str = "conversation") -> Conversation:
        try:
            sessions = [[Turn(str(t["user"]), None if t.get("probe") is None else
                              Probe(str(t["probe"]["kind"]), [str(e) for e in t["probe"]["expect"]])) for t in s]
                        for s in d["sessions"]]  # fmt: skip
            conv = Conversation(str(d["id"]), sessions)
        except (KeyError, TypeError, AttributeError) as exc:
            raise BadInputError(f"{where}: expected {{id, sessions: [[{{user, probe}}]]}} ({exc})") from exc
        for s in conv.sessions:
            for t in s:
                if t.probe is not None and (t.probe.kind not in KINDS or not t.probe.expect):
                    raise BadInputError(f"{where}: probe kind must be one of {', '.join(KINDS)} with a non-empty expect")
        return conv


def make_conversations(n: int = 4, sessions: int = 3, turns: int = 20, seed: int = 0) -> list[Conversation]:
    """``n`` conversations of ``sessions`` x ``turns`` user turns: six facts and one list planted at
    the start of the first session, then exactly one probe of each kind at the end of every later
    session, filler everywhere else."""
    if n < 1 or sessions < 2 or turns < 8:
        raise BadInputError("need n >= 1, sessions >= 2 and turns >= 8 (the first session plants 7 facts)")
    out = []
    for ci in range(n):
        rng = random.Random(seed * 7919 + ci)
        attrs = rng.sample(_ATTRS, 6)
        facts = {a: rng.choice(vals) for a, vals in attrs}
        lname, items = rng.choice(_LISTS)
        items = rng.sample(items, 4)
        plants = [Turn(f"By the way, my {a} is {v}. Please keep that in mind.") for a, v in facts.items()]
        plants.append(Turn(f"Note this down: my {lname} is {', '.join(items)}."))
        rng.shuffle(plants)
        names = list(facts)
        probes: list[Turn] = []
        for k in range(sessions - 1):
            a = names[k % len(names)]
            probes.append(Turn(f"Quick check: what is my {a}?", Probe("retrospection", [facts[a]])))
            j = rng.randrange(len(items) - 1)
            probes.append(Turn(f"In my {lname}, which item came right after {items[j]}?", Probe("continuation", [items[j + 1]])))
            a1, a2 = names[(k + 2) % len(names)], names[(k + 4) % len(names)]
            probes.append(Turn(f"Remind me: what is my {a1}, and what is my {a2}?", Probe("conjunction", [facts[a1], facts[a2]])))
        conv = Conversation(f"conv-{seed}-{ci}")
        filler = list(_FILLER)
        rng.shuffle(filler)
        fi = 0
        for s in range(sessions):
            session: list[Turn] = []
            wanted = plants if s == 0 else probes[(s - 1) * 3 : s * 3]
            n = min(len(wanted), turns)
            # plants open the first session; probes close their session, after filler has pushed the plants back
            slots = list(range(n)) if s == 0 else list(range(turns - n, turns))
            for t in range(turns):
                if t in slots:
                    session.append(wanted[slots.index(t)])
                else:
                    session.append(Turn(filler[fi % len(filler)]))
                    fi += 1
            conv.sessions.append(session)
        out.append(conv)
    return out


def save_conversations(path: str | Path, convs: Sequence[Conversation]) -> None:
    Path(path).write_text(json.dumps([c.to_dict() for c in convs], indent=1), encoding="utf-8")


def load_conversations(path: str | Path) -> list[Conversation]:
    p = Path(path)
    data = load_json(p, "conversations file")
    if not isinstance(data, list) or not data:
        raise BadInputError(f"conversations file {p} must hold a non-empty JSON list")
    return [Conversation.from_dict(d, f"{p}[{i}]") for i, d in enumerate(data)]


def exact_match(answer: str, expect: Sequence[str]) -> bool:
    """Every expected string occurs in ``answer`` as whole words, ignoring case."""
    low = answer.lower()
    return all(re.search(r"(?<![\w])" + re.escape(e.lower()) + r"(?![\w])", low) for e in expect)


# --------------------------------------------------------------------------- the oracle


def _section(prompt: str, head: str, stop: str) -> str:
    i = prompt.find(head)
    if i == -1:
        return ""
    j = prompt.find(stop, i + len(head))
    return prompt[i + len(head) : j if j != -1 else len(prompt)]


class OracleGenerator(Generator):
    """A rule-based model that does each MemoChat task perfectly *from the prompt it is given*.

    Memo writing: one memo per stated fact or list (topic = the attribute), filler grouped as chit-chat.
    Retrieval: the options whose topic the query names. Chat: the value stated for each attribute the
    question asks about, found anywhere in the prompt (latest statement wins), else "I do not know".
    It never sees the benchmark's answers, only what a real model would see.
    """

    name = "oracle"

    def generate(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> str:
        if task == "writing":
            return self._write(prompt)
        if task == "retrieval":
            return self._retrieve(prompt)
        return self._answer(prompt)

    def _write(self, prompt: str) -> str:
        lines = re.findall(r"^\(line (\d+)\) (.*)$", _section(prompt, "Task Conversation:\n", "\n```"), re.M)
        items: list[dict[str, Any]] = []
        filler_start: int | None = None
        for num, text in lines:
            i = int(num)
            found = _LIST.search(text) or _FACT.search(text)
            if found and text.startswith("user:"):
                if filler_start is not None and filler_start < i:
                    items.append({"topic": "chit-chat", "summary": "general advice questions", "start": filler_start, "end": i - 1})
                filler_start = None
                items.append({"topic": found.group(1), "summary": f"the user's {found.group(1)} is {found.group(2)}", "start": i, "end": min(i + 1, len(lines))})
            elif filler_start is None and not any(it["end"] >= i for it in items):
                filler_start = i
        if filler_start is not None:
            items.append({"topic": "chit-chat", "summary": "general advice questions", "start": filler_start, "end": len(lines)})
        return json.dumps(items)

    def _retrieve(self, prompt: str) -> str:
        query = _section(prompt, "Query Sentence:\n", "\nTopic Options:").lower().replace("'", "")
        options = re.findall(r"^\((\d+)\) (.*?)\. ", _section(prompt, "Topic Options:\n", "\n```") + "\n", re.M)
        picks = [n for n, topic in options if topic.lower() != "chit-chat" and topic.lower().replace("'", "") in query and topic != "NOTO"]
        return "#".join(picks) if picks else "1"

    def _answer(self, prompt: str) -> str:
        question = prompt.rsplit("User Input:\n", 1)[-1]
        context = prompt[: len(prompt) - len(question)]
        asked = re.findall(r"\bmy ([a-z' ]+?)(?:,|\?| and\b)", question)
        if not asked:
            return "Thanks, noted. Here is my advice: take it one small step at a time."
        answers = []
        for attr in asked:
            if attr.endswith(" list"):
                found = re.findall(r"\bmy " + re.escape(attr) + r" is ([^.'\"]+)\.", context)
                after = re.search(r"after ([\w' -]+?)\?", question)
                if found and after:
                    items = [x.strip() for x in found[-1].split(",")]
                    if after.group(1) in items and items.index(after.group(1)) + 1 < len(items):
                        answers.append(items[items.index(after.group(1)) + 1])
                        continue
            else:
                found = re.findall(r"\bmy " + re.escape(attr) + r" is ([A-Za-z0-9][\w-]*)", context)
                if found:
                    answers.append(found[-1])
                    continue
            answers.append("I do not know")
        return "; ".join(answers)


# --------------------------------------------------------------------------- running variants


def _fit_history(gen: Generator, prompts: Prompts, lines: list[str], user_line: str, budget: int) -> str:
    return gen.truncate_left(prompts.chatting([], lines, user_line), budget)


def run_variant(variant: str, generator: Generator, convs: Sequence[Conversation], config: MemoConfig | None = None,
                prompts: Prompts | None = None, prefilter_k: int = 4, db_dir: str | Path | None = None,
                show_progress: bool = False, on_turn: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Exact-match scores of one variant: ``{"variant", "by_kind": {kind: [hits, total]}, "em", ...}``."""
    if variant not in VARIANTS:
        raise BadInputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    cfg = config or MemoConfig(prefilter="none")
    prm = prompts or default_prompts()
    if variant == "memochat":
        cfg = replace(cfg, prefilter="none")
    elif variant == "memochat+prefilter":
        cfg = replace(cfg, prefilter=cfg.prefilter if cfg.prefilter != "none" else "auto", prefilter_k=prefilter_k)
    by_kind = {k: [0, 0] for k in KINDS}
    total_turns = sum(len(s) for c in convs for s in c.sessions)
    bar = progress(total=total_turns, desc=variant, disable=None if show_progress else True)
    embedder = load_embedder(cfg.prefilter) if variant == "memochat+prefilter" else None  # one for every conversation
    tmp = tempfile.TemporaryDirectory(dir=db_dir)
    model_s = overhead_s = 0.0
    try:
        for ci, conv in enumerate(convs):
            history: list[str] = []
            bot = None
            if variant.startswith("memochat"):
                bot = MemoChat(generator, MemoStore(Path(tmp.name) / f"{ci}.db"), cfg, prm, embedder=embedder)
            try:
                for si, session in enumerate(conv.sessions):
                    for turn in session:
                        if bot is not None:
                            res = bot.chat(turn.user, user=conv.id, session=f"s{si}")
                            answer = res.response
                            model_s += res.model_s
                            overhead_s += res.overhead_s
                        else:
                            user_line = "user: " + turn.user
                            lines = history if variant == "full" else []
                            prompt = _fit_history(generator, prm, lines, user_line, cfg.prompt_tokens)
                            answer = " ".join(generator.generate(prompt, max_new_tokens=cfg.answer_tokens, task="chatting").split())
                            history += [user_line, "bot: " + answer]
                        if turn.probe is not None:
                            hit = exact_match(answer, turn.probe.expect)
                            by_kind[turn.probe.kind][0] += int(hit)
                            by_kind[turn.probe.kind][1] += 1
                            if on_turn is not None:
                                on_turn({"variant": variant, "conversation": conv.id, "kind": turn.probe.kind,
                                         "question": turn.user, "expect": turn.probe.expect, "answer": answer, "hit": hit})  # fmt: skip
                        bar.update(1)
            finally:  # closed before the temporary folder goes, a failed turn's included
                if bot is not None:
                    bot.store.close()
    finally:
        bar.close()
        tmp.cleanup()
    hits = sum(v[0] for v in by_kind.values())
    total = sum(v[1] for v in by_kind.values())
    return {"variant": variant, "by_kind": by_kind, "em": hits / total if total else 0.0, "probes": total,
            "model_s": model_s, "overhead_s": overhead_s}  # fmt: skip


def table(results: list[dict[str, Any]], backend: str) -> str:
    """A markdown table of exact-match scores per variant and probe kind."""
    rows = [f"| backend | variant | {' | '.join(KINDS)} | all |", "|---|---|" + "---:|" * (len(KINDS) + 1)]
    for r in results:
        cells = [f"{r['by_kind'][k][0]}/{r['by_kind'][k][1]}" for k in KINDS]
        rows.append(f"| {backend} | {r['variant']} | {' | '.join(cells)} | {100 * r['em']:.1f}% |")
    return "\n".join(rows)
