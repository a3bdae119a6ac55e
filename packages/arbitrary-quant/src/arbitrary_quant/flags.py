"""Table settings dataclasses as CLI flags: one ``--flag`` per field (lists comma-separated), both ways.

Why: ``dfsq-table`` and ``bivit-table`` take every field of their settings dataclass as a flag and
record the command that reproduces a table; adding the flags, parsing them and printing them from
the same field list keeps the three in step.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from slimkit.errors import BadInputError

__all__ = ["add_settings_flags", "settings_flags", "settings_from_args"]


def settings_flags(settings: Any) -> str:
    """``--field value`` for every field that is set (``None`` left out), lists comma-joined."""
    parts = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        parts.append(f"--{f.name.replace('_', '-')} {text}")
    return " ".join(parts)


def add_settings_flags(p: argparse.ArgumentParser, defaults: Any) -> None:
    """One ``--flag`` per field of a table's settings dataclass (lists comma-separated), defaults from ``defaults``."""
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else value
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=text,
                       help=f"default: {text if text is not None else 'none'}")  # fmt: skip


def settings_from_args(cls: Any, args: argparse.Namespace) -> Any:
    """The settings dataclass from its flags: each value parsed like its default's type (a bad one is one line)."""
    defaults = cls()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw, default = getattr(args, f.name), getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        try:
            if raw is None or raw == default:
                values[f.name] = default
            elif isinstance(default, tuple):
                kind = type(default[0]) if default else str
                values[f.name] = tuple(kind(v.strip()) for v in str(raw).split(",") if v.strip())
            elif default is None:
                values[f.name] = int(raw)
            else:
                values[f.name] = type(default)(raw)
        except ValueError:
            raise BadInputError(f"{flag}: cannot read {raw!r}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise BadInputError(str(exc)) from None
