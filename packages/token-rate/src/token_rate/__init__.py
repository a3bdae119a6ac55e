"""token-rate: DiffRate (learned per-layer prune + merge rates) and ToMe for timm and HF ViTs.

Quick use::

    import timm, token_rate
    model = timm.create_model("deit_small_patch16_224")
    token_rate.patch(model, "deit_small@2.9")       # published DiffRate schedule
    token_rate.gmacs(model)                           # 2.905
    token_rate.unpatch(model)

See :func:`patch` for the configs (:class:`DiffRateConfig`, :class:`SearchConfig`, :class:`ToMeConfig`).
``__all__`` lists the entry point, its undo, the configs and a few everyday helpers; everything else
is importable from its submodule (and, as in 0.1, as an attribute of the package).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from token_rate.api import config_from_dict, patch, unpatch
from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig
from token_rate.flops import ViTDims, differentiable_gmacs
from token_rate.model_flops import counted_gmacs, gmacs
from token_rate.patch import (
    arch_parameters,
    current_token_counts,
    export_schedule,
    get_context,
    is_patched,
    last_token_counts,
    model_dims,
    search_gmacs,
    set_search_masking,
    token_source,
)
from token_rate.schedule import Schedule, list_schedules, load_schedule
from token_rate.search import search

try:
    __version__ = version("token-rate")
except PackageNotFoundError:  # pragma: no cover - source tree
    __version__ = "0.0.0"


__all__ = [
    "__version__",
    "patch",
    "unpatch",
    "DiffRateConfig",
    "SearchConfig",
    "ToMeConfig",
    "Schedule",
    "config_from_dict",
    "gmacs",
    "list_schedules",
    "load_schedule",
    "search",
    "token_source",
]

# Not in __all__ but kept as package attributes for 0.1 code (import them from their modules):
# token_rate.flops: ViTDims, differentiable_gmacs; token_rate.model_flops: counted_gmacs;
# token_rate.patch: arch_parameters, current_token_counts, export_schedule, get_context, is_patched,
# last_token_counts, model_dims, search_gmacs, set_search_masking.
_COMPAT = (ViTDims, differentiable_gmacs, counted_gmacs, arch_parameters, current_token_counts, export_schedule,
           get_context, is_patched, last_token_counts, model_dims, search_gmacs, set_search_masking)
