"""token-rate: DiffRate (learned per-layer prune + merge rates) and ToMe for timm and HF ViTs.

Quick use::

    import timm, token_rate
    model = timm.create_model("deit_small_patch16_224")
    token_rate.patch(model, "deit_small@2.9")       # published DiffRate schedule
    token_rate.gmacs(model)                           # 2.905

See :func:`patch` for the configs (:class:`DiffRateConfig`, :class:`SearchConfig`, :class:`ToMeConfig`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig, config_from_dict
from token_rate.flops import ViTDims, counted_gmacs, differentiable_gmacs, gmacs
from token_rate.patch import (
    arch_parameters,
    current_token_counts,
    export_schedule,
    get_context,
    is_patched,
    last_token_counts,
    model_dims,
    patch,
    search_gmacs,
    set_search_masking,
    token_source,
    unpatch,
)
from token_rate.schedule import Schedule, list_schedules, load_schedule

try:
    __version__ = version("token-rate")
except PackageNotFoundError:  # pragma: no cover - source tree
    __version__ = "0.0.0"


__all__ = [
    "DiffRateConfig",
    "SearchConfig",
    "ToMeConfig",
    "Schedule",
    "ViTDims",
    "__version__",
    "arch_parameters",
    "config_from_dict",
    "counted_gmacs",
    "current_token_counts",
    "differentiable_gmacs",
    "export_schedule",
    "get_context",
    "gmacs",
    "is_patched",
    "last_token_counts",
    "list_schedules",
    "load_schedule",
    "model_dims",
    "patch",
    "search_gmacs",
    "set_search_masking",
    "token_source",
    "unpatch",
]


# The search loop lives in token_rate.search (training through slimkit.train). Import it last and
# guarded, so the core API stays importable when that module or its dependencies are missing.
try:
    from token_rate.search import search
except ImportError as _search_error:  # pragma: no cover - depends on the install
    _search_import_error = _search_error

    def search(*args: object, **kwargs: object) -> object:  # type: ignore[misc]
        """Unavailable: ``token_rate.search`` could not be imported (see the chained error)."""
        raise ImportError(f"token_rate.search is unavailable: {_search_import_error}") from _search_import_error

__all__.append("search")
