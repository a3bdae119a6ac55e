"""Comparison baselines: fixed one-shot masks (ASP, unstructured) and transposable masks.

* ``asp``: NVIDIA ASP's recipe. The N:M magnitude mask is computed once at wrap time, the
  pruned weights are zeroed, and the mask stays fixed (gradients of pruned weights are zero
  because the forward uses ``W ⊙ mask``). :meth:`FixedMaskLayer.recompute_mask` is the
  "non-standard" re-pruning ASP allows.
* ``unstructured``: the same with a layer-wise magnitude mask at sparsity ``1 - n/m``
  (no group structure), the usual accuracy upper reference.
* ``dense``: wraps nothing; the report says what a sparse method would take;
* ``transposable``: Hubara et al.'s N:M transposable mask, both ``W`` and ``Wᵀ`` N:M, found
  per ``m x m`` block by exhaustive search over the valid blocks (``m <= 4``), recomputed
  every forward and trained with the SR-STE estimator, as the dynamic variant Bi-Mask
  compares against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nm_sparse.config import ASPConfig, DenseConfig, SparsityConfig, TransposableConfig, UnstructuredConfig
from nm_sparse.layers import NMLayer, apply_layer, srste
from nm_sparse.masks import from_gemm_matrix, transposable_mask_reference, unstructured_mask, weight_nm_mask
from nm_sparse.pattern import NMPattern
from nm_sparse.registry import REGISTRY
from nm_sparse.sparsify import SparsifyReport, group_axis_reason, output_channels_reason, select_layers, wrap_layers


class FixedMaskLayer(NMLayer):
    """A mask computed once (buffer ``mask``); pruned weights are zeroed in place."""

    method = "fixed"

    def __init__(self, base_layer: nn.Module, pattern: NMPattern, layout: str = "cin") -> None:
        super().__init__(base_layer, pattern, layout)
        self.register_buffer("mask", torch.ones_like(self.dense_weight, dtype=torch.bool))
        self.recompute_mask()

    def compute_mask(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def recompute_mask(self) -> None:
        """Prune again from the current weights (and zero the newly pruned ones)."""
        self.mask.copy_(self.compute_mask())
        self.dense_weight.mul_(self.mask)

    def forward_mask(self) -> Tensor:
        mask = self.mask
        assert isinstance(mask, Tensor)
        return mask

    def forward(self, x: Tensor) -> Tensor:
        return apply_layer(self.base_layer, x, self.dense_weight * self.forward_mask(), self.dense_bias)


class ASPLayer(FixedMaskLayer):
    """One-shot N:M magnitude pruning with a fixed mask (NVIDIA ASP)."""

    method = "asp"

    def compute_mask(self) -> Tensor:
        return weight_nm_mask(self.dense_weight, self.n, self.m, self.layout)


class UnstructuredLayer(FixedMaskLayer):
    """One-shot layer-wise magnitude pruning at the same sparsity, no structure."""

    method = "unstructured"

    def compute_mask(self) -> Tensor:
        return unstructured_mask(self.dense_weight, self.n / self.m)


class TransposableLayer(NMLayer):
    """Dynamic transposable N:M mask (N:M along inputs and outputs) with SR-STE updates."""

    method = "transposable"

    def __init__(self, base_layer: nn.Module, pattern: NMPattern, layout: str = "cin", decay: float = 2e-4) -> None:
        super().__init__(base_layer, pattern, layout)
        self.decay = float(decay)

    def forward_mask(self) -> Tensor:
        weight = self.dense_weight
        mat = transposable_mask_reference(self.gemm_matrix(weight.detach()), self.n, self.m)
        return from_gemm_matrix(mat, weight.shape, self.layout)

    def forward(self, x: Tensor) -> Tensor:
        weight = srste(self.dense_weight, self.forward_mask(), self.decay)
        return apply_layer(self.base_layer, x, weight, self.dense_bias)


# --------------------------------------------------------------------------- handlers


@REGISTRY.register(DenseConfig)
def apply_dense(model: nn.Module, config: DenseConfig) -> SparsifyReport:
    """Change nothing; report which layers a sparse method would consider."""
    return select_layers(model, config, wraps=False)[1]


@REGISTRY.register(ASPConfig)
def apply_asp(model: nn.Module, config: ASPConfig) -> SparsifyReport:
    """One-shot N:M mask per eligible layer (pruned weights zeroed now, mask fixed)."""

    def build(name: str, module: nn.Module, index: int) -> tuple[NMLayer, str]:
        return ASPLayer(module, config.nm, config.layout), ""

    return wrap_layers(model, config, build, group_axis_reason)


@REGISTRY.register(UnstructuredConfig)
def apply_unstructured(model: nn.Module, config: UnstructuredConfig) -> SparsifyReport:
    """One-shot layer-wise magnitude mask on every selected layer (any shape)."""

    def build(name: str, module: nn.Module, index: int) -> tuple[NMLayer, str]:
        return UnstructuredLayer(module, config.nm, config.layout), ""

    return wrap_layers(model, config, build)


def _transposable_reason(module: nn.Module, config: SparsityConfig) -> str | None:
    reason = group_axis_reason(module, config) or output_channels_reason(module, config)
    if reason is None and config.m > 4:
        reason = f"transposable masks need m <= 4, got m={config.m}"
    return reason


@REGISTRY.register(TransposableConfig)
def apply_transposable(model: nn.Module, config: TransposableConfig) -> SparsifyReport:
    """Dynamic transposable masks (m <= 4) with SR-STE updates."""

    def build(name: str, module: nn.Module, index: int) -> tuple[NMLayer, str]:
        return TransposableLayer(module, config.nm, config.layout, config.decay), ""

    return wrap_layers(model, config, build, _transposable_reason)
