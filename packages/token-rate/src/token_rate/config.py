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

All configs serialise only through :mod:`slimkit.io` (``to_dict`` is
:func:`slimkit.io.config_to_dict`; :func:`token_rate.config_from_dict` reads any of them through
the package's :class:`~slimkit.registry.MethodRegistry`), in slimkit's ``{"_type", "_version", ...}``
layout. :func:`upgrade_config_dict` maps the few 0.1 spellings that differ onto the 0.2 fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from slimkit.errors import BadInputError
from slimkit.io import config_to_dict
from token_rate.schedule import Schedule, load_schedule

__all__ = ["DiffRateConfig", "SearchConfig", "ToMeConfig", "CONFIG_TYPES", "MODES", "upgrade_config_dict"]

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
        return config_to_dict(self)


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
        return config_to_dict(self)


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
        r: Any = self.r
        # JSON has no tuples: (r, inflection) comes back as a two-element list whose second entry is a
        # float, which a per-block list (integers only) never has.
        if isinstance(r, list) and len(r) == 2 and isinstance(r[1], float):
            r = tuple(r)
        if isinstance(r, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r):
                raise BadInputError(f"per-block r must be non-negative integers, got {r!r}")
        elif isinstance(r, tuple):
            if (len(r) != 2 or isinstance(r[0], bool) or not isinstance(r[0], int) or isinstance(r[1], bool)
                    or not isinstance(r[1], (int, float)) or not -1.0 <= float(r[1]) <= 1.0 or r[0] < 0):
                raise BadInputError(f"r as a tuple must be (r >= 0, inflection in [-1, 1]), got {r!r}")
            r = (int(r[0]), float(r[1]))
        elif isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise BadInputError(f"r must be a non-negative int, (r, inflection) or a list, got {r!r}")
        self.r = r

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


CONFIG_TYPES: tuple[type, ...] = (DiffRateConfig, SearchConfig, ToMeConfig)


def upgrade_config_dict(data: Any) -> Any:
    """Map a config dict written by token-rate 0.1 onto the 0.2 fields (other input is returned as is).

    0.1 wrote ToMe's ``(r, inflection)`` as ``{"r": r, "inflection": x}``; 0.2 writes ``[r, x]``.
    Everything else 0.1 wrote is already in the 0.2 layout.
    """
    if not isinstance(data, Mapping) or data.get("_type") != "ToMeConfig":
        return data
    r = data.get("r")
    if isinstance(r, Mapping) and set(r) == {"r", "inflection"}:
        inflection = r["inflection"]
        if isinstance(inflection, int) and not isinstance(inflection, bool):
            inflection = float(inflection)
        return {**data, "r": [r["r"], inflection]}
    return data
