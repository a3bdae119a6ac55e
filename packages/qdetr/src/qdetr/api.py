"""The entry point and its undo: ``quantize(model, QDetrConfig()) -> model`` and ``dequantize(model) -> model``.

* :func:`quantize` changes a Hugging Face ``DetrForObjectDetection`` in place and returns it
  (torchao ``quantize_`` style); :func:`quantize_report` returns what was changed instead;
* :func:`dequantize` puts the original modules back (every wrapper keeps its original as
  ``base_layer`` and never changes it): the model computes exactly what it computed before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qdetr.config import QDetrConfig
from qdetr.models import tiny_detr
from qdetr.quantize import QDetrReport, apply_qdetr
from qdetr.registry import REGISTRY
from slimkit.wrappers import unwrap_modules

__all__ = ["ENTRY_POINT", "REGISTRY", "UNDO", "dequantize", "example", "load_config", "quantize", "quantize_report"]

#: The handler registered on import; kept here so the import is used.
HANDLERS = (apply_qdetr,)


def quantize_report(model: nn.Module, config: QDetrConfig | None = None) -> QDetrReport:
    """Quantize ``model`` in place; returns the :class:`~qdetr.quantize.QDetrReport`."""
    cfg = config or QDetrConfig()
    report: QDetrReport = REGISTRY.handler(cfg)(model, cfg)
    return report


def quantize(model: nn.Module, config: QDetrConfig | None = None) -> nn.Module:
    """Quantize ``model`` (a transformers ``DetrForObjectDetection``) in place and return it: the entry point."""
    quantize_report(model, config)
    return model


def dequantize(model: nn.Module) -> nn.Module:
    """Undo :func:`quantize` in place and return the model (the original modules are back)."""
    unwrap_modules(model)
    return model


def load_config(data: Any) -> Any:
    """A config from a tagged dict (``slimkit.io.config_to_dict`` output)."""
    return REGISTRY.config_from_dict(data)


ENTRY_POINT = quantize
UNDO = dequantize


def example(seed: int = 0) -> tuple[nn.Module, QDetrConfig]:
    """A tiny random DETR (input ``[B, 3, 32, 32]``) and the default 4-4-8 config."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_detr(num_labels=3)
    return model, QDetrConfig(seed=seed)
