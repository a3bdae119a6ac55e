"""Prompt templates: placeholders, the official file format, and each task's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memochat.prompts import PLACEHOLDERS, TASKS, default_prompts, load_prompts
from slimkit.errors import BadInputError


def _official_like(tmp_path: Path, drop: tuple[str, str] | None = None) -> Path:
    """A prompts file in the official format (our own filler text)."""
    data = {t: {"system": f"S {' '.join(PLACEHOLDERS[t])} ", "instruction": f" I {' '.join(PLACEHOLDERS[t])}"} for t in TASKS}
    if drop is not None:
        task, ph = drop
        data[task] = {k: v.replace(ph, "") for k, v in data[task].items()}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(data))
    return path


def test_builtin_prompts_hold_every_placeholder() -> None:
    p = default_prompts()
    for task, phs in PLACEHOLDERS.items():
        for ph in phs:
            assert ph in p.system(task) + p.instruction(task)


def test_official_format_loads_as_is(tmp_path: Path) -> None:
    p = load_prompts(_official_like(tmp_path))
    assert p.writing(["user: a", "bot: b"]) == "S 2 \n\n```\nTask Conversation:\n(line 1) user: a\n(line 2) bot: b\n``` I 2"
    assert p.retrieval("q", ["NOTO. None", "t. s"]) == "S 2 \n\n```\nQuery Sentence:\nq\nTopic Options:\n(1) NOTO. None\n(2) t. s\n``` I 2"


@pytest.mark.parametrize(("task", "ph"), [("retrieval", "OPTION"), ("writing_dialogsum", "LINE"), ("judge", "BR_2")])
def test_missing_placeholder_is_refused(tmp_path: Path, task: str, ph: str) -> None:
    with pytest.raises(BadInputError, match=f"{task}.*missing the placeholder {ph}"):
        load_prompts(_official_like(tmp_path, (task, ph)))


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        load_prompts(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"chatting": {"system": "", "instruction": ""}}))
    with pytest.raises(BadInputError, match="lacks the task"):
        load_prompts(tmp_path / "b.json")
    with pytest.raises(BadInputError, match="not found"):
        load_prompts(tmp_path / "missing.json")


def test_task_layouts() -> None:
    p = default_prompts()
    w = p.writing(["user: one\ntwo", "bot: three"])
    assert "(line 1) user: one two\n(line 2) bot: three\n```" in w and "LINE" not in w and "2 lines" in w
    c = p.chatting([{"Related Topics": "t", "Related Summaries": "s", "Related Dialogs": "user: x ### bot: y"}],
                   ["user: a\nb", "bot: c"], "user: now?")  # fmt: skip
    assert "Related Evidences:\n(1) {'Related Topics': 't', 'Related Summaries': 's', 'Related Dialogs': 'user: x ### bot: y'}" in c
    assert c.endswith("Recent Dialogs:\nuser: a b ### bot: c\n```\n\nUser Input:\nuser: now? ### bot: ")
    j = p.judge(["user: q1", "bot: a1"], "probe?", "final")
    assert "user: q1\nbot: a1" in j and "user: probe?" in j and "bot: final" in j and "[[rating]]" in j
