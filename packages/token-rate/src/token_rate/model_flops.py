"""Model-level GMACs: :func:`gmacs` of a model, a published schedule name or a config, and the
``torch.utils.flop_counter`` cross-check :func:`counted_gmacs`.

The formulas are in :mod:`token_rate.flops` (which imports nothing from token_rate); this module
sits above the patch, because a patched model's GMACs follow from its current token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimkit.bench import count_flops
from slimkit.errors import BadInputError
from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig
from token_rate.flops import ViTDims, analytic_macs, tome_token_counts
from token_rate.patch import current_token_counts, model_dims
from token_rate.schedule import Schedule, load_schedule, published_dims
from token_rate.tome import parse_r

__all__ = ["gmacs", "counted_gmacs"]


def _counts_for(dims: ViTDims, what: Any) -> list[int] | None:
    """Per-block outgoing counts for a schedule, a config or a list."""
    if what is None:
        return None
    if isinstance(what, SearchConfig):
        raise BadInputError("a SearchConfig has no fixed schedule; pass the patched model instead")
    if isinstance(what, DiffRateConfig):
        what = what.schedule
    if isinstance(what, ToMeConfig):
        return tome_token_counts(dims, parse_r(dims.depth, what.r))
    if isinstance(what, (str, Schedule)):
        sched = load_schedule(what)
        sched.validate(depth=dims.depth, num_tokens=dims.num_tokens)
        return sched.effective(dims.num_tokens)
    if isinstance(what, Sequence):
        return [int(v) for v in what]
    raise BadInputError(f"cannot count MACs for a {type(what).__name__}; pass a Schedule, config or list")


def gmacs(model_or_dims: Any, schedule: Any = None) -> float:
    """Analytic GMACs of a model (or :class:`ViTDims`) under a schedule, config or per-block counts.

    * ``gmacs("deit_small@2.9")``: a published schedule on the model it was searched on (2.905).
    * ``gmacs(model)``: a patched model under its own config (search mode: the current hard counts);
      an unpatched model: the uncompressed baseline.
    * ``gmacs(model_or_dims, schedule)``: ``schedule`` may be a :class:`~token_rate.Schedule`, a
      published name, a ``DiffRateConfig``/``ToMeConfig``, or a list of tokens leaving each block.
    """
    if isinstance(model_or_dims, str):
        pd = published_dims(model_or_dims)
        dims = ViTDims(**{k: v for k, v in pd.items() if k in ViTDims.__dataclass_fields__})
        if schedule is None:
            schedule = model_or_dims
    elif isinstance(model_or_dims, ViTDims):
        dims = model_or_dims
    elif isinstance(model_or_dims, dict):
        dims = ViTDims(**model_or_dims)
    elif isinstance(model_or_dims, nn.Module):
        dims = model_dims(model_or_dims)
        if schedule is None:
            return analytic_macs(dims, current_token_counts(model_or_dims)) / 1e9
    else:
        raise BadInputError(f"gmacs() needs a model, ViTDims or published name, got {type(model_or_dims).__name__}")
    return analytic_macs(dims, _counts_for(dims, schedule)) / 1e9


def counted_gmacs(model: nn.Module, *example_inputs: Any) -> float:
    """GMACs measured by running the model under ``torch.utils.flop_counter`` (FLOPs / 2).

    Unlike the analytic count this includes the small extra matmuls the method adds (the class
    attention row, the similarity matrix), so it lands slightly above :func:`gmacs`.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops = count_flops(model, *example_inputs)
    finally:
        model.train(was_training)
    return flops / 2 / 1e9
