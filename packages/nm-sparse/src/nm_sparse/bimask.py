"""Bi-Mask (Zhang et al., ICML 2023): separate forward and backward N:M masks.

* forward mask ``M_f``: top-``n`` ``|W|`` per group of ``m`` along the input (reduction)
  dimension, recomputed every forward;
* backward mask ``M_b``: N:M down the output channels (the reduction dimension of the
  input-gradient GEMM) after a row permutation ``π``, taken on ``W ⊙ M_f`` and intersected
  with ``M_f`` (so ``M_b ⊆ M_f``);
* gradients: ``dX`` uses ``W ⊙ M_b`` (sparse GEMM), ``dW`` is the dense ``dYᵀX`` plus
  SR-STE's ``λ (1-M_f) ⊙ W``;
* ``π`` = best of ``K`` i.i.d. random permutations, re-searched every ``T`` optimizer steps
  (defaults K=10, T=100 as in the official code; its README runs use K=100).

Conv gradients use ``torch.nn.grad.conv{1,2}d_input/weight`` rather than the official
``nn.Unfold`` formulation (same numbers, far less memory).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.grad as nn_grad
from torch import Tensor, nn

from nm_sparse.config import BiMaskConfig, SparsityConfig
from nm_sparse.layers import NMLayer, apply_layer
from nm_sparse.masks import (
    backward_mask,
    from_gemm_matrix,
    nm_mask,
    permutation_scores,
    to_gemm_matrix,
    weight_nm_mask,
)
from nm_sparse.pattern import NMPattern
from nm_sparse.registry import REGISTRY
from nm_sparse.sparsify import SparsifyReport, group_axis_reason, output_channels_reason, wrap_layers
from slimkit.errors import BadInputError


def _conv_dims(weight: Tensor) -> int:
    return weight.dim() - 2


class BiMaskFunction(torch.autograd.Function):
    """Linear or conv with forward mask ``M_f`` and backward (input-gradient) mask ``M_b``.

    ``conv`` is None for Linear, else ``(stride, padding, dilation, groups)`` with explicit
    integer padding (padding modes other than zeros are applied to ``x`` beforehand).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        mask_f: Tensor,
        mask_b: Tensor,
        decay: float,
        conv: tuple[Any, ...] | None,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, mask_f, mask_b)
        ctx.decay = decay
        ctx.conv = conv
        ctx.has_bias = bias is not None
        w_f = weight * mask_f
        if conv is None:
            return F.linear(x, w_f, bias)
        stride, padding, dilation, groups = conv
        op = F.conv1d if _conv_dims(weight) == 1 else F.conv2d
        return op(x, w_f, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = grads
        x, weight, mask_f, mask_b = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        # under autocast the output (and so ``grad``) may be half precision: compute in its dtype
        dtype = grad.dtype
        w_b = (weight * mask_b).to(dtype)
        xc = x.to(dtype)
        if ctx.conv is None:
            out_features = weight.shape[0]
            if ctx.needs_input_grad[0]:
                grad_x = grad @ w_b
            if ctx.needs_input_grad[1]:
                grad_w = grad.reshape(-1, out_features).t() @ xc.reshape(-1, x.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.reshape(-1, out_features).sum(0)
        else:
            stride, padding, dilation, groups = ctx.conv
            one_d = _conv_dims(weight) == 1
            conv_input = nn_grad.conv1d_input if one_d else nn_grad.conv2d_input
            conv_weight = nn_grad.conv1d_weight if one_d else nn_grad.conv2d_weight
            if ctx.needs_input_grad[0]:
                grad_x = conv_input(x.shape, w_b, grad, stride, padding, dilation, groups)
            if ctx.needs_input_grad[1]:
                grad_w = conv_weight(xc, weight.shape, grad, stride, padding, dilation, groups)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum(dim=[d for d in range(grad.dim()) if d != 1])
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype) + ctx.decay * (~mask_f).to(weight.dtype) * weight
        if grad_b is not None:
            grad_b = grad_b.to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def _explicit_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    """Integer padding for ``'valid'``/``'same'`` strings (symmetric 'same' only)."""
    padding = conv.padding
    if not isinstance(padding, str):
        return tuple(int(p) for p in padding)
    if padding == "valid":
        return (0,) * len(conv.kernel_size)
    out = []
    for k, d in zip(conv.kernel_size, conv.dilation):
        total = d * (k - 1)
        if total % 2:
            raise BadInputError("Bi-Mask supports padding='same' only with odd effective kernel sizes")
        out.append(total // 2)
    return tuple(out)


class BiMaskLayer(NMLayer):
    """Linear/Conv wrapper with Bi-Mask's bi-directional masks and permutation search."""

    method = "bimask"

    def __init__(
        self,
        base_layer: nn.Module,
        pattern: NMPattern,
        layout: str = "cin",
        decay: float = 2e-4,
        candidates: int = 10,
        interval: int = 100,
        scorer: str = "kept",
        keep_current: bool = False,
        refresh: str = "step",
        seed: int = 0,
    ) -> None:
        super().__init__(base_layer, pattern, layout)
        out_channels = self.dense_weight.shape[0]
        if out_channels % self.m:
            raise BadInputError(f"Bi-Mask needs output channels divisible by m={self.m}, got {out_channels}")
        if isinstance(base_layer, (nn.Conv1d, nn.Conv2d)) and base_layer.groups != 1:
            raise BadInputError("Bi-Mask does not support grouped convolutions")
        self.decay = float(decay)
        self.candidates = int(candidates)
        self.interval = int(interval)
        self.scorer = scorer
        self.keep_current = bool(keep_current)
        self.refresh_mode = refresh
        device = self.dense_weight.device
        self.register_buffer("perm", torch.arange(out_channels, device=device))
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("perm_score", torch.zeros((), dtype=torch.float32, device=device))
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._replay_searches = 0  # searches to replay on the generator before the next one (after a load)
        self.search_permutation()

    # -- masks ---------------------------------------------------------------------------

    def _masks_2d(self) -> tuple[Tensor, Tensor, Tensor]:
        mat = to_gemm_matrix(self.dense_weight.detach(), self.layout)
        mask_f = nm_mask(mat, self.n, self.m)
        return mat, mask_f, backward_mask(mat, mask_f, self.current_perm, self.n, self.m)

    @property
    def steps_done(self) -> int:
        count = self.step_count
        assert isinstance(count, Tensor)
        return int(count)

    @property
    def current_perm(self) -> Tensor:
        perm = self.perm
        assert isinstance(perm, Tensor)
        return perm

    def forward_mask(self) -> Tensor:
        return weight_nm_mask(self.dense_weight, self.n, self.m, self.layout)

    def backward_mask(self) -> Tensor:
        """``M_b`` in the weight's shape (subset of the forward mask)."""
        _, _, mask_b = self._masks_2d()
        return from_gemm_matrix(mask_b, self.dense_weight.shape, self.layout)

    # -- permutation search --------------------------------------------------------------

    @torch.no_grad()
    def score(self, perms: Tensor) -> Tensor:
        """Scores of candidate row orders ``[K, O]`` for the current weights."""
        mat = to_gemm_matrix(self.dense_weight.detach(), self.layout)
        masked = mat.abs() * nm_mask(mat, self.n, self.m)
        return permutation_scores(masked, perms.to(mat.device), self.n, self.m, self.scorer)

    def _searches_done(self) -> int:
        """Searches the schedule has run at the current ``step_count`` (the one at construction included)."""
        steps = self.steps_done
        if self.refresh_mode == "step":  # a search after the count reaches T, 2T, ...
            return 1 + steps // self.interval
        return 1 + max(steps - 1, 0) // self.interval  # before the forward that sees T, 2T, ...

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        """Loading a checkpoint (resume) also brings the candidate generator to where the run left it.

        The generator is not part of the state dict; it is re-seeded and advanced past the draws of
        every search the loaded step count implies, lazily at the next search, so a resumed run
        draws the same candidates as an uninterrupted one.
        """
        super()._load_from_state_dict(*args, **kwargs)
        self._replay_searches = self._searches_done()

    @torch.no_grad()
    def search_permutation(self) -> float:
        """Keep the best of ``candidates`` random row permutations; returns its score."""
        out_channels = self.dense_weight.shape[0]
        if self._replay_searches:
            self._generator.manual_seed(self.seed)
            for _ in range(self._replay_searches * self.candidates):
                torch.randperm(out_channels, generator=self._generator)
            self._replay_searches = 0
        perms = [torch.randperm(out_channels, generator=self._generator) for _ in range(self.candidates)]
        cand = torch.stack(perms).to(self.current_perm.device)
        if self.keep_current:
            cand = torch.cat([self.current_perm[None], cand])
        scores = self.score(cand)
        best = int(torch.argmax(scores))
        self.current_perm.copy_(cand[best])
        self.perm_score.fill_(float(scores[best]))
        return float(scores[best])

    def on_step(self) -> None:
        """Count one optimizer step; re-search every ``interval`` steps (official ``iter % T``)."""
        if self.refresh_mode != "step":
            return
        self.step_count += 1
        if self.steps_done % self.interval == 0:
            self.search_permutation()

    # -- forward -------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        if self.refresh_mode == "forward" and self.training and torch.is_grad_enabled():
            if self.steps_done > 0 and self.steps_done % self.interval == 0:
                self.search_permutation()
            self.step_count += 1
        weight = self.dense_weight
        layer = self.base_layer
        needs_grad = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
        if not needs_grad:  # inference: only the forward mask matters
            return apply_layer(layer, x, weight * self.forward_mask(), self.dense_bias)
        _, mask_f, mask_b = self._masks_2d()
        mask_f = from_gemm_matrix(mask_f, weight.shape, self.layout)
        mask_b = from_gemm_matrix(mask_b, weight.shape, self.layout)
        conv: tuple[Any, ...] | None = None
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            padding = _explicit_padding(layer)
            if layer.padding_mode != "zeros":
                pads = [p for p in reversed(padding) for _ in range(2)]
                x = F.pad(x, pads, mode=layer.padding_mode)
                padding = (0,) * len(padding)
            conv = (layer.stride, padding, layer.dilation, layer.groups)
        out = BiMaskFunction.apply(x, weight, self.dense_bias, mask_f, mask_b, self.backward_decay, conv)
        assert isinstance(out, Tensor)
        return out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, decay={self.decay:g}, K={self.candidates}, T={self.interval}, "
            f"scorer={self.scorer}"
        )


def _bimask_reason(module: nn.Module, config: SparsityConfig) -> str | None:
    return group_axis_reason(module, config) or output_channels_reason(module, config)


@REGISTRY.register(BiMaskConfig)
def apply_bimask(model: nn.Module, config: BiMaskConfig) -> SparsifyReport:
    """Wrap every eligible layer in a :class:`BiMaskLayer`; layer ``i`` seeds its search with ``seed + i``."""

    def build(name: str, module: nn.Module, index: int) -> tuple[NMLayer, str]:
        layer = BiMaskLayer(
            module,
            config.nm,
            config.layout,
            config.decay,
            candidates=config.candidates,
            interval=config.interval,
            scorer=config.scorer,
            keep_current=config.keep_current,
            refresh=config.refresh,
            seed=config.seed + index,
        )
        return layer, ""

    return wrap_layers(model, config, build, _bimask_reason)
