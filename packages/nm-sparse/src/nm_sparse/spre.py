"""SpRe (Zhang et al., arXiv 2306.05612): spatial re-parameterization for N:M sparsity.

Each k x k conv (k > 1) followed by a BatchNorm becomes two parallel branches:

* main: ``BN_a(conv(x, W_a ⊙ M_a))`` with ``M_a`` the N:M mask (SR-STE, recomputed each forward);
* extra: ``BN_b(conv(x, W_b ⊙ M_a ⊙ S))`` with its own weights and BatchNorm, no STE;
  ``S`` is a k x k spatial mask recomputed once per training step from the main branch's
  dense weights: unstructured layer-wise magnitude pruning at sparsity ``p = 1 - n/m``, and
  ``S(h, w) = 1`` where that position's sparsity is below ``p``.

The block output is the sum. At deployment both BatchNorms fold into their kernels
(per-output-channel scaling) and the kernels add up; the extra kernel's support lies inside
``M_a``, so the single deployed conv keeps the main N:M pattern.

Unlike the official code, which pairs main and extra convs by registration order, the
wrapper holds the conv *and* the BatchNorm that consumes its output (found by
:func:`nm_sparse.find_conv_bn_pairs`, or ``SpReConfig.bn_map``); the BatchNorm's place in the parent becomes
``nn.Identity``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from nm_sparse.config import SpReConfig
from nm_sparse.layers import NMLayer, apply_layer, module_weight, srste
from nm_sparse.masks import spatial_mask_reference, weight_nm_mask
from nm_sparse.pattern import NMPattern
from nm_sparse.registry import REGISTRY
from nm_sparse.sparsify import SparsifyReport, group_axis_reason, wrap_layers
from nm_sparse.srste import SRSTELayer
from slimkit.errors import BadInputError
from slimkit.surgery import bn_scale_shift, find_conv_bn_pairs


class SpReConv(NMLayer):
    """Main SR-STE conv + its BatchNorm, plus the spatially masked extra branch."""

    method = "spre"
    pairs_with_bn = False  # it owns its BatchNorm: never pair it again (deploy's BN folding)

    def __init__(
        self,
        base_layer: nn.Conv2d,
        base_bn: nn.BatchNorm2d,
        pattern: NMPattern,
        layout: str = "cin",
        decay: float = 2e-4,
        branch_init: str = "kaiming",
        branch_gamma: float = 1.0,
        refresh: str = "step",
    ) -> None:
        super().__init__(base_layer, pattern, layout)
        if not isinstance(base_layer, nn.Conv2d):
            raise BadInputError("SpRe wraps Conv2d layers")
        if not isinstance(base_bn, nn.BatchNorm2d) or base_bn.num_features != base_layer.out_channels:
            raise BadInputError("SpRe needs a BatchNorm2d over the conv's output channels")
        if not base_bn.track_running_stats:
            raise BadInputError("SpRe needs a BatchNorm that tracks running statistics (to fold it)")
        self.base_bn = base_bn
        self.bn_name = ""  # where the BatchNorm lived in the model (set by sparsify, used by unwrap)
        self.decay = float(decay)
        self.refresh_mode = refresh
        weight = self.dense_weight
        branch = copy.deepcopy(base_layer)
        branch.bias = None
        with torch.no_grad():
            if branch_init == "kaiming":
                nn.init.kaiming_normal_(branch.weight, mode="fan_out", nonlinearity="relu")
            elif branch_init == "zeros":
                branch.weight.zero_()
        self.branch = branch
        self.branch_bn = nn.BatchNorm2d(
            base_layer.out_channels,
            eps=base_bn.eps,
            momentum=base_bn.momentum,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            self.branch_bn.weight.fill_(branch_gamma)
        self.register_buffer("spatial_mask", torch.ones(weight.shape[2:], dtype=weight.dtype, device=weight.device))
        self.refresh_spatial_mask()

    @torch.no_grad()
    def refresh_spatial_mask(self) -> None:
        """Recompute ``S`` from the main branch's dense weights."""
        self.current_spatial_mask.copy_(spatial_mask_reference(self.dense_weight, self.n, self.m))

    @property
    def current_spatial_mask(self) -> Tensor:
        mask = self.spatial_mask
        assert isinstance(mask, Tensor)
        return mask

    def displaced(self) -> dict[str, nn.Module]:
        return {self.bn_name: self.base_bn} if self.bn_name else {}

    def on_step(self) -> None:
        self.refresh_spatial_mask()

    def refresh(self) -> None:
        self.refresh_spatial_mask()

    def forward_mask(self) -> Tensor:
        return weight_nm_mask(self.dense_weight, self.n, self.m, self.layout)

    def branch_mask(self, main_mask: Tensor | None = None) -> Tensor:
        """``M_a ⊙ S`` broadcast to the weight shape (float)."""
        main = self.forward_mask() if main_mask is None else main_mask
        return main.to(self.dense_weight.dtype) * self.current_spatial_mask

    def forward(self, x: Tensor) -> Tensor:
        if self.refresh_mode == "forward" and self.training and torch.is_grad_enabled():
            self.refresh_spatial_mask()
        mask = self.forward_mask()
        main = apply_layer(self.base_layer, x, srste(self.dense_weight, mask, self.backward_decay), self.dense_bias)
        extra = self.branch._conv_forward(x, module_weight(self.branch) * self.branch_mask(mask), None)
        return self.base_bn(main) + self.branch_bn(extra)

    @torch.no_grad()
    def effective_weight(self) -> Tensor:
        """Deployed kernel: both BatchNorms folded, branches summed (eval-mode equivalent)."""
        mask = self.forward_mask()
        scale_a, _ = bn_scale_shift(self.base_bn)
        scale_b, _ = bn_scale_shift(self.branch_bn)
        main = self.dense_weight * mask * scale_a.reshape(-1, 1, 1, 1)
        extra = module_weight(self.branch) * self.branch_mask(mask) * scale_b.reshape(-1, 1, 1, 1)
        return main + extra

    @torch.no_grad()
    def effective_bias(self) -> Tensor:
        scale_a, shift_a = bn_scale_shift(self.base_bn)
        _, shift_b = bn_scale_shift(self.branch_bn)
        bias = shift_a + shift_b
        if self.dense_bias is not None:
            bias = bias + scale_a * self.dense_bias
        return bias.detach().clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, decay={self.decay:g}"


# --------------------------------------------------------------------------- handler


def _wants_spre(module: nn.Module, config: SpReConfig) -> bool:
    return isinstance(module, nn.Conv2d) and all(k >= config.min_kernel for k in module.kernel_size)


def _resolve_bns(
    chosen: list[tuple[str, nn.Module]], pairs: dict[str, str], modules: dict[str, nn.Module], config: SpReConfig
) -> dict[str, tuple[str, nn.BatchNorm2d]]:
    """BatchNorm (name, module) for each SpRe conv; BadInputError for a bad pairing (nothing changed yet)."""
    out: dict[str, tuple[str, nn.BatchNorm2d]] = {}
    used: set[str] = set()
    for name, module in chosen:
        bn_name = pairs.get(name)
        if not _wants_spre(module, config) or bn_name is None:
            continue
        bn = modules.get(bn_name)
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != module_weight(module).shape[0]:
            raise BadInputError(f"{bn_name!r} (paired with {name}) is not a BatchNorm2d over its output channels")
        if not bn.track_running_stats:
            raise BadInputError(f"{bn_name!r} does not track running statistics, so SpRe cannot fold it")
        if bn_name in used:
            raise BadInputError(f"BatchNorm {bn_name!r} is paired with more than one conv")
        used.add(bn_name)
        out[name] = (bn_name, bn)
    return out


@REGISTRY.register(SpReConfig)
def apply_spre(model: nn.Module, config: SpReConfig) -> SparsifyReport:
    """SpRe on every k x k conv that feeds a BatchNorm, SR-STE on every other eligible layer."""
    bns: dict[str, tuple[str, nn.BatchNorm2d]] = {}

    def prepare(chosen: list[tuple[str, nn.Module]], report: SparsifyReport) -> None:
        if config.bn_map is not None:
            pairs, report.bn_pairing = dict(config.bn_map), "user"
        else:
            pairs, report.bn_pairing = find_conv_bn_pairs(model, config.pairing)
        bns.update(_resolve_bns(chosen, pairs, dict(model.named_modules()), config))

    def build(name: str, module: nn.Module, index: int) -> tuple[NMLayer, str]:
        if name in bns:
            assert isinstance(module, nn.Conv2d)
            bn_name, bn = bns[name]
            layer = SpReConv(
                module,
                bn,
                config.nm,
                config.layout,
                config.decay,
                branch_init=config.branch_init,
                branch_gamma=config.branch_gamma,
                refresh=config.refresh,
            )
            layer.bn_name = bn_name
            return layer, ""
        note = "no BatchNorm consumes this conv: SR-STE only" if _wants_spre(module, config) else ""
        return SRSTELayer(module, config.nm, config.layout, config.decay), note

    return wrap_layers(model, config, build, group_axis_reason, prepare)
