"""``sparsify(model, NMConfig)``: wrap the chosen Linear/Conv layers in place, with a report.

Layer selection, in order:

1. candidates are ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` modules;
2. ``include`` (fnmatch globs; None = all) and ``exclude`` filter them by qualified name;
3. the first conv and the last Linear (the classifier / LM head) stay dense by default
   (``keep_first_dense``, ``keep_last_dense``), as in the SR-STE/Bi-Mask/SpRe ResNet runs,
   unless ``include`` names them exactly;
4. a layer whose reduction size does not divide by ``m`` (or, for Bi-Mask/transposable, whose
   output channels do not) is skipped with a reason in the report; if ``include`` named it
   exactly, :class:`BadInputError` is raised instead and the model is left untouched.

SpRe needs the BatchNorm that consumes each k x k conv's output; :func:`find_conv_bn_pairs`
finds it with a torch.fx trace (``auto``/``fx``) and falls back to module names (``auto``/
``names``: in one parent, ``convX`` -> ``bnX``/``normX``, ``conv`` -> ``bn``/``norm``, and
``Sequential`` index ``i`` -> ``i+1``, as in torchvision and timm ResNets).
``NMConfig.spre_bn_map`` overrides both. A k x k conv without a BatchNorm gets SR-STE only.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from nm_sparse.baselines import ASPLayer, TransposableLayer, UnstructuredLayer
from nm_sparse.bimask import BiMaskLayer
from nm_sparse.config import NMConfig
from nm_sparse.layers import SUPPORTED_TYPES, NMLayer, module_weight
from nm_sparse.masks import group_axis_size
from nm_sparse.spre import SpReConv
from nm_sparse.srste import SRSTELayer
from slimkit.errors import BadInputError

_GLOB_CHARS = set("*?[")


@dataclass
class LayerReport:
    name: str
    type: str
    shape: list[int]
    method: str
    bn: str | None = None
    note: str = ""


@dataclass
class SkippedLayer:
    name: str
    type: str
    shape: list[int]
    reason: str


@dataclass
class SparsifyReport:
    """What :func:`sparsify` did; ``to_dict()``/``to_json()`` for logs and CLIs."""

    method: str
    pattern: str
    layout: str
    bn_pairing: str = ""
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    sparsified_params: int = 0
    total_params: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


# --------------------------------------------------------------------------- conv -> BN pairing


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps N:M wrappers as leaves (so a sparsified model traces too)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, NMLayer) or super().is_leaf_module(m, module_qualified_name)


def _is_conv2d(module: nn.Module) -> bool:
    base = module.base_layer if isinstance(module, NMLayer) else module
    return isinstance(base, nn.Conv2d) and not isinstance(module, SpReConv)


def _pairs_by_fx(model: nn.Module) -> dict[str, str]:
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not _is_conv2d(modules[str(node.target)]):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn_name, conv_name = str(users[0].target), str(node.target)
        bn = modules[bn_name]
        if (
            isinstance(bn, nn.BatchNorm2d)
            and calls[bn_name] == 1
            and calls[conv_name] == 1
            and bn.num_features == module_weight(modules[conv_name]).shape[0]
        ):
            pairs[conv_name] = bn_name
    return pairs


def _name_candidates(leaf: str) -> list[str]:
    if leaf.isdigit():
        return [str(int(leaf) + 1)]
    if "conv" in leaf:
        return [leaf.replace("conv", "bn"), leaf.replace("conv", "norm")]
    return []


def _pairs_by_names(model: nn.Module) -> dict[str, str]:
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    for name, module in modules.items():
        if not _is_conv2d(module):
            continue
        parent, _, leaf = name.rpartition(".")
        for cand in _name_candidates(leaf):
            bn_name = f"{parent}.{cand}" if parent else cand
            bn = modules.get(bn_name)
            if isinstance(bn, nn.BatchNorm2d) and bn.num_features == module_weight(module).shape[0]:
                pairs[name] = bn_name
                break
    return pairs


def find_conv_bn_pairs(model: nn.Module, mode: str = "auto") -> tuple[dict[str, str], str]:
    """Map conv name -> name of the BatchNorm2d that consumes its output; returns (pairs, how)."""
    if mode in ("auto", "fx"):
        try:
            return _pairs_by_fx(model), "fx"
        except Exception as exc:
            if mode == "fx":
                raise BadInputError(f"torch.fx could not trace the model ({type(exc).__name__}); use 'names'") from exc
    return _pairs_by_names(model), "names"


# --------------------------------------------------------------------------- selection


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _ineligible_reason(module: nn.Module, config: NMConfig) -> str | None:
    shape = tuple(module_weight(module).shape)
    m = config.m
    if config.method == "unstructured":
        return None
    axis = group_axis_size(shape, config.layout)
    what = "input features" if isinstance(module, nn.Linear) else f"{config.layout} reduction size"
    if axis % m:
        return f"{what} {axis} not divisible by m={m}"
    grouped = isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1
    if config.method in ("bimask", "transposable"):
        if shape[0] % m:
            return f"output channels {shape[0]} not divisible by m={m} ({config.method} masks the outputs too)"
        if grouped:
            return f"grouped convolutions are not supported by {config.method}"
    if config.method == "transposable" and m > 4:
        return f"transposable masks need m <= 4, got m={m}"
    return None


def _wants_spre(module: nn.Module, config: NMConfig) -> bool:
    return (
        config.method == "spre"
        and isinstance(module, nn.Conv2d)
        and all(k >= config.spre_min_kernel for k in module.kernel_size)
    )


def _build(module: nn.Module, config: NMConfig, bn: nn.Module | None, index: int) -> NMLayer:
    pattern, layout, decay = config.nm, config.layout, config.decay
    if config.method == "spre" and bn is not None:
        assert isinstance(module, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        return SpReConv(
            module,
            bn,
            pattern,
            layout,
            decay,
            branch_init=config.spre_branch_init,
            branch_gamma=config.spre_branch_gamma,
            refresh=config.refresh,
        )
    if config.method in ("srste", "spre"):
        return SRSTELayer(module, pattern, layout, decay)
    if config.method == "asp":
        return ASPLayer(module, pattern, layout)
    if config.method == "unstructured":
        return UnstructuredLayer(module, pattern, layout)
    if config.method == "transposable":
        return TransposableLayer(module, pattern, layout, decay)
    if config.method == "bimask":
        return BiMaskLayer(
            module,
            pattern,
            layout,
            decay,
            candidates=config.bimask_candidates,
            interval=config.bimask_interval,
            scorer=config.bimask_scorer,
            keep_current=config.bimask_keep_current,
            refresh=config.refresh,
            seed=config.seed + index,
        )
    raise BadInputError(f"unknown method {config.method!r}")


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def sparsify(model: nn.Module, config: NMConfig | None = None) -> SparsifyReport:
    """Wrap the selected layers of ``model`` in place; returns what was done and skipped."""
    config = config or NMConfig()
    if any(isinstance(mod, NMLayer) for mod in model.modules()):
        raise BadInputError("model is already sparsified; call nm_sparse.unwrap or nm_sparse.deploy first")
    candidates = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, SUPPORTED_TYPES)]
    names = {name for name, _ in candidates}
    explicit = [p for p in (config.include or []) if not (_GLOB_CHARS & set(p))]
    missing = [p for p in explicit if p not in names]
    if missing:
        raise BadInputError(f"include names no Linear/Conv layer: {', '.join(missing)}")
    convs = [name for name, mod in candidates if not isinstance(mod, nn.Linear)]
    linears = [name for name, mod in candidates if isinstance(mod, nn.Linear)]
    first_conv = convs[0] if convs else None
    last_linear = linears[-1] if linears else None

    report = SparsifyReport(config.method, config.pattern, config.layout)
    report.total_params = sum(int(module_weight(mod).numel()) for _, mod in candidates)
    chosen: list[tuple[str, nn.Module]] = []
    errors: list[str] = []
    for name, module in candidates:
        shape = list(module_weight(module).shape)
        kind = type(module).__name__
        named = name in explicit
        reason: str | None = None
        if config.include is not None and not _matches(name, config.include):
            reason = "not in include"
        elif _matches(name, config.exclude):
            reason = "excluded"
        elif config.keep_first_dense and name == first_conv and not named:
            reason = "first conv kept dense"
        elif config.keep_last_dense and name == last_linear and not named:
            reason = "last Linear (classifier) kept dense"
        elif config.method == "dense":
            reason = "method is dense"
        else:
            reason = _ineligible_reason(module, config)
            if reason is not None and named:
                errors.append(f"{name}: {reason}")
        if reason is None:
            chosen.append((name, module))
        else:
            report.skipped.append(SkippedLayer(name, kind, shape, reason))
    if errors:
        raise BadInputError(f"cannot apply {config.pattern} to requested layers: {'; '.join(errors)}")

    pairs: dict[str, str] = {}
    if config.method == "spre":
        if config.spre_bn_map is not None:
            pairs, report.bn_pairing = dict(config.spre_bn_map), "user"
        else:
            pairs, report.bn_pairing = find_conv_bn_pairs(model, config.spre_pairing)
    modules = dict(model.named_modules())
    bns = _resolve_spre_bns(chosen, pairs, modules, config)  # validate everything before changing the model
    for index, (name, module) in enumerate(chosen):
        bn = bns.get(name)
        note = "no BatchNorm consumes this conv: SR-STE only" if _wants_spre(module, config) and bn is None else ""
        wrapper = _build(module, config, bn, index)
        if isinstance(wrapper, SpReConv):
            bn_name = pairs[name]
            wrapper.bn_name = bn_name
            _set_module(model, bn_name, nn.Identity())
        _set_module(model, name, wrapper)
        report.layers.append(
            LayerReport(name, type(module).__name__, list(module_weight(module).shape), wrapper.method, pairs.get(name) if isinstance(wrapper, SpReConv) else None, note)
        )
        report.sparsified_params += int(module_weight(module).numel())
    return report


def _resolve_spre_bns(
    chosen: list[tuple[str, nn.Module]], pairs: dict[str, str], modules: dict[str, nn.Module], config: NMConfig
) -> dict[str, nn.BatchNorm2d]:
    """BatchNorm for each SpRe conv; BadInputError for a bad pairing (nothing changed yet)."""
    out: dict[str, nn.BatchNorm2d] = {}
    used: set[str] = set()
    for name, module in chosen:
        bn_name = pairs.get(name)
        if not _wants_spre(module, config) or bn_name is None:
            continue
        bn = modules.get(bn_name)
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != module_weight(module).shape[0]:
            raise BadInputError(f"{bn_name!r} (paired with {name}) is not a BatchNorm2d over its output channels")
        if not bn.track_running_stats:
            raise BadInputError(f"{bn_name!r} does not track running statistics, so SpRe cannot fold it")
        if bn_name in used:
            raise BadInputError(f"BatchNorm {bn_name!r} is paired with more than one conv")
        used.add(bn_name)
        out[name] = bn
    return out


def nm_layers(model: nn.Module) -> list[tuple[str, NMLayer]]:
    """All N:M wrappers in ``model`` with their qualified names."""
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, NMLayer)]


def unwrap(model: nn.Module) -> int:
    """Undo :func:`sparsify`: put the original (dense, trained) modules back; returns a count."""
    layers = nm_layers(model)
    for name, layer in layers:
        _set_module(model, name, layer.base_layer)
        if isinstance(layer, SpReConv):
            _set_module(model, layer.bn_name, layer.base_bn)
    return len(layers)


def step(model: nn.Module) -> None:
    """Once per optimizer step: refresh SpRe spatial masks, advance Bi-Mask permutation search."""
    for _, layer in nm_layers(model):
        layer.on_step()
