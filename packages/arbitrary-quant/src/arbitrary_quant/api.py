"""The entry point and its undo: ``quantize_(model, config) -> model`` and ``dequantize(model) -> model``.

``REGISTRY`` maps each config type to its method's handler; every method file registers its own
(:mod:`arbitrary_quant.multiquant`, :mod:`arbitrary_quant.baselines` (Any-Precision, LSQ),
:mod:`arbitrary_quant.dfsq`, :mod:`arbitrary_quant.bivit`). The
methods' own one-call functions sit beside it: :func:`~arbitrary_quant.multiquant.multiquant`,
:func:`~arbitrary_quant.dfsq.dfsq` (wrap and calibrate) and :func:`~arbitrary_quant.bivit.binarize_vit`.

* :func:`quantize_` changes the model in place and returns it (torchao ``quantize_`` style);
* :func:`quantize` does the same and returns the method's report;
* :func:`dequantize` puts the original modules back (every wrapper keeps its original as
  ``base_layer`` and never changes it): the model computes exactly what it computed before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from arbitrary_quant.baselines import apply_any_precision, apply_lsq
from arbitrary_quant.bivit import apply_bivit
from arbitrary_quant.config import MultiQuantConfig
from arbitrary_quant.dfsq import apply_dfsq
from arbitrary_quant.multiquant import apply_multiquant
from arbitrary_quant.registry import REGISTRY
from slimkit.wrappers import unwrap_modules
from slimkit.zoo import SmallResNet

__all__ = ["ENTRY_POINT", "REGISTRY", "UNDO", "dequantize", "example", "load_config", "quantize", "quantize_"]

#: The handlers registered on import (one per method file); kept here so the imports are used.
HANDLERS = (apply_multiquant, apply_any_precision, apply_lsq, apply_dfsq, apply_bivit)


def quantize(model: nn.Module, config: Any) -> Any:
    """Apply ``config``'s method to ``model`` in place; returns the method's report."""
    return REGISTRY.handler(config)(model, config)


def quantize_(model: nn.Module, config: Any) -> nn.Module:
    """:func:`quantize` that returns the (same, changed in place) model: the package's entry point."""
    quantize(model, config)
    return model


def dequantize(model: nn.Module) -> nn.Module:
    """Undo :func:`quantize_` in place and return the model (the original modules are back)."""
    unwrap_modules(model)
    return model


def load_config(data: Any) -> Any:
    """A method config from a tagged dict (``slimkit.io.config_to_dict`` output)."""
    return REGISTRY.config_from_dict(data)


ENTRY_POINT = quantize_
UNDO = dequantize


def example(seed: int = 0) -> tuple[nn.Module, MultiQuantConfig]:
    """A tiny random SmallResNet (input ``[B, 3, 16, 16]``) and a MultiQuant config for it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallResNet(num_classes=10, in_chans=3, widths=(16, 32))
    return model, MultiQuantConfig(seed=seed)
