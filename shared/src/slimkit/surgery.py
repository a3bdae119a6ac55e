"""Model surgery: find, select and replace submodules by qualified name; pair and fold BatchNorms.

Why here: every method package changes an existing ``nn.Module`` in place (wrap chosen layers,
swap them back, fold BatchNorm before deployment). These helpers are the one tested copy of
"which layers, by which names", so ``include``/``exclude`` globs mean the same in every package.

Wrappers are recognised by duck typing: a module with an ``nn.Module`` attribute
``base_layer`` (the PEFT convention, see :class:`slimkit.wrappers.WrapperModule`) is a
wrapper; torch.fx treats it as a leaf and pairing looks through it to its base layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from slimkit.errors import BadInputError

__all__ = [
    "PAIRING_MODES",
    "REASON_EXCLUDED",
    "REASON_KEEP_FIRST",
    "REASON_KEEP_LAST",
    "REASON_NOT_INCLUDED",
    "bn_scale_shift",
    "explain_selection",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "get_module",
    "is_glob",
    "select_modules",
    "set_module",
]

_GLOB_CHARS = frozenset("*?[")
PAIRING_MODES: tuple[str, ...] = ("auto", "fx", "names")

REASON_NOT_INCLUDED = "not in include"
REASON_EXCLUDED = "excluded"
REASON_KEEP_FIRST = "first kept dense"
REASON_KEEP_LAST = "last kept dense"


# --------------------------------------------------------------------------- get / set


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted ``name`` (``""`` is ``model``; ``layers.0.conv`` indexes Sequential/ModuleList)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise BadInputError(f"{type(model).__name__} has no submodule {name!r}") from None


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at dotted ``name`` in place of the module there; returns the old module."""
    if not name:
        raise BadInputError("cannot replace the root module; replace the model object instead")
    parent_name, _, leaf = name.rpartition(".")
    parent = get_module(model, parent_name)
    old = parent._modules.get(leaf)
    if old is None:
        raise BadInputError(f"{type(model).__name__} has no submodule {name!r}")
    setattr(parent, leaf, new)
    return old


# --------------------------------------------------------------------------- selection


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` has fnmatch wildcards (``*``, ``?``, ``[``); otherwise it names one module exactly."""
    return bool(_GLOB_CHARS & set(pattern))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _edge_name(candidates: list[tuple[str, nn.Module]], keep: bool | tuple[type, ...], last: bool) -> str | None:
    if keep is False:
        return None
    kinds = tuple(keep) if isinstance(keep, tuple) else None
    names = [n for n, m in candidates if kinds is None or isinstance(m, kinds)]
    if not names:
        return None
    return names[-1] if last else names[0]


def explain_selection(
    model: nn.Module,
    types: tuple[type, ...],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_first: bool | tuple[type, ...] = False,
    keep_last: bool | tuple[type, ...] = False,
) -> list[tuple[str, nn.Module, str | None]]:
    """Every module of ``types`` with the reason it is left out (``None``: selected); see :func:`select_modules`."""
    candidates: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, types):
            candidates.append((name, mod))  # type: ignore[arg-type]  # isinstance with a tuple variable narrows to object
    known = {name for name, _ in candidates}
    explicit = {p for p in (include or []) if not is_glob(p)}
    missing = sorted(p for p in explicit if p not in known)
    if missing:
        kinds = "/".join(t.__name__ for t in types)
        raise BadInputError(f"include names no {kinds} layer: {', '.join(missing)}")
    first = _edge_name(candidates, keep_first, last=False)
    last = _edge_name(candidates, keep_last, last=True)
    out: list[tuple[str, nn.Module, str | None]] = []
    for name, module in candidates:
        reason: str | None = None
        if include is not None and not _matches(name, include):
            reason = REASON_NOT_INCLUDED
        elif _matches(name, exclude):
            reason = REASON_EXCLUDED
        elif name == first and name not in explicit:
            reason = REASON_KEEP_FIRST
        elif name == last and name not in explicit:
            reason = REASON_KEEP_LAST
        out.append((name, module, reason))
    return out


def select_modules(
    model: nn.Module,
    types: tuple[type, ...],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_first: bool | tuple[type, ...] = False,
    keep_last: bool | tuple[type, ...] = False,
) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs of ``types`` chosen by name, in registration order.

    In order: ``include`` (fnmatch globs on qualified names; ``None`` = all) keeps the matches;
    ``exclude`` drops its matches; ``keep_first``/``keep_last`` drop the first/last module of
    ``types`` (``True``) or of the narrower types given as a tuple (``keep_first=(nn.Conv2d,)``:
    the first conv) unless ``include`` names it exactly (no wildcard). An exact ``include``
    name that matches no module of ``types`` is a :class:`BadInputError`.
    """
    return [
        (name, module)
        for name, module, reason in explain_selection(model, types, include, exclude, keep_first, keep_last)
        if reason is None
    ]


# --------------------------------------------------------------------------- conv -> BN pairing


def _base(module: nn.Module) -> nn.Module:
    base = getattr(module, "base_layer", None)
    return base if isinstance(base, nn.Module) else module


def _is_wrapper(module: nn.Module) -> bool:
    return isinstance(getattr(module, "base_layer", None), nn.Module)


def _is_conv2d(module: nn.Module) -> bool:
    return isinstance(_base(module), nn.Conv2d) and bool(getattr(module, "pairs_with_bn", True))


def _out_channels(module: nn.Module) -> int:
    weight = _base(module).weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps wrappers (and ``leaf_types``) as leaves, so a wrapped model traces too."""

    def __init__(self, leaf_types: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            _is_wrapper(m)
            or (bool(self.leaf_types) and isinstance(m, self.leaf_types))
            or super().is_leaf_module(m, module_qualified_name)
        )


def _pairs_by_fx(model: nn.Module, leaf_types: tuple[type, ...]) -> dict[str, str]:
    graph = _LeafTracer(leaf_types).trace(model)
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
            and bn.num_features == _out_channels(modules[conv_name])
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
            if isinstance(bn, nn.BatchNorm2d) and bn.num_features == _out_channels(module):
                pairs[name] = bn_name
                break
    return pairs


def find_conv_bn_pairs(
    model: nn.Module, mode: str = "auto", *, leaf_types: tuple[type, ...] = ()
) -> tuple[dict[str, str], str]:
    """Map conv name -> name of the BatchNorm2d that consumes its output; returns ``(pairs, how)``.

    ``fx``: trace the model with torch.fx (wrappers and ``leaf_types`` kept as leaves); a conv
    pairs with a BatchNorm2d that is its only user, when both are called once and the channel
    counts agree (registration order does not matter). ``names``: in one parent, ``convX`` ->
    ``bnX``/``normX``, ``conv`` -> ``bn``/``norm`` and Sequential index ``i`` -> ``i+1``.
    ``auto`` tries ``fx`` and falls back to ``names`` when tracing fails; ``how`` says which
    ran. A wrapper whose class sets ``pairs_with_bn = False`` (it already owns its BatchNorm)
    is never paired.
    """
    if mode not in PAIRING_MODES:
        raise BadInputError(f"pairing mode must be one of {', '.join(PAIRING_MODES)}, got {mode!r}")
    if mode in ("auto", "fx"):
        try:
            return _pairs_by_fx(model, leaf_types), "fx"
        except Exception as exc:
            if mode == "fx":
                raise BadInputError(f"torch.fx could not trace the model ({type(exc).__name__}); use 'names'") from exc
    return _pairs_by_names(model), "names"


# --------------------------------------------------------------------------- BatchNorm folding


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(t, b)`` with ``BN(y) = t * y + b`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise BadInputError("BatchNorm without running statistics cannot be folded")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean * scale


@torch.no_grad()
def fold_batchnorm(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Fold an eval-mode BatchNorm into the conv (or Linear) before it, in place; returns that module.

    ``W' = W * t`` per output channel and ``b' = b * t + s`` (a bias is added when there was
    none), with ``(t, s)`` from :func:`bn_scale_shift`; the caller replaces the BatchNorm by
    ``nn.Identity``. Zeros in ``W`` stay zeros, so N:M patterns survive folding.
    """
    weight = getattr(conv, "weight", None)
    if not isinstance(conv, (nn.Linear, nn.modules.conv._ConvNd)) or not isinstance(weight, torch.Tensor):
        raise BadInputError(f"can fold BatchNorm only into a Linear or conv layer, got {type(conv).__name__}")
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        raise BadInputError("cannot fold BatchNorm into a transposed convolution")
    if bn.num_features != weight.shape[0]:
        raise BadInputError(f"BatchNorm over {bn.num_features} channels does not follow a layer with {weight.shape[0]} outputs")
    scale, shift = bn_scale_shift(bn)
    weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.detach().clone())
    else:
        conv.bias.copy_(conv.bias * scale + shift)
    return conv
