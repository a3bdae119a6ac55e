"""Pure-PyTorch references for DiffRate's matching and merging (the CPU path and the tests' oracle).

* :func:`best_match_reference`: for every source token, the cosine similarity to its most similar
  destination token and that destination's index (DiffRate's one-sided nearest neighbour; ToMe
  uses the same step on its A/B split).
* :func:`merge_reference`: fold every source token into its destination. ``mode="mean"`` is the
  official DiffRate merge, an *unweighted* mean of a destination and all its sources
  (``scatter_reduce(..., "mean", include_self=True)``); ``mode="weighted"`` is ToMe's
  size-weighted average. Sizes always add; DiffRate's similarity scaling of source sizes is
  applied by the caller, on ``src_size``.
* :func:`merge_source`, :func:`take_rows`: source tracing and fast row gathers.
* :func:`check_match_shapes`, :func:`check_merge_args`: the argument checks the custom ops and the
  Triton launchers share.

This module imports nothing from token_rate: the Triton kernels (:mod:`token_rate.kernels`) and
the custom ops (:mod:`token_rate.ops`) sit above it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["best_match_reference", "merge_reference", "merge_source", "take_rows", "merge_weights",
           "check_match_shapes", "check_merge_args", "MERGE_MODES", "NORM_EPS"]

MERGE_MODES = ("mean", "weighted")
NORM_EPS = 1e-6
_NORM_EPS = NORM_EPS  # 0.1 name


def best_match_reference(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """``(max cosine similarity [B, Ns] float32, argmax destination [B, Ns] int64)``.

    Inputs need not be normalised; matching is a discrete decision, so no gradient flows. Only the
    destination norms enter the argmax (a source's norm is a positive per-row factor), so the
    sources are never normalised as a whole: one bmm of raw sources against the destinations, a
    per-column rescale of the small ``[B, Ns, Nd]`` product, max, then the winners' cosine.
    Ties go to the lowest destination index (``torch.max`` semantics); an all-zero token gets a
    zero similarity instead of NaN.
    """
    with torch.no_grad():
        b, ns = src.shape[0], src.shape[1]
        if ns == 0:
            empty = src.new_zeros(b, 0, dtype=torch.float32)
            return empty, empty.long()
        s = src.float()
        d = dst.float()
        inv_d = d.norm(dim=-1).clamp_min(NORM_EPS).reciprocal_()          # [B, Nd]
        sim = torch.bmm(s, d.transpose(1, 2)).mul_(inv_d.unsqueeze(1))   # [B, Ns, Nd], src not normalised
        best, idx = sim.max(dim=-1)
        best = best.div_(s.norm(dim=-1).clamp_min(NORM_EPS))
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


def merge_weights(size: Tensor, src_size: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Per-token averaging weights: 1 for the unweighted mean, the token size for ToMe's average."""
    if mode == "mean":
        return torch.ones_like(size, dtype=torch.float32), torch.ones_like(src_size, dtype=torch.float32)
    return size.float(), src_size.float()


def merge_source(source: Tensor, src_source: Tensor, idx: Tensor) -> Tensor:
    """Source tracing: a destination covers the union (``amax``) of its own and its sources' patches."""
    return source.scatter_reduce(1, idx.unsqueeze(-1).expand(-1, -1, source.shape[-1]), src_source,
                                 reduce="amax", include_self=True)


def check_match_shapes(src: Tensor, dst: Tensor) -> None:
    """ValueError unless ``src`` [B, Ns, C] and ``dst`` [B, Nd, C] can be matched."""
    if src.dim() != 3 or dst.dim() != 3:
        raise ValueError(f"best_match expects [B, N, C] tensors, got {tuple(src.shape)} and {tuple(dst.shape)}")
    if src.shape[0] != dst.shape[0] or src.shape[2] != dst.shape[2]:
        raise ValueError(f"best_match: batch/channel mismatch {tuple(src.shape)} vs {tuple(dst.shape)}")
    if dst.shape[1] == 0 and src.shape[1] > 0:
        raise ValueError("best_match: no destination tokens to match against")


def check_merge_args(x: Tensor, size: Tensor, src: Tensor, src_size: Tensor, idx: Tensor, mode: str) -> None:
    """ValueError for an unknown mode or inconsistent merge shapes."""
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    b, nd, c = x.shape
    ns = src.shape[1]
    if size.shape != (b, nd, 1) or src.shape != (b, ns, c) or src_size.shape != (b, ns, 1) or idx.shape != (b, ns):
        raise ValueError(
            "merge: inconsistent shapes "
            + " ".join(
                f"{n}={tuple(t.shape)}"
                for n, t in zip(("x", "size", "src", "src_size", "idx"), (x, size, src, src_size, idx))
            )
        )
