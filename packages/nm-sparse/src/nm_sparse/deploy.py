"""``deploy(model)``: replace N:M wrappers by plain modules holding the N:M weights.

* every wrapper becomes a copy of its base layer with the effective forward weight
  (``W ⊙ mask``); a SpRe wrapper becomes one conv with both BatchNorms folded in and the
  two branch kernels summed (same N:M support as the main branch);
* with ``fold_bn`` (default), every remaining conv -> BatchNorm2d pair found by
  :func:`nm_sparse.sparsify.find_conv_bn_pairs` is folded too (per-output-channel scaling
  keeps the N:M zeros) and the BatchNorm becomes ``nn.Identity``.

The deployed model in any mode computes what the sparsified model computes in eval mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nm_sparse.check import DEPLOY_RECORD, CheckReport, check
from nm_sparse.sparsify import _set_module, find_conv_bn_pairs, nm_layers
from nm_sparse.spre import bn_scale_shift


@dataclass
class DeployReport:
    layers: list[dict[str, str]] = field(default_factory=list)
    folded_bn: dict[str, str] = field(default_factory=dict)
    check: CheckReport = field(default_factory=CheckReport)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv1d | nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode BatchNorm into the conv before it, in place (adds a bias if needed)."""
    scale, shift = bn_scale_shift(bn)
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.detach().clone())
    else:
        conv.bias.copy_(conv.bias * scale + shift)


def deploy(model: nn.Module, fold_bn: bool = True, pairing: str = "auto") -> DeployReport:
    """Turn a sparsified model into plain modules in place; returns what changed plus a check."""
    report = DeployReport()
    pairs: dict[str, str] = {}
    if fold_bn:
        pairs, _ = find_conv_bn_pairs(model, pairing)
    record: dict[str, str] = dict(getattr(model, DEPLOY_RECORD, {}) or {})
    for name, layer in nm_layers(model):
        plain = layer.to_plain()
        _set_module(model, name, plain)
        record[name] = f"{layer.pattern}/{layer.layout}"
        report.layers.append({"name": name, "method": layer.method, "pattern": str(layer.pattern)})
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs.items():
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, nn.BatchNorm2d):
            fold_batchnorm(conv, bn)
            _set_module(model, bn_name, nn.Identity())
            report.folded_bn[conv_name] = bn_name
    setattr(model, DEPLOY_RECORD, record)
    report.check = check(model)
    return report
