"""One configuration dataclass per method, plus the flat 0.1 :class:`NMConfig`.

Every method config shares the fields of :class:`SparsityConfig` (which layers, which pattern,
which layout, a seed); the methods that train with SR-STE's sparse-refined decay add
``decay``; SpRe and Bi-Mask add their own knobs without the 0.1 ``spre_``/``bimask_``
prefixes. The config's type picks the method (``nm_sparse.api.REGISTRY``): there is no
``method`` field to keep in sync, only the class-level ``method`` name used in reports.

Configs are serialised only through :mod:`slimkit.io` (``config_to_dict``,
``REGISTRY.config_from_dict``, ``save_config``/``load_config``). The flat 0.1 ``NMConfig``
(``method=...``, ``spre_*``, ``bimask_*``) is still accepted everywhere: the API converts it
with :meth:`NMConfig.to_method_config`, and saved 0.1 JSON (``"_type": "NMConfig"``) loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from nm_sparse.pattern import NMPattern, parse_pattern
from nm_sparse.reference import LAYOUTS, SCORERS
from slimkit.errors import BadInputError

#: Methods that wrap layers (``dense`` only reports what would be sparsified).
METHODS: tuple[str, ...] = ("dense", "asp", "unstructured", "transposable", "srste", "spre", "bimask")
REFRESH_MODES: tuple[str, ...] = ("step", "forward")
BN_PAIRING: tuple[str, ...] = ("auto", "fx", "names")
BRANCH_INITS: tuple[str, ...] = ("kaiming", "copy", "zeros")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _globs(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass
class SparsityConfig:
    """Fields every method shares.

    ``pattern`` is "N:M" with N the number of **kept** weights per group of M (``"2:4"``);
    tuples ``(2, 4)`` are normalised to the string form. ``include``/``exclude`` are
    ``fnmatch`` globs on qualified module names (``"layer1.*"``); a name without wildcards
    in ``include`` is a request for that exact layer, so it raises BadInputError if the
    layer cannot take the pattern, and it overrides ``keep_first_dense``/``keep_last_dense``.
    ``layout`` groups conv weights along the input channels (``cin``) or the flattened
    ``(C_in, kh, kw)`` (``flat``).
    """

    method: ClassVar[str] = ""

    pattern: str = "2:4"
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    keep_first_dense: bool = True
    keep_last_dense: bool = True
    layout: str = "cin"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pattern, (tuple, list, NMPattern, dict)):
            self.pattern = str(parse_pattern(self.pattern))
        parse_pattern(self.pattern)
        _one_of("layout", self.layout, LAYOUTS)
        if self.include is not None:
            self.include = _globs(self.include)
        self.exclude = _globs(self.exclude)

    @property
    def nm(self) -> NMPattern:
        return parse_pattern(self.pattern)

    @property
    def n(self) -> int:
        return self.nm.n

    @property
    def m(self) -> int:
        return self.nm.m


@dataclass
class DecayConfig(SparsityConfig):
    """Shared by the methods trained with SR-STE's estimator: ``decay`` = lambda on pruned weights."""

    decay: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decay < 0:
            raise BadInputError(f"decay must be >= 0, got {self.decay}")


@dataclass
class DenseConfig(SparsityConfig):
    """Wrap nothing; the report lists what a sparse method would take (and why not the rest)."""

    method: ClassVar[str] = "dense"


@dataclass
class ASPConfig(SparsityConfig):
    """NVIDIA ASP: one-shot N:M magnitude mask, fixed from the moment of sparsification."""

    method: ClassVar[str] = "asp"


@dataclass
class UnstructuredConfig(SparsityConfig):
    """One-shot layer-wise magnitude mask at the same sparsity ``1 - n/m``, no structure."""

    method: ClassVar[str] = "unstructured"


@dataclass
class TransposableConfig(DecayConfig):
    """Hubara et al.'s transposable N:M mask (m <= 4), recomputed every forward, SR-STE updates."""

    method: ClassVar[str] = "transposable"


@dataclass
class SRSTEConfig(DecayConfig):
    """SR-STE: dynamic top-N mask each forward, sparse-refined straight-through estimator."""

    method: ClassVar[str] = "srste"


@dataclass
class SpReConfig(DecayConfig):
    """SpRe: SR-STE main branch plus a spatially masked extra branch on every k x k conv with a BN.

    ``min_kernel``: a conv gets the branch when its kernel is at least this large in each
    spatial dim (2 = any k x k with k > 1); ``bn_map`` maps conv name -> BN name and overrides
    detection; ``pairing`` picks how the BN after each conv is found (``auto``: torch.fx trace,
    falling back to module names); ``branch_init`` initialises the extra branch (``kaiming`` as
    in the official from-scratch runs, ``copy`` of the main weights or ``zeros``);
    ``branch_gamma`` is the extra BN's initial scale (0 keeps a pretrained model's function at
    the start); ``refresh``: ``step`` recomputes the spatial mask only through
    :class:`nm_sparse.NMSparseCallback` / :func:`nm_sparse.step`, ``forward`` in each
    training-mode forward.
    """

    method: ClassVar[str] = "spre"

    min_kernel: int = 2
    pairing: str = "auto"
    bn_map: dict[str, str] | None = None
    branch_init: str = "kaiming"
    branch_gamma: float = 1.0
    refresh: str = "step"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("refresh", self.refresh, REFRESH_MODES)
        _one_of("spre_pairing", self.pairing, BN_PAIRING)
        _one_of("spre_branch_init", self.branch_init, BRANCH_INITS)
        if self.min_kernel < 2:
            raise BadInputError(f"spre_min_kernel must be >= 2, got {self.min_kernel}")


@dataclass
class BiMaskConfig(DecayConfig):
    """Bi-Mask: forward N:M mask along inputs, permuted backward mask along outputs.

    ``candidates`` (K) random row permutations are scored every ``interval`` (T) steps with
    ``scorer`` (``kept`` = official code, ``eligible`` = paper's abstract, ``magnitude``);
    ``keep_current`` also scores the current order so the score never drops (off in the
    official code); ``refresh`` as for :class:`SpReConfig`. Layer ``i`` (in wrap order) seeds
    its permutation generator with ``seed + i``.
    """

    method: ClassVar[str] = "bimask"

    candidates: int = 10
    interval: int = 100
    scorer: str = "kept"
    keep_current: bool = False
    refresh: str = "step"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("refresh", self.refresh, REFRESH_MODES)
        _one_of("bimask_scorer", self.scorer, SCORERS)
        if self.candidates < 1 or self.interval < 1:
            raise BadInputError("bimask_candidates and bimask_interval must be >= 1")


#: Per-method config type by 0.1 method name.
METHOD_CONFIGS: dict[str, type[SparsityConfig]] = {
    cls.method: cls
    for cls in (DenseConfig, ASPConfig, UnstructuredConfig, TransposableConfig, SRSTEConfig, SpReConfig, BiMaskConfig)
}


@dataclass
class NMConfig:
    """The flat 0.1 config: ``method`` names the method, ``spre_*``/``bimask_*`` its knobs.

    Still accepted everywhere a config is (the API converts it with
    :meth:`to_method_config`); new code should use the per-method configs
    (:class:`SRSTEConfig`, :class:`SpReConfig`, :class:`BiMaskConfig`, ...). Fields not used
    by ``method`` are ignored, as in 0.1.
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
        if self.include is not None:
            self.include = _globs(self.include)
        self.exclude = _globs(self.exclude)
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

    def to_method_config(self) -> SparsityConfig:
        """The per-method config that applies exactly what this flat config applies."""
        common: dict[str, Any] = {
            "pattern": self.pattern,
            "include": None if self.include is None else list(self.include),
            "exclude": list(self.exclude),
            "keep_first_dense": self.keep_first_dense,
            "keep_last_dense": self.keep_last_dense,
            "layout": self.layout,
            "seed": self.seed,
        }
        cls = METHOD_CONFIGS[self.method]
        if issubclass(cls, DecayConfig):
            common["decay"] = self.decay
        if cls is SpReConfig:
            return SpReConfig(
                **common,
                min_kernel=self.spre_min_kernel,
                pairing=self.spre_pairing,
                bn_map=None if self.spre_bn_map is None else dict(self.spre_bn_map),
                branch_init=self.spre_branch_init,
                branch_gamma=self.spre_branch_gamma,
                refresh=self.refresh,
            )
        if cls is BiMaskConfig:
            return BiMaskConfig(
                **common,
                candidates=self.bimask_candidates,
                interval=self.bimask_interval,
                scorer=self.bimask_scorer,
                keep_current=self.bimask_keep_current,
                refresh=self.refresh,
            )
        return cls(**common)


def as_method_config(config: SparsityConfig | NMConfig | None) -> SparsityConfig:
    """``config`` as a per-method config (``None`` = SR-STE 2:4 defaults, ``NMConfig`` converted)."""
    if config is None:
        return SRSTEConfig()
    if isinstance(config, NMConfig):
        return config.to_method_config()
    return config
