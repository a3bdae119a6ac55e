"""Config type -> handler registries: how every package maps a method's config to its code.

A package keeps one :class:`MethodRegistry`. Each method file registers its handler for its
own config dataclass, so adding a method adds one file and one import, never an ``if/elif``
branch. The registry also knows every config type of the package, so configs of any of its
methods load from JSON through :mod:`slimkit.io` with one call.

    REGISTRY = MethodRegistry("nm-sparse")

    @REGISTRY.register(SRSTEConfig)
    def _apply_srste(model, config): ...

    REGISTRY.handler(config)(model, config)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, load_config

H = TypeVar("H", bound=Callable[..., Any])


class MethodRegistry:
    """Maps config dataclasses to the handler that applies them (first match by exact type)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self._handlers: dict[type, Callable[..., Any]] = {}
        self._aliases: dict[str, type] = {}

    def register(self, config_type: type) -> Callable[[H], H]:
        """Decorator: ``handler`` applies configs of exactly ``config_type``."""

        def decorate(handler: H) -> H:
            if config_type in self._handlers:
                raise ValueError(f"{self.package}: {config_type.__name__} is registered twice")
            self._handlers[config_type] = handler
            return handler

        return decorate

    def alias(self, name: str, config_type: type) -> None:
        """Let JSON tagged with an older type name (``_type: name``) load as ``config_type``."""
        self._aliases[name] = config_type

    @property
    def config_types(self) -> tuple[type, ...]:
        return tuple(self._handlers)

    @property
    def aliases(self) -> Mapping[str, type]:
        return dict(self._aliases)

    def handler(self, config: Any) -> Callable[..., Any]:
        """The handler for ``config``'s type; a BadInputError names the types it knows."""
        found = self._handlers.get(type(config))
        if found is None:
            known = ", ".join(t.__name__ for t in self._handlers) or "none"
            raise BadInputError(f"{self.package} has no method for {type(config).__name__} (known configs: {known})")
        return found

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """A config of any registered method (or alias) from its tagged dict."""
        return config_from_dict(self.config_types + tuple(self._aliases.values()), data, self._aliases)

    def load_config(self, path: str | os.PathLike[str] | Path) -> Any:
        """A config of any registered method from a JSON file written by :func:`slimkit.io.save_config`."""
        return load_config(path, self.config_types + tuple(self._aliases.values()), self._aliases)
