"""DiffRate: the fixed-schedule and the search-mode handlers.

* :class:`~token_rate.DiffRateConfig`: prune and merge to the schedule's fixed per-block counts.
* :class:`~token_rate.SearchConfig`: learnable DDP logits per block (:mod:`token_rate.ddp`);
  training mode masks, eval mode slices to the current hard counts.

The compression step itself is :meth:`token_rate.context.TokenRateContext.compress`.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import BadInputError
from token_rate.config import DiffRateConfig, SearchConfig
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.ddp import DiffRateDDP
from token_rate.registry import REGISTRY
from token_rate.schedule import Schedule, load_schedule

__all__ = ["build_diffrate", "build_search", "check_schedule_fits"]


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_schedule_fits(sched: Schedule, info: ModelInfo) -> None:
    """BadInputError unless ``sched`` was made for a model shaped like ``info`` describes.

    Checks the input token count and depth, and, where the schedule records the dimensions of the
    model it was made for (published schedules, searched schedules), the width and patch size: a
    DeiT-S schedule on DeiT-Tiny has the right depth and tokens but was searched for another model.
    """
    d = info.dims
    where = f"schedule {sched.name}" if sched.name else "schedule"
    if sched.num_tokens is not None and sched.num_tokens != d.num_tokens:
        raise BadInputError(f"{where} was made for {sched.num_tokens} input tokens but the model has {d.num_tokens}")
    recorded = sched.meta.get("dims")
    if isinstance(recorded, dict):
        wrong = [f"{key} {recorded[key]} (model: {getattr(d, key)})"
                 for key in ("depth", "embed_dim", "num_tokens", "patch_size")
                 if key in recorded and recorded[key] != getattr(d, key)]
        if wrong:
            made_for = sched.meta.get("model")
            target = f" ({made_for})" if made_for else ""
            raise BadInputError(f"{where} was made for another model{target}: " + ", ".join(wrong))
    sched.validate(depth=d.depth, num_tokens=d.num_tokens, num_prefix_tokens=info.num_prefix_tokens)


@REGISTRY.register(DiffRateConfig)
def build_diffrate(model: nn.Module, cfg: DiffRateConfig, info: ModelInfo) -> TokenRateContext:
    """Context for a fixed schedule (checked against the model first)."""
    sched = load_schedule(cfg.schedule)
    check_schedule_fits(sched, info)
    return TokenRateContext("diffrate", cfg, info, prune=list(sched.prune), merge_counts=list(sched.merge))


@REGISTRY.register(SearchConfig)
def build_search(model: nn.Module, cfg: SearchConfig, info: ModelInfo) -> TokenRateContext:
    """Context with DDP logits (optionally warm-started from ``cfg.init_schedule``)."""
    d = info.dims
    fix_last = cfg.fix_last_block
    if fix_last is None:
        fix_last = info.global_pool in ("avg", "avgmax", "max")
    fixed = (0, d.depth - 1) if fix_last else (0,)
    ctx = TokenRateContext("search", cfg, info)
    ddp = DiffRateDDP(d.depth, d.num_tokens - info.num_prefix_tokens, info.num_prefix_tokens,
                      cfg.granularity, fixed_blocks=fixed).to(_device(model))
    if cfg.init_schedule is not None:
        init = load_schedule(cfg.init_schedule)
        init.validate(depth=d.depth, num_tokens=d.num_tokens, num_prefix_tokens=info.num_prefix_tokens)
        for i in range(d.depth):
            if i not in ddp.fixed_blocks:
                ddp.prune[i].set_kept(init.prune[i])  # type: ignore[operator]
                ddp.merge[i].set_kept(init.merge[i])  # type: ignore[operator]
    ctx.ddp = ddp
    return ctx
