"""Training a MultiQuant network through :func:`slimkit.train.train`: every bit-width on every batch.

MultiQuant's recipe (``train()`` of its code): each iteration visits every bit-width of the list,
largest first. The largest learns from the labels; its logits, detached, teach the others, each of
which learns from ``w * softCE(teacher) + (1 - w) * CE(labels)`` (``w = 0.5``). The gradients of all
bit-widths accumulate and one optimizer step follows.

Here :class:`AllBitsForward` runs the bit-widths inside one ``forward`` call, so the summed loss
has exactly the accumulated gradients and a DistributedDataParallel wrapper (``accelerate launch``)
sees one forward and one backward per step. The quantizer bounds train in their own parameter
group at ``bounds_lr`` (1e-4) without weight decay: with the default AdamW that group *is* the
official separate Adam; the weights use the run's lr and weight decay (official: SGD, momentum 0.9,
which cannot share one optimizer with an Adam group, hence AdamW for both; see the README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arbitrary_quant.multiquant import bound_parameters, current_bits, set_bits
from slimkit.distill import soft_cross_entropy
from slimkit.errors import BadInputError
from slimkit.train import TrainConfig

__all__ = ["AllBitsForward", "multibit_loss", "multiquant_optimizer"]


class AllBitsForward(nn.Module):
    """Runs the wrapped MultiQuant model at every bit-width of ``bit_list``, largest first.

    ``forward(x)`` returns logits ``[len(bit_list), B, classes]`` in that order and leaves the model
    at its largest bit-width.
    """

    def __init__(self, model: nn.Module, bit_list: Iterable[int]) -> None:
        super().__init__()
        self.model = model
        self.bit_list = tuple(sorted(bit_list, reverse=True))
        if not self.bit_list:
            raise BadInputError("AllBitsForward needs at least one bit-width")
        current_bits(model)  # raises if the model is not converted

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for bits in self.bit_list:
            set_bits(self.model, bits)
            outs.append(self.model(x))
        set_bits(self.model, self.bit_list[0])
        return torch.stack(outs)


def multibit_loss(distill_weight: float = 0.5) -> Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]:
    """``loss_fn`` for :func:`slimkit.train.train` on an :class:`AllBitsForward`: in-place distillation.

    Returns the summed loss and the per-bit losses as metrics (``loss_<k>bit``).
    """
    if not 0.0 <= distill_weight <= 1.0:
        raise BadInputError(f"distill_weight must be in [0, 1], got {distill_weight}")

    def loss_fn(model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x)
        inner: Any = getattr(model, "module", model)  # DDP keeps the AllBitsForward in .module
        bit_list = tuple(int(b) for b in inner.bit_list)
        teacher = logits[0].detach()
        total = F.cross_entropy(logits[0], y)
        metrics = {f"loss_{bit_list[0]}bit": float(total.detach())}
        for bits, z in zip(bit_list[1:], logits[1:]):
            loss = distill_weight * soft_cross_entropy(z, teacher) + (1 - distill_weight) * F.cross_entropy(z, y)
            metrics[f"loss_{bits}bit"] = float(loss.detach())
            total = total + loss
        return total, metrics

    return loss_fn


def multiquant_optimizer(
    model: nn.Module, bounds_lr: float = 1e-4
) -> Callable[[Iterable[nn.Parameter], TrainConfig], torch.optim.Optimizer]:
    """``optimizer_fn`` for :func:`slimkit.train.train`: AdamW, ``model``'s quantizer bounds in their own group.

    The bounds group has ``lr = bounds_lr`` and no weight decay (Adam, as the official code); the
    run's cosine schedule scales both groups.
    """
    if not bounds_lr > 0:
        raise BadInputError(f"bounds_lr must be > 0, got {bounds_lr}")
    bounds = {id(p) for p in bound_parameters(model)}
    if not bounds:
        raise BadInputError("the model has no MultiQuant layers: call arbitrary_quant.multiquant first")

    def build(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
        if config.optimizer != "adamw":
            raise BadInputError("MultiQuant trains its quantizer bounds with Adam: use optimizer='adamw'")
        params = list(params)
        weights = [p for p in params if id(p) not in bounds]
        groups = [
            {"params": weights, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": [p for p in params if id(p) in bounds], "lr": bounds_lr, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)

    return build

