"""A base class for modules that wrap a layer, PEFT-style, and the functions that undo them.

Why: a compression method typically replaces ``nn.Linear`` by a wrapper that computes
something else from the same weights (masked, quantized, ...). Keeping the original as
``self.base_layer`` means the weights are not copied, ``model.proj.weight`` keeps working,
undo is "put ``base_layer`` back", and deployment is "put ``to_plain()`` back".
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from slimkit.surgery import set_module

__all__ = ["WrapperModule", "unwrap_modules", "wrapped_modules"]


class WrapperModule(nn.Module):
    """Holds the wrapped module as ``base_layer``; attributes it lacks are read from the base layer.

    Subclasses implement ``forward`` and override :meth:`to_plain` when the effective weights
    differ from the base layer's. ``pairs_with_bn = False`` on a subclass tells
    :func:`slimkit.surgery.find_conv_bn_pairs` that it already owns its BatchNorm.
    """

    pairs_with_bn: ClassVar[bool] = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Module):
            raise TypeError(f"{type(self).__name__} wraps an nn.Module, got {type(base_layer).__name__}")
        self.base_layer = base_layer

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Default: the base layer unchanged (subclasses change this)."""
        return self.base_layer(*args, **kwargs)

    def to_plain(self) -> nn.Module:
        """A plain module of the base layer's type carrying the effective weights (default: the base layer)."""
        base = self.base_layer
        assert isinstance(base, nn.Module)
        return base


def wrapped_modules(model: nn.Module, cls: type[WrapperModule] = WrapperModule) -> list[tuple[str, WrapperModule]]:
    """Every ``cls`` instance in ``model`` with its qualified name (outermost first, nested ones skipped)."""
    found: list[tuple[str, WrapperModule]] = []
    for name, module in model.named_modules():
        if isinstance(module, cls) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def unwrap_modules(model: nn.Module, cls: type[WrapperModule] = WrapperModule, plain: bool = False) -> int:
    """Replace every ``cls`` wrapper by its ``base_layer`` (or by ``to_plain()`` with ``plain``); returns the count.

    A wrapper nested inside another wrapper's base layer is unwrapped too. ``model`` itself
    cannot be replaced in place, so a model that *is* a wrapper is a ``ValueError``.
    """
    if isinstance(model, cls):
        raise ValueError("the model itself is a wrapper; use model.base_layer or model.to_plain()")
    count = 0
    while True:
        layers = wrapped_modules(model, cls)
        if not layers:
            return count
        for name, layer in layers:
            set_module(model, name, layer.to_plain() if plain else layer.base_layer)
        count += len(layers)
