"""``token_rate.patch(model, config)``: turn a ViT into a token-compressing one, in place.

The patch swaps the classes of the model's blocks (and, for timm, of the model, for size-weighted
average pooling) for subclasses whose ``forward`` adds the compression step. Parameters, buffers
and state-dict keys are untouched, the original class stays at ``_token_rate_original_class`` and
:func:`unpatch` restores it. Search mode additionally registers the DDP logits as
``model.token_rate_ddp`` (their only new state-dict keys).

Helpers for a search loop: :func:`arch_parameters` (what to optimise), :func:`search_gmacs`
(differentiable GMACs of the current logits), :func:`export_schedule` (the learned integer
schedule), :func:`last_token_counts` (what the last forward actually kept).
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from slimkit.errors import BadInputError
from token_rate import diffrate, tome
from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig, upgrade_config_dict
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.flops import ViTDims, differentiable_gmacs, tome_token_counts
from token_rate.patch_hf import HFLayerMixin, inspect_hf, is_hf_vit
from token_rate.patch_timm import TimmBlockMixin, TimmModelMixin, inspect_timm, is_timm_vit
from token_rate.registry import REGISTRY
from token_rate.schedule import Schedule

__all__ = [
    "patch", "unpatch", "is_patched", "get_context", "model_info", "model_dims", "arch_parameters", "search_gmacs",
    "export_schedule", "current_token_counts", "last_token_counts", "token_source", "set_search_masking",
]

Config = DiffRateConfig | SearchConfig | ToMeConfig
_METHODS = (diffrate, tome)  # importing the method modules registers their handlers in REGISTRY

_CLASS_CACHE: dict[tuple[type, type], type] = {}


def _patched_class(mixin: type, base: type) -> type:
    """A cached ``(mixin, base)`` subclass, registered in this module so instances still pickle."""
    key = (mixin, base)
    cls = _CLASS_CACHE.get(key)
    if cls is None:
        name = f"TokenRate{base.__name__}_{len(_CLASS_CACHE)}"
        cls = type(name, (mixin, base), {"_token_rate_original_class": base, "__module__": __name__})
        cls.__qualname__ = name
        globals()[name] = cls
        _CLASS_CACHE[key] = cls
    return cls


def _normalize(config: Any) -> Config:
    if type(config) in REGISTRY.config_types:  # any registered method's config
        return cast(Config, config)
    if isinstance(config, (Schedule, str)):
        return DiffRateConfig(schedule=config)
    if isinstance(config, dict):
        if "_type" in config and config["_type"] != "Schedule":
            return REGISTRY.config_from_dict(upgrade_config_dict(config))  # type: ignore[no-any-return]
        return DiffRateConfig(schedule=Schedule.from_dict(config))
    raise BadInputError(
        f"patch() needs a DiffRateConfig, SearchConfig, ToMeConfig, Schedule or schedule name, got {type(config).__name__}")


def _inspect(model: nn.Module) -> tuple[ModelInfo, list[nn.Module], type, type | None]:
    if is_timm_vit(model):
        info, blocks = inspect_timm(model)
        return info, blocks, TimmBlockMixin, TimmModelMixin
    if is_hf_vit(model):
        info, blocks = inspect_hf(model)
        return info, blocks, HFLayerMixin, None
    raise BadInputError(
        f"unsupported model {type(model).__module__}.{type(model).__name__}: token-rate patches timm "
        "VisionTransformer (vit_*, deit_*, deit3_*) and transformers ViTModel / ViTForImageClassification")


def _checkpointing(model: nn.Module) -> bool:
    if getattr(model, "grad_checkpointing", False):  # timm
        return True
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5.x, older
        if hasattr(type(model), attr):
            return bool(getattr(model, attr))
    return False


def patch(model: nn.Module, config: Config | Schedule | str) -> nn.Module:
    """Patch ``model`` in place for DiffRate (schedule or search) or ToMe and return it.

    ``config`` may be a :class:`DiffRateConfig`, :class:`SearchConfig`, :class:`ToMeConfig` (any
    config registered in :data:`token_rate.registry.REGISTRY`; its handler builds the per-model
    context), a tagged config dict, a :class:`Schedule`, or a published schedule name / JSON path
    (shorthand for ``DiffRateConfig``).
    Patching a patched model replaces the previous patch. Unsupported models raise
    :class:`~slimkit.errors.BadInputError` naming the missing part.
    """
    cfg = _normalize(config)
    if is_patched(model):
        unpatch(model)
    info, blocks, block_mixin, model_mixin = _inspect(model)
    if _checkpointing(model):
        raise BadInputError("gradient checkpointing re-runs blocks during backward, which the per-forward token "
                            "state does not support; disable it before patching")
    ctx: TokenRateContext = REGISTRY.handler(cfg)(model, cfg, info)
    for i, blk in enumerate(blocks):
        blk.__class__ = _patched_class(block_mixin, type(blk))
        blk._token_rate_ctx = ctx  # type: ignore[assignment]
        blk._token_rate_index = i  # type: ignore[assignment]
    if model_mixin is not None:
        model.__class__ = _patched_class(model_mixin, type(model))
    model._token_rate = ctx  # type: ignore[assignment]
    if ctx.ddp is not None:
        assert isinstance(cfg, SearchConfig)
        if cfg.freeze_backbone:
            frozen = [name for name, p in model.named_parameters() if p.requires_grad]
            for p in model.parameters():
                p.requires_grad_(False)
            model._token_rate_frozen = frozen  # type: ignore[assignment]
        model.token_rate_ddp = ctx.ddp
    return model


def set_search_masking(model: nn.Module, active: bool | None) -> None:
    """Choose how a search-patched model runs: ``True`` masks (differentiable, constant length) even in
    eval mode, ``False`` slices to the current hard counts even in train mode, ``None`` (default)
    follows ``model.training`` as the official code does."""
    ctx = get_context(model)
    if ctx.ddp is None:
        raise BadInputError("model is not in search mode; patch it with a SearchConfig")
    ctx.search_override = active


def is_patched(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_token_rate", None), TokenRateContext)


def get_context(model: nn.Module) -> TokenRateContext:
    ctx = getattr(model, "_token_rate", None)
    if not isinstance(ctx, TokenRateContext):
        raise BadInputError(f"{type(model).__name__} is not patched by token_rate")
    return ctx


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: original classes, no DDP module, requires_grad flags as before."""
    if not is_patched(model):
        return model
    for m in model.modules():
        if "_token_rate_ctx" in m.__dict__:
            m.__class__ = m._token_rate_original_class  # type: ignore[assignment]
            del m._token_rate_ctx, m._token_rate_index
    if hasattr(type(model), "_token_rate_original_class"):
        model.__class__ = type(model)._token_rate_original_class  # type: ignore[attr-defined]
    if "token_rate_ddp" in model._modules:
        del model._modules["token_rate_ddp"]
    frozen = model.__dict__.pop("_token_rate_frozen", None)
    if frozen is not None:
        params = dict(model.named_parameters())
        for name in frozen:
            if name in params:
                params[name].requires_grad_(True)
    del model._token_rate
    return model


def model_info(model: nn.Module) -> ModelInfo:
    """What the adapter reads from a supported model (dims, prefix tokens, pooling), patched or not."""
    if is_patched(model):
        return get_context(model).info
    return _inspect(model)[0]


def model_dims(model: nn.Module) -> ViTDims:
    """Analytic-count dimensions of a supported model (patched or not)."""
    if is_patched(model):
        return get_context(model).info.dims
    return _inspect(model)[0].dims


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable DDP logits of a search-patched model (the only thing the search optimises)."""
    ctx = get_context(model)
    if ctx.ddp is None:
        raise BadInputError("model is not in search mode; patch it with a SearchConfig")
    return list(ctx.ddp.parameters())


def search_gmacs(model: nn.Module) -> Tensor:
    """Differentiable GMACs of the current DDP logits (feed ``(search_gmacs - target)**2`` to the loss)."""
    ctx = get_context(model)
    if ctx.ddp is None:
        raise BadInputError("model is not in search mode; patch it with a SearchConfig")
    prune, merge = ctx.ddp.kept_tensors()
    return differentiable_gmacs(ctx.info.dims, prune, merge)


def export_schedule(model: nn.Module, name: str | None = None) -> Schedule:
    """The integer schedule a patched model applies (search mode: current hard DDP counts)."""
    ctx = get_context(model)
    d = ctx.info.dims
    if ctx.method == "tome":
        counts = current_token_counts(model)
        assert counts is not None
        return Schedule.from_effective(counts, num_tokens=d.num_tokens,
                                       num_prefix_tokens=ctx.info.num_prefix_tokens, name=name)
    if ctx.ddp is not None:
        prune, merge = ctx.ddp.kept_ints()
    else:
        assert ctx.prune is not None and ctx.merge is not None
        prune, merge = list(ctx.prune), list(ctx.merge)
    prune = [min(v, d.num_tokens) for v in prune]
    merge = [min(v, d.num_tokens) for v in merge]
    return Schedule(prune, merge, num_tokens=d.num_tokens, num_prefix_tokens=ctx.info.num_prefix_tokens, name=name)


def current_token_counts(model: nn.Module) -> list[int] | None:
    """Tokens leaving each block under the model's current patch (``None`` for an unpatched model)."""
    if not is_patched(model):
        return None
    ctx = get_context(model)
    d = ctx.info.dims
    if ctx.method == "tome":
        assert ctx.r is not None
        return tome_token_counts(d, ctx.r)
    return export_schedule(model).effective(d.num_tokens)


def last_token_counts(model: nn.Module) -> list[int]:
    """Tokens each block kept in the last forward pass (search/training: active, unmasked tokens)."""
    return list(get_context(model).last_counts)


def token_source(model: nn.Module) -> Tensor | None:
    """[B, N, N0] map from the last forward's tokens to input tokens (needs ``trace_source=True``)."""
    return get_context(model).state.source
