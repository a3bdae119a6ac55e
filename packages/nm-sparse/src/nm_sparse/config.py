"""The one configuration dataclass that :func:`nm_sparse.sparsify` takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nm_sparse.masks import LAYOUTS, SCORERS
from nm_sparse.pattern import NMPattern, parse_pattern
from slimkit.errors import BadInputError

#: Methods that wrap layers (``dense`` only reports what would be sparsified).
METHODS: tuple[str, ...] = ("dense", "asp", "unstructured", "transposable", "srste", "spre", "bimask")
REFRESH_MODES: tuple[str, ...] = ("step", "forward")
BN_PAIRING: tuple[str, ...] = ("auto", "fx", "names")
BRANCH_INITS: tuple[str, ...] = ("kaiming", "copy", "zeros")


@dataclass
class NMConfig:
    """How to make a model N:M sparse.

    ``pattern`` is "N:M" with N the number of **kept** weights per group of M (``"2:4"``);
    tuples ``(2, 4)`` are normalised to the string form. ``include``/``exclude`` are
    ``fnmatch`` globs on qualified module names (``"layer1.*"``); a name without wildcards
    in ``include`` is a request for that exact layer, so it raises BadInputError if the
    layer cannot take the pattern, and it overrides ``keep_first_dense``/``keep_last_dense``.

    Method-specific fields:

    * ``decay``: SR-STE's sparse-refined decay lambda on pruned weights (srste, spre main
      branch, bimask, transposable), 2e-4 as in the official code;
    * ``spre_min_kernel``: SpRe adds a branch to every conv whose kernel is at least this large
      in each spatial dim (2 = any k x k with k > 1); ``spre_bn_map`` maps conv name -> BN name
      and overrides detection; ``spre_pairing`` picks how the BN after each conv is found
      (``auto``: torch.fx trace, falling back to module names); ``spre_branch_init`` initialises
      the extra branch (``kaiming`` as in the official from-scratch runs, ``copy`` of the main
      weights or ``zeros``); ``spre_branch_gamma`` is the extra BN's initial scale (0 keeps a
      pretrained model's function at the start);
    * ``bimask_candidates`` (K) random row permutations are scored every ``bimask_interval``
      (T) steps with ``bimask_scorer`` (``kept`` = official code, ``eligible`` = paper's
      abstract, ``magnitude``); ``bimask_keep_current`` also scores the current order so the
      score never drops (off in the official code);
    * ``refresh``: ``step`` refreshes SpRe spatial masks / Bi-Mask permutations only through
      :class:`nm_sparse.NMSparseCallback` or :func:`nm_sparse.step` (once per optimizer step,
      as the official loops do); ``forward`` lets each training-mode forward do it.
    """

    method: str = "srste"
    pattern: str = "2:4"
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    keep_first_dense: bool = True
    keep_last_dense: bool = True
    layout: str = "cin"
    decay: float = 2e-4
    refresh: str = "step"
    spre_min_kernel: int = 2
    spre_pairing: str = "auto"
    spre_bn_map: dict[str, str] | None = None
    spre_branch_init: str = "kaiming"
    spre_branch_gamma: float = 1.0
    bimask_candidates: int = 10
    bimask_interval: int = 100
    bimask_scorer: str = "kept"
    bimask_keep_current: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pattern, (tuple, list, NMPattern, dict)):
            self.pattern = str(parse_pattern(self.pattern))
        parse_pattern(self.pattern)
        _one_of("method", self.method, METHODS)
        _one_of("layout", self.layout, LAYOUTS)
        _one_of("refresh", self.refresh, REFRESH_MODES)
        _one_of("spre_pairing", self.spre_pairing, BN_PAIRING)
        _one_of("spre_branch_init", self.spre_branch_init, BRANCH_INITS)
        _one_of("bimask_scorer", self.bimask_scorer, SCORERS)
        if isinstance(self.include, str):
            self.include = [self.include]
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]
        self.exclude = list(self.exclude)
        if self.include is not None:
            self.include = list(self.include)
        if self.decay < 0:
            raise BadInputError(f"decay must be >= 0, got {self.decay}")
        if self.spre_min_kernel < 2:
            raise BadInputError(f"spre_min_kernel must be >= 2, got {self.spre_min_kernel}")
        if self.bimask_candidates < 1 or self.bimask_interval < 1:
            raise BadInputError("bimask_candidates and bimask_interval must be >= 1")

    @property
    def nm(self) -> NMPattern:
        return parse_pattern(self.pattern)

    @property
    def n(self) -> int:
        return self.nm.n

    @property
    def m(self) -> int:
        return self.nm.m


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
