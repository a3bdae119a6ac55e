"""Per-model state shared by the patched blocks, and the per-block compression step.

A :class:`TokenRateContext` is attached to a patched model (``model._token_rate``) and to each of
its blocks. It holds the method and its settings, and the per-forward token state: sizes,
the search-mode mask, the optional source map and the token counts each block produced. Block 0
resets the state at the start of every forward pass.

The compression step runs between the attention residual and the MLP of every block:

* DiffRate, fixed schedule (inference, or training with a schedule): sort the patch tokens by class
  attention, keep the top ``prune`` (prefix tokens pinned in front), then merge the tokens ranked
  after ``merge`` into their most cosine-similar higher-ranked token (never into prefix tokens).
* DiffRate search (training mode with DDP logits): the same sort, but nothing is removed; the
  pruned and merged-away ranks are zeroed in a differentiable mask that later blocks apply to
  their attention keys. In eval mode a search-patched model slices to the current hard counts.
* ToMe: bipartite soft matching with ``r`` merges (the ``token_merge`` function
  :mod:`token_rate.tome` hands over, so this module does not import the method modules).

Outside search-mode masking, each block checks that the tokens it hands on are the count the reported
GMACs assume (:meth:`Schedule.effective`'s running minimum, ToMe's capped ``r``) and raises otherwise.

Deliberate differences from the official code, none of which changes which tokens survive: a block
that compresses nothing skips the sort (the official code re-sorts every block, which only permutes
tokens), and similarity-scaled sizes are clamped at 0 wherever the training-mode clamp at 1 does
not apply (eval mode, or ``size_clamp_in_train=False``) so that ``log(size)`` stays finite if a best
match ever has negative cosine similarity (the official code does not clamp there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from token_rate.ddp import DiffRateDDP
from token_rate.flops import ViTDims
from token_rate.ops import best_match, merge
from token_rate.reference import merge_source, take_rows

__all__ = ["TokenRateContext", "ModelInfo"]


@dataclass
class ModelInfo:
    """What the adapters learn about a model when patching it."""

    family: str  # "timm" or "hf"
    dims: ViTDims
    num_prefix_tokens: int
    has_class_token: bool
    global_pool: str  # "token", "avg", "avgmax", "max", ""
    pool_include_prefix: bool = False


@dataclass
class TokenState:
    size: Tensor | None = None
    mask: Tensor | None = None
    source: Tensor | None = None
    active: int = 0
    counts: list[int] = field(default_factory=list)


class TokenRateContext:
    """Method settings + per-forward token state for one patched model."""

    def __init__(self, method: str, config: Any, info: ModelInfo, *, prune: list[int] | None = None,
                 merge_counts: list[int] | None = None, r: list[int] | None = None,
                 token_merge: Callable[..., tuple[Tensor, Tensor | None, Tensor | None]] | None = None) -> None:
        self.method = method  # "diffrate" | "search" | "tome"
        self.token_merge = token_merge  # ToMe: bipartite_merge(x, metric, r, num_prefix, size, source)
        self.config = config
        self.info = info
        self.prune = prune
        self.merge = merge_counts
        self.r = r
        self.ddp: DiffRateDDP | None = None
        self.prop_attn: bool = bool(getattr(config, "prop_attn", True))
        mode = getattr(config, "mode", "weighted")
        self.merge_mode = "mean" if mode == "official" else "weighted"
        self.scale_sizes = mode == "official"
        self.size_clamp_in_train = bool(getattr(config, "size_clamp_in_train", False))
        self.trace_source = bool(getattr(config, "trace_source", False))
        self.state = TokenState()
        self.last_counts: list[int] = []
        self.search_override: bool | None = None  # None: search-mode masking follows module.training

    # -- per forward ---------------------------------------------------------------------------
    def reset(self, x: Tensor, training: bool) -> None:
        b, n, _ = x.shape
        self.state = TokenState(active=n)
        if self.searching(training):
            self.state.mask = x.new_ones(b, n, dtype=torch.float32)
            self.state.size = x.new_ones(b, n, 1)
        if self.trace_source:
            self.state.source = torch.eye(n, device=x.device, dtype=x.dtype).expand(b, n, n).contiguous()
        self.last_counts = self.state.counts

    def searching(self, training: bool) -> bool:
        if self.method != "search":
            return False
        return training if self.search_override is None else self.search_override

    def attention_size(self) -> Tensor | None:
        return self.state.size if self.prop_attn else None

    def hard_counts(self, index: int) -> tuple[int, int]:
        if self.method == "search":
            assert self.ddp is not None
            return self.ddp.prune[index].kept_int(), self.ddp.merge[index].kept_int()  # type: ignore[operator]
        assert self.prune is not None and self.merge is not None
        return self.prune[index], self.merge[index]

    def wants(self, index: int, n: int, training: bool) -> str | None:
        """What the attention must also return for this block: "importance", "metric" or nothing."""
        if self.method == "tome":
            assert self.r is not None
            return "metric" if self.r[index] > 0 and n - self.info.num_prefix_tokens >= 2 else None
        if self.searching(training):
            return "importance" if not self._fixed(index) else None
        kp, km = self.hard_counts(index)
        return "importance" if min(kp, km) < n else None

    def _fixed(self, index: int) -> bool:
        return self.ddp is not None and index in self.ddp.fixed_blocks

    # -- the compression step ------------------------------------------------------------------
    def compress(self, x: Tensor, index: int, importance: Tensor | None, metric: Tensor | None,
                 training: bool) -> Tensor:
        st = self.state
        if self.searching(training):
            if importance is not None:
                x = self._search_step(x, index, importance, training)
            st.counts.append(st.active)
            return x
        n_in = x.shape[1]
        if self.method == "tome":
            if metric is not None:
                assert self.r is not None and self.token_merge is not None
                x, st.size, st.source = self.token_merge(x, metric, self.r[index], self.info.num_prefix_tokens,
                                                        st.size, st.source)
        elif importance is not None:
            kp, km = self.hard_counts(index)
            x = self._slice_step(x, importance, kp, km, training)
        self._check_count(index, n_in, x.shape[1])
        st.counts.append(x.shape[1])
        st.active = x.shape[1]
        return x

    def _expected_count(self, index: int, n_in: int) -> int:
        """Tokens block ``index`` hands on when ``n_in`` enter it, by the rule the reported GMACs count:
        the running ``min(current, prune, merge)`` of :meth:`Schedule.effective`, or ToMe's ``r``
        capped at half the unprotected tokens (:func:`token_rate.flops.tome_token_counts`)."""
        if self.method == "tome":
            assert self.r is not None
            return n_in - min(self.r[index], (n_in - self.info.num_prefix_tokens) // 2)
        kp, km = self.hard_counts(index)
        return min(n_in, kp, km)

    def _check_count(self, index: int, n_in: int, n_out: int) -> None:
        """The tokens a block really kept must be what the cost model counts (never diverge silently)."""
        expected = self._expected_count(index, n_in)
        if n_out != expected:
            raise RuntimeError(f"token-rate: block {index} kept {n_out} of {n_in} tokens, but its {self.method} "
                               f"settings (and the reported GMACs) say {expected}")

    def _sort(self, importance: Tensor, keep: int, stable_mask: Tensor | None = None) -> Tensor:
        """Indices (into the full sequence) of the ``keep`` most important patch tokens, best first."""
        p = self.info.num_prefix_tokens
        if stable_mask is not None:
            importance = torch.where(stable_mask[:, p:] > 0.5, importance, torch.full_like(importance, -1.0))
            order = torch.sort(importance, dim=1, descending=True, stable=True).indices[:, :keep]
        else:
            order = importance.topk(keep, dim=1, sorted=True).indices
        return order + p

    def _merge_tail(self, x: Tensor, size: Tensor, km: int, kp: int, training: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Merge ranks [km, kp) into ranks [prefix, km); returns new (dst x, dst size, idx, src sizes)."""
        p = self.info.num_prefix_tokens
        dst, src = x[:, :km], x[:, km:kp]
        sim, idx = best_match(src.detach(), x[:, p:km].detach())
        idx = idx + p
        src_size = size[:, km:kp]
        if self.scale_sizes:
            src_size = src_size * sim.unsqueeze(-1).to(size.dtype)
            if training and self.size_clamp_in_train:
                src_size = src_size.clamp_min(1.0)
            else:  # keeps log(size) finite if a best match has negative similarity (not in the official code)
                src_size = src_size.clamp_min(0.0)
        new_x, new_size = merge(dst, size[:, :km], src, src_size, idx, self.merge_mode)
        return new_x, new_size, idx, src_size

    def _slice_step(self, x: Tensor, importance: Tensor, kp: int, km: int, training: bool) -> Tensor:
        st = self.state
        b, n, _ = x.shape
        p = self.info.num_prefix_tokens
        kp = min(kp, n)
        km = min(km, kp)
        if km >= n:
            return x
        # One row gather of the kept tokens in rank order, prefix tokens pinned in front.
        order = self._sort(importance, kp - p)
        if p > 0:
            prefix = torch.arange(p, device=order.device, dtype=order.dtype).expand(b, p)
            order = torch.cat([prefix, order], dim=1)
        x = take_rows(x, order)
        if st.size is not None:
            st.size = take_rows(st.size, order)
        if st.source is not None:
            st.source = take_rows(st.source, order)
        if km < kp:
            size = st.size if st.size is not None else x.new_ones(b, kp, 1)
            new_x, st.size, idx, _ = self._merge_tail(x, size, km, kp, training)
            if st.source is not None:
                st.source = merge_source(st.source[:, :km], st.source[:, km:kp], idx)
            x = new_x
        return x

    def _search_step(self, x: Tensor, index: int, importance: Tensor, training: bool) -> Tensor:
        """Constant-length DDP step: sort, then mask pruned / merged-away ranks differentiably."""
        st = self.state
        assert self.ddp is not None and st.mask is not None and st.size is not None
        n = x.shape[1]
        p = self.info.num_prefix_tokens
        order = self._sort(importance, n - p, stable_mask=st.mask.detach())

        if p > 0:
            order = torch.cat([torch.arange(p, device=order.device, dtype=order.dtype).expand(x.shape[0], p),
                               order], dim=1)

        def take(t: Tensor) -> Tensor:
            return t.gather(1, order) if t.dim() == 2 else take_rows(t, order)

        x, size, mask = take(x), take(st.size), take(st.mask)
        source = take(st.source) if st.source is not None else None
        active = st.active
        prune_ddp, merge_ddp = self.ddp.prune[index], self.ddp.merge[index]
        kp = min(prune_ddp.kept_int(), active)  # type: ignore[operator]
        if kp < active:
            mask = mask * prune_ddp.token_mask(n, kp, active).unsqueeze(0)  # type: ignore[operator]
        km = min(merge_ddp.kept_int(), kp)  # type: ignore[operator]
        if km < kp:
            new_dst, new_size, idx, src_size = self._merge_tail(x, size, km, kp, training)
            x = torch.cat([new_dst, x[:, km:]], dim=1)
            # The merged-away ranks stay in the sequence (masked) with their similarity-scaled sizes,
            # as in the official code: their log(size) sets how much gradient their mask entries get.
            size = torch.cat([new_size, src_size.to(size.dtype), size[:, kp:]], dim=1)
            if source is not None:
                source = torch.cat([merge_source(source[:, :km], source[:, km:kp], idx), source[:, km:]], dim=1)
            mask = mask * merge_ddp.token_mask(n, km, kp).unsqueeze(0)  # type: ignore[operator]
        st.mask, st.size, st.source, st.active = mask, size, source, km
        return x
