"""The entry point and its undo: ``add_lora(model, LoraConfig()) -> model`` and ``remove_lora(model) -> model``.

The memo pipeline needs no change to a model; tuning one for it does. :func:`add_lora` puts LoRA
adapters on a causal LM in place (the step before training a model for memo writing, retrieval and
memo-grounded chat); :func:`remove_lora` takes them off again, exactly (or merged, ``merge=True``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memochat.config import LoraConfig
from memochat.lora import apply_lora, strip_lora
from memochat.models import tiny_llama
from memochat.registry import REGISTRY

__all__ = ["ENTRY_POINT", "REGISTRY", "UNDO", "add_lora", "example", "remove_lora"]

#: The handler registered on import; kept here so the import is used.
HANDLERS = (apply_lora,)


def add_lora(model: nn.Module, config: LoraConfig | None = None) -> nn.Module:
    """LoRA adapters on ``model`` (a transformers causal LM), in place; returns the same model."""
    cfg = config or LoraConfig()
    REGISTRY.handler(cfg)(model, cfg)
    return model


def remove_lora(model: nn.Module, merge: bool = False) -> nn.Module:
    """Undo :func:`add_lora` in place (``merge=True`` keeps the trained update in the weights)."""
    strip_lora(model, merge=merge)
    return model


def example() -> tuple[nn.Module, LoraConfig]:
    """A tiny random Llama (with ``example_input()``: token ids) and a rank-4 LoRA config."""
    model: Any = tiny_llama(hidden=32, layers=1, heads=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (2, 12), generator=g)
    model.example_input = lambda: ids
    return model, LoraConfig(r=4, alpha=8)


ENTRY_POINT = add_lora
UNDO = remove_lora
