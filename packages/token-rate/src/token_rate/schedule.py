"""Per-block kept-token schedules: the artefact a DiffRate search produces and inference applies.

A :class:`Schedule` holds, for every transformer block, two integers counted *with* the prefix
tokens (class token, registers): how many tokens survive pruning (``prune``) and how many survive
merging (``merge``). This is the layout of the official ``compression_rate.json``.

Raw published lists are not always monotone (some ViT-H/L entries go up again, and a few merge
counts exceed the prune count of the same block). The official code caps every block at
``min(current, prune, merge)``, so such lists are harmless; :meth:`Schedule.effective` applies the
same running minimum and :meth:`Schedule.canonical` rewrites a schedule into the equivalent
monotone form. ``validate(strict=True)`` insists on the canonical form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, config_to_dict, load_json, save_json

__all__ = ["Schedule", "list_schedules", "load_schedule", "published_dims"]



@dataclass
class Schedule:
    """Kept-token counts per block (prefix tokens included), as DiffRate learns them.

    Args:
        prune: tokens kept after pruning in each block.
        merge: tokens kept after merging in each block.
        num_tokens: tokens entering block 0 (e.g. 197 for a 224px /16 ViT with a class token);
            ``None`` means "take it from the model at patch time".
        num_prefix_tokens: leading tokens that are never pruned or merged away (CLS, registers).
        name: optional label (published schedules use ``"<family>@<target GMACs>"``).
        target_gmacs: the GMACs target the schedule was searched for, if known.
    """

    prune: list[int]
    merge: list[int]
    num_tokens: int | None = None
    num_prefix_tokens: int = 1
    name: str | None = None
    target_gmacs: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prune = _as_int_list(self.prune, "prune")
        self.merge = _as_int_list(self.merge, "merge")
        self.validate()

    # -- views -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.prune)

    def effective(self, num_tokens: int | None = None) -> list[int]:
        """Tokens leaving each block: the running ``min(current, prune, merge)`` of the official code."""
        current = num_tokens if num_tokens is not None else self.num_tokens
        if current is None:
            current = max(self.prune[0], self.merge[0])
        out = []
        for p, m in zip(self.prune, self.merge):
            current = min(current, p, m)
            out.append(current)
        return out

    def canonical(self, num_tokens: int | None = None) -> Schedule:
        """The equivalent schedule whose lists are monotone and satisfy ``merge <= prune``."""
        current = num_tokens if num_tokens is not None else self.num_tokens
        if current is None:
            current = max(self.prune[0], self.merge[0])
        prune, merge = [], []
        for p, m in zip(self.prune, self.merge):
            p = min(p, current)
            m = min(m, p)
            prune.append(p)
            merge.append(m)
            current = m
        return Schedule(prune, merge, num_tokens=num_tokens or self.num_tokens,
                        num_prefix_tokens=self.num_prefix_tokens, name=self.name,
                        target_gmacs=self.target_gmacs, meta=dict(self.meta))

    def is_canonical(self) -> bool:
        return self.canonical().prune == self.prune and self.canonical().merge == self.merge

    # -- checks ------------------------------------------------------------------------------
    def validate(self, *, num_tokens: int | None = None, depth: int | None = None,
                 num_prefix_tokens: int | None = None, strict: bool = False) -> None:
        """Raise :class:`BadInputError` if the schedule cannot be applied.

        Always checked: equal list lengths, at least one block, every count at least
        ``1 + num_prefix_tokens`` (one patch token must survive, and merging needs a non-prefix
        destination), no count above ``num_tokens`` when that is known, and ``depth`` when given.
        With ``strict=True`` the lists must also be non-increasing with ``merge <= prune``
        (the published raw lists are not; use :meth:`canonical`).
        """
        where = f"schedule {self.name!r}" if self.name else "schedule"
        if not self.prune:
            raise BadInputError(f"{where}: needs at least one block")
        if len(self.prune) != len(self.merge):
            raise BadInputError(
                f"{where}: prune has {len(self.prune)} entries but merge has {len(self.merge)}")
        if depth is not None and depth != self.depth:
            raise BadInputError(f"{where}: has {self.depth} blocks but the model has {depth}")
        prefix = self.num_prefix_tokens if num_prefix_tokens is None else num_prefix_tokens
        if prefix < 0:
            raise BadInputError(f"{where}: num_prefix_tokens must be >= 0, got {prefix}")
        low = prefix + 1
        n = num_tokens if num_tokens is not None else self.num_tokens
        if n is not None and n < low:
            raise BadInputError(f"{where}: num_tokens={n} leaves no patch token after {prefix} prefix tokens")
        for kind, values in (("prune", self.prune), ("merge", self.merge)):
            for i, v in enumerate(values):
                if v < low:
                    raise BadInputError(
                        f"{where}: {kind}[{i}]={v} is below the minimum {low} "
                        f"({prefix} prefix token(s) + 1 patch token)")
                if n is not None and v > n:
                    raise BadInputError(f"{where}: {kind}[{i}]={v} exceeds the {n} input tokens")
        if strict:
            for i in range(self.depth):
                if self.merge[i] > self.prune[i]:
                    raise BadInputError(
                        f"{where}: merge[{i}]={self.merge[i]} > prune[{i}]={self.prune[i]} "
                        "(use Schedule.canonical())")
                if i and self.prune[i] > self.merge[i - 1]:
                    raise BadInputError(
                        f"{where}: prune[{i}]={self.prune[i]} grows past the {self.merge[i - 1]} tokens "
                        f"left by block {i - 1} (use Schedule.canonical())")

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def full(cls, depth: int, num_tokens: int, num_prefix_tokens: int = 1) -> Schedule:
        """A schedule that keeps every token (patched model == unpatched model)."""
        return cls([num_tokens] * depth, [num_tokens] * depth, num_tokens=num_tokens,
                   num_prefix_tokens=num_prefix_tokens, name="full")

    @classmethod
    def from_effective(cls, counts: Sequence[int], num_tokens: int | None = None,
                       num_prefix_tokens: int = 1, name: str | None = None) -> Schedule:
        """Merge-only schedule reaching the given per-block effective counts."""
        counts = _as_int_list(counts, "counts")
        return cls(list(counts), list(counts), num_tokens=num_tokens,
                   num_prefix_tokens=num_prefix_tokens, name=name)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Tagged plain dict (:func:`slimkit.io.config_to_dict`)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        """Read :meth:`to_dict` output, or an official-style ``{"prune_kept_num", "merge_kept_num"}`` entry."""
        if not isinstance(d, dict):
            raise BadInputError(f"schedule must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        d.pop("_version", None)
        kind = d.pop("_type", "Schedule")
        if kind != "Schedule":
            raise BadInputError(f"expected a Schedule, got _type={kind!r}")
        if "prune_kept_num" in d or "merge_kept_num" in d:  # official compression_rate.json entry
            d["prune"] = _parse_official_list(d.pop("prune_kept_num", None))
            d["merge"] = _parse_official_list(d.pop("merge_kept_num", None))
            if d["prune"] is None and d["merge"] is None:
                raise BadInputError("official schedule entry needs a 'prune_kept_num' or 'merge_kept_num' list")
            if d["prune"] is None:  # merge-only entry
                d["prune"] = list(d["merge"])
            if d["merge"] is None:  # prune-only entry: merging keeps everything pruning left
                d["merge"] = list(d["prune"])
        known = {"prune", "merge", "num_tokens", "num_prefix_tokens", "name", "target_gmacs", "meta"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInputError(f"unknown schedule field(s): {', '.join(unknown)}")
        if "prune" not in d or "merge" not in d:
            raise BadInputError("schedule needs both 'prune' and 'merge' lists")
        # slimkit.io names unknown fields and fields of the wrong JSON type in one line.
        return config_from_dict(cls, d)

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically (slimkit.io)."""
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a schedule JSON; a problem with its content names the file."""
        data = load_json(path)
        try:
            return cls.from_dict(data)
        except BadInputError as exc:
            raise BadInputError(f"{path}: {exc}") from None


def _as_int_list(values: Any, what: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise BadInputError(f"{what} must be a list of integers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                try:  # tensors / numpy integers
                    iv = int(v)
                except (TypeError, ValueError):
                    raise BadInputError(f"{what} must hold integers, got {v!r}") from None
                if iv != v:
                    raise BadInputError(f"{what} must hold integers, got {v!r}")
                v = iv
        out.append(int(v))
    return out


def _parse_official_list(value: Any) -> list[int] | None:
    if value is None or value == "None":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadInputError(f"cannot parse kept-token list {value!r}: {e}") from None
    return _as_int_list(value, "kept-token list")


# -- published schedules ---------------------------------------------------------------------

def _families() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    root = resources.files("token_rate").joinpath("data", "schedules")
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            out[data["family"]] = data
    return out


_CACHE: dict[str, dict[str, Any]] = {}


def _published() -> dict[str, dict[str, Any]]:
    if not _CACHE:
        _CACHE.update(_families())
    return _CACHE


def list_schedules() -> list[str]:
    """Names of the DiffRate schedules shipped with the package, e.g. ``"deit_small@2.9"``."""
    names = []
    for fam, data in _published().items():
        for target in data["schedules"]:
            names.append(f"{fam}@{target}")
    return names


def published_dims(name: str) -> dict[str, Any]:
    """Model dimensions (depth, width, tokens, patch size, ...) a published schedule was searched on."""
    fam = name.split("@", 1)[0]
    data = _published().get(fam)
    if data is None:
        raise BadInputError(f"unknown schedule family {fam!r}; known: {', '.join(_published())}")
    return dict(data["dims"], global_pool=data["global_pool"], model=data["model"])


def load_schedule(name_or_path: str | Path | Schedule) -> Schedule:
    """A published schedule by name (see :func:`list_schedules`) or a schedule JSON file."""
    if isinstance(name_or_path, Schedule):
        return name_or_path
    text = str(name_or_path)
    if "@" in text and not Path(text).exists():
        fam, target = text.split("@", 1)
        data = _published().get(fam)
        if data is None or target not in data["schedules"]:
            raise BadInputError(
                f"unknown schedule {text!r}; published: {', '.join(list_schedules())}")
        entry = data["schedules"][target]
        return Schedule(list(entry["prune"]), list(entry["merge"]),
                        num_tokens=data["dims"]["num_tokens"],
                        num_prefix_tokens=data["dims"]["num_prefix_tokens"],
                        name=text, target_gmacs=float(target),
                        meta={"model": data["model"], "source": data["source"],
                              "global_pool": data["global_pool"], "dims": dict(data["dims"])})
    path = Path(text)
    if not path.exists():
        raise BadInputError(
            f"schedule {text!r} is neither a file nor a published name; published: {', '.join(list_schedules())}")
    return Schedule.load(path)
