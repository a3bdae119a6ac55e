"""FLOPs counted the SparseKD way, so student / teacher ratios compare with SparseKD's and RDD's tables.

A sparse convolution costs ``active pairs x C_in x C_out`` multiply-adds, the pairs being the valid
(input site, output site, kernel offset) triples spconv built for it (``indice_pair_num``); a dense 2D
conv costs ``output cells x C_in / groups x k_h x k_w x C_out`` (transposed: per input cell). One
multiply-add counts as one FLOP (SparseKD's thop convention); norms and activations are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn

from slimkit.report import ReportMixin

__all__ = ["FlopCount", "active_pairs", "count_flops", "count_params"]


@dataclass
class FlopCount(ReportMixin):
    """Multiply-adds of one forward: ``sparse`` (3D encoder), ``dense`` (BEV backbone, neck, head), ``total``;
    ``pairs`` the active pairs of every sparse conv, ``layers`` the per-layer rows."""

    sparse: int = 0
    dense: int = 0
    pairs: int = 0
    voxels: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.sparse + self.dense

    def summary(self) -> dict[str, Any]:
        return {"sparse": self.sparse, "dense": self.dense, "total": self.total, "pairs": self.pairs,
                "voxels": self.voxels, "gflops": self.total / 1e9}  # fmt: skip


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _dense_conv_macs(module: nn.Module, inp: Tensor, out: Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return int(inp.numel() // inp.shape[1] * module.in_channels * module.out_channels // module.groups * k)
    assert isinstance(module, nn.Conv2d)
    k = module.kernel_size[0] * module.kernel_size[1]
    return int(out.numel() // out.shape[1] * module.out_channels * module.in_channels // module.groups * k)


def active_pairs(pair_num: Tensor, subm: bool, num_inputs: int) -> int:
    """Valid (input, output, offset) triples of a sparse conv from spconv's per-offset pair counts.

    A submanifold conv's centre offset pairs every site with itself (spconv computes it as one dense
    matmul and stores 0 for it); spconv's CPU rule stores only the offsets before the centre, the
    mirrored ones being the same pairs reversed.
    """
    num = [int(v) for v in pair_num.flatten().tolist()]
    if not subm:
        return sum(num)
    c = len(num) // 2
    before, after = sum(num[:c]), sum(num[c + 1 :])
    return num_inputs + before + (after if after else before)


def count_flops(model: nn.Module, points: Tensor, batch_size: int | None = None) -> FlopCount:
    """Run ``model(points)`` once (eval mode, no grad) and count its convolutions' multiply-adds."""
    result = FlopCount()
    handles = []

    def sparse_hook(name: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], out: Any) -> None:
            data = out.indice_dict.get(module.indice_key) if module.indice_key else None
            if data is None:
                raise RuntimeError(f"sparse conv {name} has no indice_key: its pairs cannot be counted")
            pairs = active_pairs(data.indice_pair_num, bool(module.subm), int(args[0].features.shape[0]))
            macs = pairs * module.in_channels * module.out_channels
            result.pairs += pairs
            result.sparse += macs
            result.layers.append({"name": name, "kind": "sparse", "pairs": pairs, "macs": macs})

        return hook

    def dense_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            macs = _dense_conv_macs(module, args[0], out)
            result.dense += macs
            result.layers.append({"name": name, "kind": "dense", "macs": macs})

        return hook

    for name, module in model.named_modules():
        if isinstance(module, SparseConvolution):
            handles.append(module.register_forward_hook(sparse_hook(name)))
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(module.register_forward_hook(dense_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(points, batch_size)
        result.voxels = int(getattr(out, "num_voxels", 0))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return result
