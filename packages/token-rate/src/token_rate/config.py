"""Dataclass configs accepted by :func:`token_rate.patch`.

* :class:`DiffRateConfig`: apply a fixed kept-token schedule (inference, fine-tuning).
* :class:`SearchConfig`: attach learnable DDP logits and run in search mode (sequence length kept,
  tokens masked out of attention keys while training; sliced off in eval mode).
* :class:`ToMeConfig`: ToMe bipartite soft matching with ``r`` merges per block.

Merge modes (``mode``):

* ``"official"`` (default): DiffRate as released. A destination becomes the *unweighted* mean of
  itself and the tokens merged into it; each merged token's size is first multiplied by its
  cosine similarity to the destination (clamped to >= 1 in training mode only, as the official
  code does; ``size_clamp_in_train``) and then added to the destination's size.
* ``"weighted"``: ToMe-style size-weighted average, plain size sums. Sizes then count exactly the
  patches a token stands for, which makes proportional attention and size-weighted pooling exact.

All configs serialise to plain dicts (``to_dict`` / :func:`config_from_dict`) in slimkit's
``{"_type", "_version", ...}`` layout.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from slimkit.errors import BadInputError
from token_rate.schedule import Schedule, load_schedule

__all__ = ["DiffRateConfig", "SearchConfig", "ToMeConfig", "config_from_dict", "MODES"]

MODES = ("official", "weighted")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise BadInputError(f"mode must be one of {MODES}, got {mode!r}")


@dataclass
class DiffRateConfig:
    """Apply a DiffRate schedule: prune then merge to fixed per-block counts.

    Args:
        schedule: a :class:`Schedule`, a published name (``"deit_small@2.9"``) or a JSON path.
        mode: ``"official"`` (unweighted mean merge, similarity-scaled sizes) or ``"weighted"``.
        prop_attn: add ``log(size)`` to attention logits (always on in the official code).
        size_clamp_in_train: official quirk; clamp similarity-scaled sizes to >= 1 in training mode.
        trace_source: keep a [B, N, N0] map of which input patches each token covers.
    """

    schedule: Schedule | str
    mode: Literal["official", "weighted"] = "official"
    prop_attn: bool = True
    size_clamp_in_train: bool = True
    trace_source: bool = False

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if isinstance(self.schedule, dict):
            self.schedule = Schedule.from_dict(self.schedule)

    def resolved_schedule(self) -> Schedule:
        return load_schedule(self.schedule)

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        d["schedule"] = self.schedule.to_dict() if isinstance(self.schedule, Schedule) else str(self.schedule)
        return d


@dataclass
class SearchConfig:
    """Search mode: learnable prune/merge logits per block (the DDP), backbone optionally frozen.

    Args:
        granularity: spacing of the candidate kept counts (official default 4).
        mode, prop_attn, size_clamp_in_train, trace_source: as in :class:`DiffRateConfig`.
        freeze_backbone: set ``requires_grad=False`` on every model weight (restored by ``unpatch``);
            the official search optimises only the logits.
        fix_last_block: keep the last block uncompressed; ``None`` = automatic (on for
            global-average-pool models, as the official MAE patch).
        init_schedule: optional schedule whose counts initialise the logits (peaked distributions)
            instead of the official uniform start.
    """

    granularity: int = 4
    mode: Literal["official", "weighted"] = "official"
    prop_attn: bool = True
    size_clamp_in_train: bool = True
    trace_source: bool = False
    freeze_backbone: bool = True
    fix_last_block: bool | None = None
    init_schedule: Schedule | str | None = None

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if isinstance(self.granularity, bool) or not isinstance(self.granularity, int) or self.granularity < 1:
            raise BadInputError(f"granularity must be a positive integer, got {self.granularity!r}")
        if isinstance(self.init_schedule, dict):
            self.init_schedule = Schedule.from_dict(self.init_schedule)

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        if isinstance(self.init_schedule, Schedule):
            d["init_schedule"] = self.init_schedule.to_dict()
        return d


@dataclass
class ToMeConfig:
    """ToMe bipartite soft matching.

    Args:
        r: tokens merged per block: an int, ``(r, inflection)`` with inflection in [-1, 1] (a linear
            ramp; ``(r, -1)`` is the paper's decreasing schedule) or a per-block list (zero-padded).
        prop_attn: proportional attention (ToMe's default for timm models).
        trace_source: keep the [B, N, N0] source map.
    """

    r: int | tuple[int, float] | list[int] = 0
    prop_attn: bool = True
    trace_source: bool = False

    def __post_init__(self) -> None:
        r = self.r
        if isinstance(r, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r):
                raise BadInputError(f"per-block r must be non-negative integers, got {r!r}")
        elif isinstance(r, tuple):
            if len(r) != 2 or not -1.0 <= float(r[1]) <= 1.0 or int(r[0]) < 0:
                raise BadInputError(f"r as a tuple must be (r >= 0, inflection in [-1, 1]), got {r!r}")
        elif isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise BadInputError(f"r must be a non-negative int, (r, inflection) or a list, got {r!r}")

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        if isinstance(self.r, tuple):
            d["r"] = {"r": self.r[0], "inflection": self.r[1]}
        return d


def _plain(cfg: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"_type": type(cfg).__name__, "_version": 1}
    for f in fields(cfg):
        d[f.name] = getattr(cfg, f.name)
    return d


_TYPES: dict[str, type] = {c.__name__: c for c in (DiffRateConfig, SearchConfig, ToMeConfig)}


def config_from_dict(d: dict[str, Any]) -> DiffRateConfig | SearchConfig | ToMeConfig:
    """Rebuild a config from ``to_dict`` output; unknown types or fields raise BadInputError."""
    if not isinstance(d, dict):
        raise BadInputError(f"config must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("_type", None)
    d.pop("_version", None)
    cls = _TYPES.get(str(kind))
    if cls is None:
        raise BadInputError(f"unknown config _type {kind!r}; expected one of {sorted(_TYPES)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise BadInputError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    if cls is ToMeConfig and isinstance(d.get("r"), dict):
        d["r"] = (int(d["r"]["r"]), float(d["r"]["inflection"]))
    return cls(**d)  # type: ignore[no-any-return]
