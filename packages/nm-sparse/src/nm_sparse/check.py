"""``check(model)``: per-layer N:M validity and sparsity, as a JSON-serialisable report."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nm_sparse.layers import SUPPORTED_TYPES, NMLayer, inside_wrapper, module_weight
from nm_sparse.pattern import NMPattern, parse_pattern
from nm_sparse.reference import check_layout, group_axis_size, to_gemm_matrix
from slimkit.report import ReportMixin

#: Attribute :func:`nm_sparse.deploy` sets on the model: {layer name: "n:m/layout"}.
DEPLOY_RECORD = "nm_sparse_deployed"


@dataclass
class LayerCheck:
    name: str
    type: str
    shape: list[int]
    pattern: str
    layout: str
    source: str  # "wrapper", "deployed" or "argument"
    valid: bool
    groups: int
    violating_groups: int
    max_nonzeros_per_group: int
    nonzeros: int
    numel: int
    sparsity: float
    reason: str = ""


@dataclass
class CheckReport(ReportMixin):
    layers: list[LayerCheck] = field(default_factory=list)
    all_valid: bool = True
    nonzeros: int = 0
    numel: int = 0
    sparsity: float = 0.0

    def by_name(self) -> dict[str, LayerCheck]:
        return {layer.name: layer for layer in self.layers}


@torch.no_grad()
def check_weight(
    weight: Tensor, pattern: NMPattern, layout: str = "cin", name: str = "", kind: str = "", source: str = "argument"
) -> LayerCheck:
    """Validity (at most ``n`` non-zeros per group) and sparsity of one weight."""
    n, m = pattern.n, pattern.m
    nonzeros = int((weight != 0).sum())
    numel = weight.numel()
    base = dict(
        name=name,
        type=kind,
        shape=list(weight.shape),
        pattern=str(pattern),
        layout=layout,
        source=source,
        nonzeros=nonzeros,
        numel=numel,
        sparsity=1.0 - nonzeros / max(numel, 1),
    )
    axis = group_axis_size(tuple(weight.shape), layout)
    if axis % m:
        return LayerCheck(
            valid=False,
            groups=0,
            violating_groups=0,
            max_nonzeros_per_group=0,
            reason=f"group axis {axis} not divisible by m={m}",
            **base,  # type: ignore[arg-type]
        )
    mat = to_gemm_matrix(weight, layout)
    counts = (mat != 0).reshape(mat.shape[0], -1, m).sum(-1)
    violating = int((counts > n).sum())
    return LayerCheck(
        valid=violating == 0,
        groups=counts.numel(),
        violating_groups=violating,
        max_nonzeros_per_group=int(counts.max()) if counts.numel() else 0,
        reason="" if violating == 0 else f"{violating} groups hold more than {n} non-zeros",
        **base,  # type: ignore[arg-type]
    )


def check(
    model: nn.Module,
    pattern: Any = None,
    layout: str | None = None,
    names: list[str] | None = None,
) -> CheckReport:
    """Check every N:M layer of ``model``.

    Wrapped layers are checked against their own pattern (their effective forward weight);
    layers deployed by :func:`nm_sparse.deploy` against the recorded pattern; with
    ``pattern`` given, every plain Linear/Conv layer (optionally filtered by ``names`` globs)
    is checked against it too. Layers with no known pattern are not listed.
    """
    explicit = parse_pattern(pattern) if pattern is not None else None
    if layout is not None:
        check_layout(layout)
    record: dict[str, str] = getattr(model, DEPLOY_RECORD, {}) or {}
    report = CheckReport()
    for name, module in model.named_modules():
        if names is not None and not any(fnmatch.fnmatchcase(name, p) for p in names):
            continue
        if isinstance(module, NMLayer):
            weight = module.effective_weight()
            pat = explicit or module.pattern
            lay = layout or module.layout
            kind, source = f"{module.method}({type(module.base_layer).__name__})", "wrapper"
        elif isinstance(module, SUPPORTED_TYPES) and not inside_wrapper(model, name):
            if name in record and explicit is None:
                spec, _, rec_layout = record[name].partition("/")
                pat, lay, source = parse_pattern(spec), layout or rec_layout or "cin", "deployed"
            elif explicit is not None:
                pat, lay, source = explicit, layout or "cin", "argument"
            else:
                continue
            weight = module_weight(module).detach()
            kind = type(module).__name__
        else:
            continue
        report.layers.append(check_weight(weight, pat, lay, name, kind, source))
    report.all_valid = all(layer.valid for layer in report.layers)
    report.nonzeros = sum(layer.nonzeros for layer in report.layers)
    report.numel = sum(layer.numel for layer in report.layers)
    report.sparsity = 1.0 - report.nonzeros / max(report.numel, 1)
    return report
