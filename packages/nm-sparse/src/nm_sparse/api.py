"""The entry point and its undo: ``sparsify_(model, config) -> model`` and ``unsparsify(model) -> model``.

``REGISTRY`` maps each config type to its method's handler (every method file registers its
own: :mod:`nm_sparse.srste`, :mod:`nm_sparse.spre`, :mod:`nm_sparse.bimask`,
:mod:`nm_sparse.baselines`). The flat 0.1 :class:`~nm_sparse.config.NMConfig` is converted with
``to_method_config()`` first, so both spellings apply exactly the same wrappers.

* :func:`sparsify_` changes the model in place and returns it (torchao ``quantize_`` style);
* :func:`sparsify` does the same and returns the :class:`~nm_sparse.sparsify.SparsifyReport`;
* :func:`unsparsify` / :func:`unwrap` put the original modules back (``base_layer`` and any
  BatchNorm a SpRe wrapper absorbed). For the dynamic-mask methods (srste, spre, bimask,
  transposable) the weights were never touched, so an untrained model computes exactly what
  it computed before; ``asp`` and ``unstructured`` zero their pruned weights in place when they
  wrap a layer (the ASP recipe), so after undo those weights stay zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nm_sparse.baselines import apply_asp, apply_dense, apply_transposable, apply_unstructured
from nm_sparse.bimask import apply_bimask
from nm_sparse.config import NMConfig, SparsityConfig, SRSTEConfig, as_method_config
from nm_sparse.registry import REGISTRY
from nm_sparse.sparsify import SparsifyReport, unwrap
from nm_sparse.spre import apply_spre
from nm_sparse.srste import apply_srste

__all__ = ["ENTRY_POINT", "REGISTRY", "UNDO", "example", "load_config", "sparsify", "sparsify_", "unsparsify"]

#: The handlers registered on import (one per method file); kept here so the imports are used.
HANDLERS = (apply_dense, apply_asp, apply_unstructured, apply_transposable, apply_srste, apply_spre, apply_bimask)


def sparsify(model: nn.Module, config: SparsityConfig | NMConfig | None = None) -> SparsifyReport:
    """Wrap the selected layers of ``model`` in place; returns what was done and skipped.

    ``config`` is a per-method config (:class:`~nm_sparse.config.SRSTEConfig`, ...), a flat 0.1
    :class:`~nm_sparse.config.NMConfig`, or None (SR-STE 2:4).
    """
    method_config = as_method_config(config)
    report: SparsifyReport = REGISTRY.handler(method_config)(model, method_config)
    return report


def sparsify_(model: nn.Module, config: SparsityConfig | NMConfig | None = None) -> nn.Module:
    """:func:`sparsify` that returns the (same, changed in place) model: the package's entry point."""
    sparsify(model, config)
    return model


def unsparsify(model: nn.Module) -> nn.Module:
    """Undo :func:`sparsify_` in place and return the model (the original modules are back)."""
    unwrap(model)
    return model


def load_config(data: Any) -> SparsityConfig:
    """A per-method config from a tagged dict (0.2 per-method or 0.1 ``NMConfig`` JSON)."""
    return as_method_config(REGISTRY.config_from_dict(data))


ENTRY_POINT = sparsify_
UNDO = unsparsify


class _ExampleNet(nn.Module):
    """Conv-BN-ReLU, conv-BN-ReLU, pool, Linear, Linear: small enough for a contract test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


def example(seed: int = 0) -> tuple[nn.Module, SRSTEConfig]:
    """A tiny random conv/linear model (input ``[B, 3, 8, 8]``) and an SR-STE 2:4 config for it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _ExampleNet()
    return model, SRSTEConfig(pattern="2:4", seed=seed)
