"""The package's method registry: config type -> the handler that builds its per-model context.

Each method file registers its handler for its own config dataclass (:mod:`token_rate.diffrate`
for :class:`~token_rate.DiffRateConfig` and :class:`~token_rate.SearchConfig`,
:mod:`token_rate.tome` for :class:`~token_rate.ToMeConfig`), so adding a method adds one file.
A handler is called as ``handler(model, config, info)`` with the adapter's
:class:`~token_rate.context.ModelInfo` and returns the :class:`~token_rate.context.TokenRateContext`
the patched blocks run. :data:`token_rate.api.REGISTRY` is this object.
"""

from __future__ import annotations

from slimkit.registry import MethodRegistry

__all__ = ["REGISTRY"]

REGISTRY = MethodRegistry("token-rate")
