"""The five prompt templates and how each task's prompt is assembled from them.

The structure is the official one (each template is a ``system`` text and an ``instruction`` text
around a fenced block of task material; placeholders are bare words replaced by plain string
substitution); the wording is ours. A prompts file in the official ``prompts.json`` format (a JSON
object with ``chatting``, ``writing_topiocqa``, ``writing_dialogsum``, ``retrieval`` and ``judge``,
each ``{"system": ..., "instruction": ...}``) loads as is, for weights tuned on that file.

Placeholders: ``LINE`` (number of dialogue lines) in both writing templates, ``OPTION`` (number of
topic options) in ``retrieval``, ``RCH_0`` / ``UQ_1`` / ``BR_2`` (the referenced conversation, the
probe question, the answer to judge) in ``judge``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError
from slimkit.io import load_json

TASKS = ("chatting", "writing_topiocqa", "writing_dialogsum", "retrieval", "judge")
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "chatting": (),
    "writing_topiocqa": ("LINE",),
    "writing_dialogsum": ("LINE",),
    "retrieval": ("OPTION",),
    "judge": ("RCH_0", "UQ_1", "BR_2"),
}

_DEFAULT: dict[str, dict[str, str]] = {
    "chatting": {
        "system": (
            "You are a helpful assistant in a long conversation with a user. Below are related evidences "
            "(memos you wrote about earlier parts of the conversation: a topic, a summary and the original "
            "lines) and the most recent dialogue lines. Use them when they matter, never contradict what "
            "you said before, and answer the user input.\n\n"
        ),
        "instruction": "",
    },
    "writing_topiocqa": {
        "system": (
            "Below is a conversation of LINE lines between a user and a bot. Read it and follow the task "
            "description after it."
        ),
        "instruction": (
            "\n\nTask description: split the LINE lines into consecutive topics. For every topic give a "
            "short topic name and the numbers of its first and last line. Answer with a JSON list only, "
            "like [{\"topic\": \"name\", \"summary\": \"\", \"start\": 1, \"end\": 2}]; together the items "
            "must cover line 1 to line LINE."
        ),
    },
    "writing_dialogsum": {
        "system": (
            "Below is a conversation of LINE lines between a user and a bot. Read it and follow the task "
            "description after it."
        ),
        "instruction": (
            "\n\nTask description: split the LINE lines into consecutive topics. For every topic give a "
            "short topic name, a one-sentence summary of what was said about it, and the numbers of its "
            "first and last line. Answer with a JSON list only, like [{\"topic\": \"name\", \"summary\": "
            "\"what was said\", \"start\": 1, \"end\": 4}]; together the items must cover line 1 to line LINE."
        ),
    },
    "retrieval": {
        "system": (
            "Below are a query sentence and OPTION topic options. Read them and follow the task description "
            "after them."
        ),
        "instruction": (
            "\n\nTask description: pick every one of the OPTION options that the query sentence is about. "
            "Answer only with the option numbers joined by #, for example 2#3. When none of them fits, "
            "answer with the number of the NOTO option."
        ),
    },
    "judge": {
        "system": (
            "You are an impartial judge of a chatbot's memory. First you see the earlier part of a "
            "conversation that a final question refers to, then the final question and the chatbot's "
            "answer.\n\nEarlier conversation:\nRCH_0\n\nFinal question:\nUQ_1\n\nAnswer:\nBR_2\n\n"
            "Rate from 1 to 100 how well the answer agrees with what the chatbot itself said earlier on "
            "the referenced topics (consistency, not style). Explain briefly, then give the rating "
            "strictly as [[rating]], for example [[72]]."
        ),
        "instruction": "",
    },
}


@dataclass(frozen=True)
class Prompts:
    """The templates of one prompts file (or the built-in ones), checked for their placeholders."""

    templates: dict[str, dict[str, str]]
    source: str = "built-in"

    def __post_init__(self) -> None:
        check_templates(self.templates, self.source)

    def system(self, task: str) -> str:
        return self.templates[task]["system"]

    def instruction(self, task: str) -> str:
        return self.templates[task]["instruction"]

    # ----------------------------------------------------------------- the three pipeline tasks

    def writing(self, lines: list[str], task: str = "writing_dialogsum") -> str:
        """Memo writing over ``lines`` (numbered ``(line i)``, newlines inside a line flattened)."""
        n = str(len(lines))
        body = "\n".join(f"(line {i + 1}) {line.replace(chr(10), ' ')}" for i, line in enumerate(lines))
        block = "\n\n```\nTask Conversation:\n" + body + "\n```"
        return self.system(task).replace("LINE", n) + block + self.instruction(task).replace("LINE", n)

    def retrieval(self, query: str, options: list[str]) -> str:
        """Retrieval of ``options`` (``topic. summary`` strings, numbered from 1) for ``query``."""
        n = str(len(options))
        listed = "\n".join(f"({i + 1}) {opt}" for i, opt in enumerate(options))
        block = "\n\n```\nQuery Sentence:\n" + query + "\nTopic Options:\n" + listed + "\n```"
        return self.system("retrieval").replace("OPTION", n) + block + self.instruction("retrieval").replace("OPTION", n)

    def chatting(self, evidences: list[dict[str, str]], recent: list[str], user_line: str) -> str:
        """The response prompt: retrieved memos, the recent lines joined by `` ### ``, the input."""
        listed = "\n".join(f"({i + 1}) {ev!r}" for i, ev in enumerate(evidences))
        block = (
            "```\nRelated Evidences:\n" + listed + "\n\nRecent Dialogs:\n"
            + " ### ".join(line.replace("\n", " ") for line in recent)
            + "\n```\n\nUser Input:\n" + user_line + " ### bot: "
        )  # fmt: skip
        return self.system("chatting") + block + self.instruction("chatting")

    def judge(self, history: list[str], question: str, answer: str) -> str:
        text = self.system("judge") + self.instruction("judge")
        return text.replace("RCH_0", "\n".join(history)).replace("UQ_1", "user: " + question).replace("BR_2", "bot: " + answer)

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in self.templates.items()}


def check_templates(templates: Any, source: str) -> None:
    """Every task present with string ``system`` / ``instruction`` holding the task's placeholders."""
    if not isinstance(templates, dict):
        raise BadInputError(f"{source}: a prompts file must hold a JSON object with the keys {', '.join(TASKS)}")
    missing = [t for t in TASKS if t not in templates]
    if missing:
        raise BadInputError(f"{source}: prompts file lacks the task(s) {', '.join(missing)}")
    for task in TASKS:
        entry = templates[task]
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("system", "instruction")):
            raise BadInputError(f"{source}: prompts[{task!r}] must be {{\"system\": str, \"instruction\": str}}")
        text = entry["system"] + entry["instruction"]
        for ph in PLACEHOLDERS[task]:
            if ph not in text:
                raise BadInputError(f"{source}: prompts[{task!r}] is missing the placeholder {ph}")


def default_prompts() -> Prompts:
    """The built-in templates (our wording, the official structure and placeholders)."""
    return Prompts({k: dict(v) for k, v in _DEFAULT.items()})


def load_prompts(path: str | Path | None) -> Prompts:
    """A prompts file (official ``prompts.json`` format) or, for ``None``, the built-in templates."""
    if path is None:
        return default_prompts()
    p = Path(path)
    data = load_json(p, "prompts file")
    return Prompts({k: dict(v) if isinstance(v, dict) else v for k, v in data.items()} if isinstance(data, dict) else data, str(p))
