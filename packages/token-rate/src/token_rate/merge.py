"""Token matching and merging: the pure-PyTorch references and the dispatch the patched blocks use.

* :func:`best_match_reference`: for every source token, the cosine similarity to its most similar
  destination token and that destination's index (DiffRate's one-sided nearest neighbour; ToMe
  uses the same step on its A/B split).
* :func:`merge_reference`: fold every source token into its destination. ``mode="mean"`` is the
  official DiffRate merge, an *unweighted* mean of a destination and all its sources
  (``scatter_reduce(..., "mean", include_self=True)``); ``mode="weighted"`` is ToMe's
  size-weighted average. Sizes always add; DiffRate's similarity scaling of source sizes is
  applied by the caller, on ``src_size``.

:func:`best_match` and :func:`merge` call ``token_rate.kernels`` (custom ops, Triton on CUDA) for
CUDA tensors when that module imports. CPU tensors go straight to these references, which is what
the custom ops' CPU bodies compute anyway, without the op-dispatch and argument-checking overhead.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["best_match_reference", "merge_reference", "best_match", "merge", "merge_source", "take_rows",
           "MERGE_MODES"]

MERGE_MODES = ("mean", "weighted")
_NORM_EPS = 1e-6


def best_match_reference(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """``(max cosine similarity [B, Ns] float32, argmax destination [B, Ns] int64)``.

    Inputs need not be normalised; matching is a discrete decision, so no gradient flows. Only the
    destination norms enter the argmax (a source's norm is a positive per-row factor), so the
    sources are never normalised as a whole: one bmm of raw sources against the destinations, a
    per-column rescale of the small ``[B, Ns, Nd]`` product, max, then the winners' cosine.
    """
    with torch.no_grad():
        b, ns = src.shape[0], src.shape[1]
        if ns == 0:
            empty = src.new_zeros(b, 0, dtype=torch.float32)
            return empty, empty.long()
        s = src.float()
        d = dst.float()
        inv_d = d.norm(dim=-1).clamp_min(_NORM_EPS).reciprocal_()          # [B, Nd]
        sim = torch.bmm(s, d.transpose(1, 2)).mul_(inv_d.unsqueeze(1))   # [B, Ns, Nd], src not normalised
        best, idx = sim.max(dim=-1)
        best = best.div_(s.norm(dim=-1).clamp_min(_NORM_EPS))
    return best, idx


def take_rows(t: Tensor, index: Tensor) -> Tensor:
    """``t[b, index[b, j]]`` for a [B, N, C] tensor and [B, K] indices, as [B, K, C].

    Same result as ``t.gather(1, index[..., None].expand(-1, -1, C))``, but one ``index_select`` of
    whole rows on the flattened batch, which is several times faster on CPU than an element-wise
    gather with a broadcast index.
    """
    b, n, c = t.shape
    k = index.shape[1]
    flat = index + torch.arange(0, b * n, n, device=index.device, dtype=index.dtype).unsqueeze(1)
    return t.reshape(b * n, c).index_select(0, flat.reshape(-1)).view(b, k, c)


def merge_reference(x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor,
                    mode: str) -> tuple[Tensor, Tensor]:
    """Fold ``src`` tokens into destinations ``x[idx]``; returns ``(x', size')`` (differentiable).

    ``mean``: ``x'_d = (x_d + sum_s x_s) / (1 + #s)``; ``weighted``:
    ``x'_d = (size_d x_d + sum_s size_s x_s) / (size_d + sum_s size_s)``. Both: ``size'_d = size_d + sum_s size_s``.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    c = x.shape[-1]
    index = idx.unsqueeze(-1)
    src_f, src_size_f = src.float(), src_size.float()
    new_size = size.float().scatter_add(1, index, src_size_f)
    if mode == "mean":
        num = x.float().scatter_add(1, index.expand(-1, -1, c), src_f)
        den = torch.ones_like(size, dtype=torch.float32).scatter_add_(1, index, torch.ones_like(src_size_f))
    else:
        num = (x.float() * size.float()).scatter_add(1, index.expand(-1, -1, c), src_f * src_size_f)
        den = new_size
    return num.div_(den).to(x.dtype), new_size.to(size.dtype)


def merge_source(source: Tensor, src_source: Tensor, idx: Tensor) -> Tensor:
    """Source tracing: a destination covers the union (``amax``) of its own and its sources' patches."""
    return source.scatter_reduce(1, idx.unsqueeze(-1).expand(-1, -1, source.shape[-1]), src_source,
                                 reduce="amax", include_self=True)


@functools.lru_cache(maxsize=1)
def _kernels() -> ModuleType | None:
    try:
        from token_rate import kernels
    except Exception:  # kernels are optional; any import problem means "use the reference"
        return None
    if not (hasattr(kernels, "best_match") and hasattr(kernels, "merge")):
        return None
    return kernels


def best_match(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Dispatching :func:`best_match_reference` (fused Triton kernel for CUDA tensors when available)."""
    k = _kernels() if src.is_cuda else None
    if k is not None:
        return k.best_match(src, dst)  # type: ignore[no-any-return]
    return best_match_reference(src, dst)


def merge(x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor,
          mode: str) -> tuple[Tensor, Tensor]:
    """Dispatching :func:`merge_reference` (fused Triton kernel for CUDA tensors when available)."""
    k = _kernels() if x.is_cuda else None
    if k is not None:
        return k.merge(x, size, src, src_size, idx, mode)  # type: ignore[no-any-return]
    return merge_reference(x, size, src, src_size, idx, mode)
