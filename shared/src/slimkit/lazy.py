"""Lazy public names for a package's ``__init__`` (PEP 562 module ``__getattr__``).

Why: qdetr, kd3d, unidg and memochat export their configs and entry points from the package
root, but importing the modules behind them pulls in heavy libraries (transformers' DETR imports
Triton, kd3d spconv, memochat transformers and peft). With :func:`lazy_exports` a ``--version`` or
a config import stays light and each name loads on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from module ``where[name]`` on first access.

    The value is stored in ``namespace`` (the package's ``globals()``), so later accesses do not
    come back here. Unknown names raise ``AttributeError`` as a module would. Use as
    ``__getattr__ = lazy_exports("pkg", {"Config": "pkg.config"}, globals())``.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
