"""The engine behind every method's handler: select layers, validate, wrap them in place.

Layer selection (:func:`wrap_layers`), in order:

1. candidates are ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` modules;
2. ``include`` (fnmatch globs; None = all) and ``exclude`` filter them by qualified name;
3. the first conv and the last Linear (the classifier / LM head) stay dense by default
   (``keep_first_dense``, ``keep_last_dense``), as in the SR-STE/Bi-Mask/SpRe ResNet runs,
   unless ``include`` names them exactly;
4. a layer whose reduction size does not divide by ``m`` (or that the method refuses: Bi-Mask
   and transposable need output channels divisible by ``m``) is skipped with a reason in the
   report; if ``include`` named it exactly, :class:`BadInputError` is raised instead and the
   model is left untouched.

The per-method handlers (one per method file, registered in :mod:`nm_sparse.registry`) call
:func:`wrap_layers` with how to build their wrapper; :func:`nm_sparse.sparsify` picks the
handler by the config's type.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from nm_sparse.config import SparsityConfig
from nm_sparse.layers import SUPPORTED_TYPES, NMLayer, module_weight
from nm_sparse.reference import group_axis_size
from slimkit.errors import BadInputError
from slimkit.report import ReportMixin
from slimkit.surgery import REASON_KEEP_FIRST, REASON_KEEP_LAST, explain_selection, find_conv_bn_pairs, set_module
from slimkit.wrappers import unwrap_modules

__all__ = [
    "LayerReport",
    "SkippedLayer",
    "SparsifyReport",
    "find_conv_bn_pairs",
    "nm_layers",
    "step",
    "unwrap",
    "wrap_layers",
]

_GLOB_CHARS = set("*?[")
#: slimkit's generic reasons, in nm-sparse's 0.1 words.
_REASONS = {REASON_KEEP_FIRST: "first conv kept dense", REASON_KEEP_LAST: "last Linear (classifier) kept dense"}


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
class SparsifyReport(ReportMixin):
    """What :func:`nm_sparse.sparsify` did; ``to_dict()``/``to_json()`` for logs and CLIs."""

    method: str
    pattern: str
    layout: str
    bn_pairing: str = ""
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    sparsified_params: int = 0
    total_params: int = 0

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


#: ``(module, config) -> reason or None``: what a method refuses beyond the group-axis rule.
Refusal = Callable[[nn.Module, SparsityConfig], "str | None"]
#: ``(name, module, index) -> (wrapper, note)``: how a method wraps one chosen layer.
Builder = Callable[[str, nn.Module, int], "tuple[NMLayer, str]"]
#: ``(chosen layers, report) -> None``: validation that needs the whole selection (raise first).
Preparer = Callable[[list[tuple[str, nn.Module]], SparsifyReport], None]


def group_axis_reason(module: nn.Module, config: SparsityConfig) -> str | None:
    """Why the N:M groups cannot tile ``module``'s weight (None when they can)."""
    shape = tuple(module_weight(module).shape)
    axis = group_axis_size(shape, config.layout)
    what = "input features" if isinstance(module, nn.Linear) else f"{config.layout} reduction size"
    if axis % config.m:
        return f"{what} {axis} not divisible by m={config.m}"
    return None


def output_channels_reason(module: nn.Module, config: SparsityConfig) -> str | None:
    """Bi-Mask and transposable masks run along the outputs too: output channels must divide by m."""
    shape = tuple(module_weight(module).shape)
    if shape[0] % config.m:
        return f"output channels {shape[0]} not divisible by m={config.m} ({config.method} masks the outputs too)"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
        return f"grouped convolutions are not supported by {config.method}"
    return None


def select_layers(
    model: nn.Module, config: SparsityConfig, refuse: Refusal | None = None, *, wraps: bool = True
) -> tuple[list[tuple[str, nn.Module]], SparsifyReport]:
    """The layers ``config`` would wrap (and a report listing every other one with its reason).

    Raises BadInputError, before anything changes, for a model that is already sparsified,
    an exact ``include`` name that is no Linear/Conv layer or that cannot take the pattern,
    and ``include`` globs that match no layer at all.
    """
    if any(isinstance(mod, NMLayer) for mod in model.modules()):
        raise BadInputError("model is already sparsified; call nm_sparse.unwrap or nm_sparse.deploy first")
    explicit = {p for p in (config.include or []) if not (_GLOB_CHARS & set(p))}
    known = {name for name, mod in model.named_modules() if isinstance(mod, SUPPORTED_TYPES)}
    missing = [p for p in config.include or [] if p in explicit and p not in known]
    if missing:
        raise BadInputError(f"include names no Linear/Conv layer: {', '.join(missing)}")
    explained = explain_selection(
        model,
        SUPPORTED_TYPES,
        config.include,
        config.exclude,
        keep_first=(nn.Conv1d, nn.Conv2d) if config.keep_first_dense else False,
        keep_last=(nn.Linear,) if config.keep_last_dense else False,
    )
    if config.include is not None and not any(_matches(name, config.include) for name, _, _ in explained):
        raise BadInputError(f"include {', '.join(config.include)} matches no Linear/Conv layer")

    report = SparsifyReport(config.method, config.pattern, config.layout)
    report.total_params = sum(int(module_weight(mod).numel()) for _, mod, _ in explained)
    chosen: list[tuple[str, nn.Module]] = []
    errors: list[str] = []
    for name, module, why in explained:
        shape = list(module_weight(module).shape)
        reason = _REASONS.get(why, why) if why is not None else None
        if reason is None and not wraps:
            reason = f"method is {config.method}"
        elif reason is None and refuse is not None:
            reason = refuse(module, config)
            if reason is not None and name in explicit:
                errors.append(f"{name}: {reason}")
        if reason is None:
            chosen.append((name, module))
        else:
            report.skipped.append(SkippedLayer(name, type(module).__name__, shape, reason))
    if errors:
        raise BadInputError(f"cannot apply {config.pattern} to requested layers: {'; '.join(errors)}")
    return chosen, report


def wrap_layers(
    model: nn.Module,
    config: SparsityConfig,
    build: Builder,
    refuse: Refusal | None = None,
    prepare: Preparer | None = None,
) -> SparsifyReport:
    """Select (:func:`select_layers`), validate (``prepare``), then wrap every chosen layer in place.

    Nothing changes in ``model`` unless every check passed. A wrapper that absorbs other
    modules (SpRe's BatchNorm, :meth:`NMLayer.displaced`) has them replaced by ``nn.Identity``;
    :func:`unwrap` puts them back.
    """
    chosen, report = select_layers(model, config, refuse)
    if prepare is not None:
        prepare(chosen, report)
    for index, (name, module) in enumerate(chosen):
        wrapper, note = build(name, module, index)
        for other in wrapper.displaced():
            set_module(model, other, nn.Identity())
        set_module(model, name, wrapper)
        bn = next(iter(wrapper.displaced()), None)
        report.layers.append(
            LayerReport(name, type(module).__name__, list(module_weight(module).shape), wrapper.method, bn, note)
        )
        report.sparsified_params += int(module_weight(module).numel())
    return report


def nm_layers(model: nn.Module) -> list[tuple[str, NMLayer]]:
    """All N:M wrappers in ``model`` with their qualified names."""
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, NMLayer)]


def unwrap(model: nn.Module) -> int:
    """Undo :func:`sparsify`: put the original (trained) modules back; returns a count.

    The weights are the latent ones the optimizer updated: dense for the dynamic-mask methods,
    with the pruned entries zeroed for ``asp`` / ``unstructured`` (they prune in place).
    """
    displaced = [item for _, layer in nm_layers(model) for item in layer.displaced().items()]
    count = unwrap_modules(model, NMLayer)
    for other, module in displaced:
        set_module(model, other, module)
    return count


def step(model: nn.Module) -> None:
    """Once per optimizer step: refresh SpRe spatial masks, advance Bi-Mask permutation search."""
    for _, layer in nm_layers(model):
        layer.on_step()
