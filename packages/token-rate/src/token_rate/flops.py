"""Analytic MAC counts for token-compressed ViTs (the DiffRate/DeiT convention: "GFLOPs" = GMACs).

Per block, with width C and N tokens entering the block:

* attention: ``4 N C^2 + 2 N^2 C`` (qkv + output projection, then QK^T and AV) on the incoming N;
* MLP: ``2 r N' C^2`` (``8 N' C^2`` for mlp ratio r = 4) on the N' tokens left after compression.

Patch embedding (``N0 C in_chans p^2``, with N0 the token count *including* prefix tokens, as the
official code computes it) and the classifier head (``C classes``) are added once. Norms,
softmax, activations and the sort/gather/scatter work are not counted. With the published 2.9
schedule, DeiT-S comes out at 2.905 GMACs, the number in the DiffRate README.

:func:`differentiable_gmacs` is the same formula on tensors, with the official straight-through
``min`` so that the search loss ``(GMACs - target)^2`` sends gradient to every block's prune and
merge kept counts. :func:`counted_gmacs` cross-checks with ``torch.utils.flop_counter`` (through
``slimkit.bench.count_flops``, which also counts SDPA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import BadInputError

__all__ = [
    "ViTDims",
    "attention_macs",
    "mlp_macs",
    "analytic_macs",
    "differentiable_gmacs",
    "ste_min",
    "gmacs",
    "counted_gmacs",
    "tome_token_counts",
]


@dataclass(frozen=True)
class ViTDims:
    """The few numbers the analytic count needs."""

    depth: int
    embed_dim: int
    num_tokens: int
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    num_prefix_tokens: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attention_macs(n: Any, c: int) -> Any:
    """qkv (3NC^2) + proj (NC^2) + QK^T (N^2 C) + AV (N^2 C)."""
    return 4 * n * c * c + 2 * n * n * c


def mlp_macs(n: Any, c: int, mlp_ratio: float = 4.0) -> Any:
    """fc1 + fc2: ``2 * ratio * N * C^2``."""
    return 2 * mlp_ratio * n * c * c


def _stem_head_macs(d: ViTDims) -> float:
    return d.num_tokens * d.embed_dim * d.in_chans * d.patch_size**2 + d.embed_dim * d.num_classes


def analytic_macs(dims: ViTDims, counts: Sequence[int] | None = None) -> float:
    """Total MACs given the tokens *leaving* each block (``None``: nothing compressed)."""
    if counts is None:
        counts = [dims.num_tokens] * dims.depth
    if len(counts) != dims.depth:
        raise BadInputError(f"{len(counts)} per-block counts for a model with {dims.depth} blocks")
    total = float(_stem_head_macs(dims))
    n_in = dims.num_tokens
    for n_out in counts:
        n_out = min(int(n_out), n_in)
        total += attention_macs(n_in, dims.embed_dim) + mlp_macs(n_out, dims.embed_dim, dims.mlp_ratio)
        n_in = n_out
    return total


class _SteMin(torch.autograd.Function):
    """Forward ``min(current, prune, merge)``; backward feeds both kept counts, never ``current``."""

    @staticmethod
    def forward(ctx: Any, current: Tensor, prune: Tensor, merge: Tensor) -> Tensor:  # type: ignore[override]
        return torch.minimum(torch.minimum(current, prune), merge)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor]:  # type: ignore[override]
        return None, grad, grad


def ste_min(current: Tensor, prune: Tensor, merge: Tensor) -> Tensor:
    return _SteMin.apply(current, prune, merge)  # type: ignore[no-any-return]


def differentiable_gmacs(dims: ViTDims, prune_kept: Sequence[Tensor], merge_kept: Sequence[Tensor]) -> Tensor:
    """GMACs as a differentiable function of the per-block kept counts (search loss).

    A block's counts get gradient from its own MLP term and from the next block's attention term.
    """
    if len(prune_kept) != dims.depth or len(merge_kept) != dims.depth:
        raise BadInputError(f"need {dims.depth} prune and merge counts, got {len(prune_kept)}/{len(merge_kept)}")
    ref = prune_kept[0]
    n_in: Tensor = torch.tensor(float(dims.num_tokens), device=ref.device)
    total = torch.tensor(float(_stem_head_macs(dims)), device=ref.device)
    c = dims.embed_dim
    for p, m in zip(prune_kept, merge_kept):
        total = total + attention_macs(n_in, c)
        n_out = ste_min(n_in.detach(), p.float(), m.float())
        total = total + mlp_macs(n_out, c, dims.mlp_ratio)
        n_in = n_out
    return total / 1e9


def tome_token_counts(dims: ViTDims, r: Sequence[int]) -> list[int]:
    """Tokens leaving each block under ToMe: ``r`` merges, capped at half the unprotected tokens."""
    out, n = [], dims.num_tokens
    for rl in r:
        n = n - min(int(rl), (n - dims.num_prefix_tokens) // 2)
        out.append(n)
    return out


def _counts_for(dims: ViTDims, what: Any) -> list[int] | None:
    """Per-block outgoing counts for a schedule, a config or a list."""
    from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig
    from token_rate.schedule import Schedule, load_schedule
    from token_rate.tome import parse_r

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
    from token_rate.schedule import published_dims

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
        from token_rate.patch import current_token_counts, model_dims

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
    from slimkit.bench import count_flops

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops = count_flops(model, *example_inputs)
    finally:
        model.train(was_training)
    return flops / 2 / 1e9
