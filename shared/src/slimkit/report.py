"""``to_dict()``/``to_json()`` for report dataclasses, made JSON-ready in one place.

Why: every package returns dataclass reports (what was sparsified, timings, checks) that CLIs
print with ``--json``. ``dataclasses.asdict`` leaves tensors, paths and tuples that ``json``
cannot write; this mixin converts them the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import torch

__all__ = ["ReportMixin", "finite_json", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses -> dicts, tensors/arrays -> lists (0-d -> numbers), paths -> str, tuples -> lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    return value


class ReportMixin:
    """Mixin for dataclasses: ``to_dict()`` (JSON-ready) and ``to_json(indent=2)``."""

    def to_dict(self) -> dict[str, Any]:
        """The dataclass's fields as a plain, JSON-ready dict (nested dataclasses included)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} uses ReportMixin but is not a dataclass")
        out = jsonable(self)
        assert isinstance(out, dict)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """``to_dict()`` as JSON text; non-finite floats are written as ``null``."""
        return json.dumps(finite_json(self.to_dict()), indent=indent)


def finite_json(value: Any) -> Any:
    """``value`` (JSON-shaped: dicts, lists, scalars) with NaN and infinities as ``None``: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value
