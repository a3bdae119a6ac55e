"""Hand 2:4 Linear weights to PyTorch's semi-structured sparse kernels (cuSPARSELt/CUTLASS).

``torch.sparse.to_sparse_semi_structured`` accepts only 2-D contiguous CUDA tensors that are
2:4 along the rows (groups along input features), on compute capability >= 8.0, with
dtype/shape limits per backend (cuSPARSELt by default, CUTLASS when
``SparseSemiStructuredTensor._FORCE_CUTLASS``). Convolutions are not supported by PyTorch.
Other N:M patterns are simulated only (masks on dense tensors).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nm_sparse.check import check_weight
from nm_sparse.layers import NMLayer, inside_wrapper, module_weight
from nm_sparse.pattern import NMPattern
from slimkit.errors import BadInputError
from slimkit.report import ReportMixin
from slimkit.surgery import set_module

# Fallback table (torch 2.13/2.14): dtype -> (min/multiple rows, min/multiple cols).
_CUSPARSELT = {torch.float16: (16, 16), torch.bfloat16: (16, 16), torch.int8: (32, 32), torch.float8_e4m3fn: (32, 32)}
_CUTLASS = {torch.float16: (32, 64), torch.bfloat16: (32, 64), torch.int8: (16, 128), torch.float32: (32, 32)}


@dataclass
class SemiStructuredReport(ReportMixin):
    backend: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _backend() -> tuple[str, Any, dict[torch.dtype, tuple[int, int]]]:
    from torch.sparse import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        return "cutlass", SparseSemiStructuredTensorCUTLASS, _CUTLASS
    return "cusparselt", SparseSemiStructuredTensorCUSPARSELT, _CUSPARSELT


def _limits(cls: Any, fallback: dict[torch.dtype, tuple[int, int]]) -> dict[torch.dtype, tuple[int, int]]:
    table = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", None)
    if not table:
        return fallback
    return {dtype: (cfg.sparse_min_rows, cfg.sparse_min_cols) for dtype, cfg in table.items()}


def semi_structured_problem(weight: Tensor, limits: dict[torch.dtype, tuple[int, int]]) -> str | None:
    """Why ``weight`` cannot be converted (None if it can)."""
    if weight.dim() != 2:
        return f"weight must be 2-D, got {tuple(weight.shape)}"
    if weight.dtype not in limits:
        names = ", ".join(str(d).replace("torch.", "") for d in limits)
        return f"dtype {str(weight.dtype).replace('torch.', '')} unsupported (use {names})"
    min_rows, min_cols = limits[weight.dtype]
    rows, cols = weight.shape
    if rows < min_rows or cols < min_cols or rows % min_rows or cols % min_cols:
        return f"shape {rows}x{cols} must be multiples of {min_rows}x{min_cols} (and at least that)"
    if not check_weight(weight, NMPattern(2, 4), "cin").valid:
        return "weight is not 2:4 sparse along input features (sparsify/deploy with pattern 2:4 first)"
    return None


def to_semi_structured(model: nn.Module, names: list[str] | None = None) -> SemiStructuredReport:
    """Convert the 2:4 ``nn.Linear`` weights of ``model`` (CUDA, sm80+) in place.

    Wrapped layers are replaced by their deployed plain Linear first. Layers that do not meet
    the dtype/shape/pattern limits are skipped with a reason, unless named exactly in
    ``names`` (globs otherwise), which raises BadInputError. Raises BadInputError on CPU.
    """
    backend, cls, fallback = _backend()
    limits = _limits(cls, fallback)
    report = SemiStructuredReport(backend)
    linears = []
    for name, module in model.named_modules():
        base = module.base_layer if isinstance(module, NMLayer) else module
        wanted = names is None or any(fnmatch.fnmatchcase(name, p) for p in names)
        if isinstance(base, nn.Linear) and wanted and not inside_wrapper(model, name):
            linears.append((name, module))
    if not linears:
        raise BadInputError("no Linear layers to convert")
    devices = {str(module.weight.device) for _, module in linears}
    if not torch.cuda.is_available() or any(not d.startswith("cuda") for d in devices):
        raise BadInputError(
            f"semi-structured sparse kernels need CUDA tensors; Linear weights are on {', '.join(sorted(devices))}"
        )
    major, _ = torch.cuda.get_device_capability(next(iter(linears))[1].weight.device)
    if major < 8:
        raise BadInputError("semi-structured sparsity needs a GPU with compute capability >= 8.0")
    explicit = {p for p in (names or []) if not set("*?[") & set(p)}
    todo = []
    for name, module in linears:
        weight = module.effective_weight() if isinstance(module, NMLayer) else module_weight(module).detach()
        problem = semi_structured_problem(weight, limits)
        if problem is None:
            todo.append((name, module))
        elif name in explicit:
            raise BadInputError(f"{name}: {problem}")
        else:
            report.skipped[name] = problem
    for name, module in todo:
        plain = module.to_plain() if isinstance(module, NMLayer) else module
        sparse = torch.sparse.to_sparse_semi_structured(module_weight(plain).detach().contiguous())
        plain.weight = nn.Parameter(sparse, requires_grad=False)
        if plain is not module:
            set_module(model, name, plain)
        report.converted.append(name)
    return report
