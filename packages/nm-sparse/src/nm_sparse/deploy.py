"""``deploy(model)``: replace N:M wrappers by plain modules holding the N:M weights.

* every wrapper becomes a copy of its base layer with the effective forward weight
  (``W ⊙ mask``); a SpRe wrapper becomes one conv with both BatchNorms folded in and the
  two branch kernels summed (same N:M support as the main branch);
* with ``fold_bn`` (default), every remaining conv -> BatchNorm2d pair found by
  :func:`nm_sparse.find_conv_bn_pairs` is folded too (:func:`slimkit.surgery.fold_batchnorm`:
  per-output-channel scaling keeps the N:M zeros) and the BatchNorm becomes ``nn.Identity``.

The deployed model in any mode computes what the sparsified model computes in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from nm_sparse.check import DEPLOY_RECORD, CheckReport, check
from nm_sparse.sparsify import nm_layers
from slimkit.report import ReportMixin
from slimkit.surgery import find_conv_bn_pairs, fold_batchnorm, set_module

__all__ = ["DeployReport", "deploy", "fold_batchnorm"]


@dataclass
class DeployReport(ReportMixin):
    layers: list[dict[str, str]] = field(default_factory=list)
    folded_bn: dict[str, str] = field(default_factory=dict)
    check: CheckReport = field(default_factory=CheckReport)


def deploy(model: nn.Module, fold_bn: bool = True, pairing: str = "auto") -> DeployReport:
    """Turn a sparsified model into plain modules in place; returns what changed plus a check."""
    report = DeployReport()
    pairs: dict[str, str] = {}
    if fold_bn:
        pairs, _ = find_conv_bn_pairs(model, pairing)
    record: dict[str, str] = dict(getattr(model, DEPLOY_RECORD, {}) or {})
    for name, layer in nm_layers(model):
        plain = layer.to_plain()
        set_module(model, name, plain)
        record[name] = f"{layer.pattern}/{layer.layout}"
        report.layers.append({"name": name, "method": layer.method, "pattern": str(layer.pattern)})
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs.items():
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, nn.BatchNorm2d):
            fold_batchnorm(conv, bn)
            set_module(model, bn_name, nn.Identity())
            report.folded_bn[conv_name] = bn_name
    setattr(model, DEPLOY_RECORD, record)
    report.check = check(model)
    return report
