"""SR-STE (Zhou et al., ICLR 2021): dynamic top-N mask with the sparse-refined STE.

Forward uses ``W ⊙ E`` with ``E`` the top-``n`` ``|w|`` of each group of ``m``, recomputed
from the dense latent weights at every forward pass. Backward hands the dense gradient to
every weight and adds ``λ (1-E) ⊙ W`` on the pruned ones (λ = 2e-4 in the official code), so
pruned weights drift to zero and masks flip less often.
"""

from __future__ import annotations

from torch import Tensor, nn

from nm_sparse.config import SRSTEConfig
from nm_sparse.layers import NMLayer, apply_layer, srste
from nm_sparse.masks import weight_nm_mask
from nm_sparse.pattern import NMPattern
from nm_sparse.registry import REGISTRY
from nm_sparse.sparsify import SparsifyReport, group_axis_reason, wrap_layers


class SRSTELayer(NMLayer):
    """Linear/Conv wrapper trained with SR-STE."""

    method = "srste"

    def __init__(self, base_layer: nn.Module, pattern: NMPattern, layout: str = "cin", decay: float = 2e-4) -> None:
        super().__init__(base_layer, pattern, layout)
        self.decay = float(decay)

    def forward_mask(self) -> Tensor:
        return weight_nm_mask(self.dense_weight, self.n, self.m, self.layout)

    def forward(self, x: Tensor) -> Tensor:
        weight = srste(self.dense_weight, self.forward_mask(), self.backward_decay)
        return apply_layer(self.base_layer, x, weight, self.dense_bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, decay={self.decay:g}"


@REGISTRY.register(SRSTEConfig)
def apply_srste(model: nn.Module, config: SRSTEConfig) -> SparsifyReport:
    """Wrap every eligible layer in an :class:`SRSTELayer`."""

    def build(name: str, module: nn.Module, index: int) -> tuple[NMLayer, str]:
        return SRSTELayer(module, config.nm, config.layout, config.decay), ""

    return wrap_layers(model, config, build, group_axis_reason)
