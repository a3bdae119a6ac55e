"""LoRA adapters on a causal LM, in place, through peft; and their exact removal.

:func:`apply_lora` is the registered handler for :class:`~memochat.config.LoraConfig`: peft's
``inject_adapter_in_model`` replaces each target ``nn.Linear`` with a LoRA layer that keeps the
original as ``base_layer`` (``lora_B`` starts at zero, so outputs are unchanged until training).
:func:`strip_lora` puts every ``base_layer`` back, optionally merging the trained update first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memochat.config import LoraConfig
from memochat.registry import REGISTRY
from slimkit.errors import BadInputError
from slimkit.surgery import set_module


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost peft LoRA layers of ``model``."""
    from peft.tuners.lora import LoraLayer

    found: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and not any(name.startswith(n + ".") for n, _ in found):
            found.append((name, mod))  # type: ignore[arg-type]
    return found


@REGISTRY.register(LoraConfig)
def apply_lora(model: nn.Module, config: LoraConfig) -> int:
    """Inject LoRA adapters into ``model`` in place; only they require gradients afterwards. Returns how many."""
    import peft

    if lora_layers(model):
        raise BadInputError("the model already holds LoRA adapters; remove them first")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not names & set(config.targets):
        raise BadInputError(f"no Linear layer named {', '.join(config.targets)} in the model (it has {', '.join(sorted(names)) or 'none'})")
    peft_cfg = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                               target_modules=[t for t in config.targets if t in names])  # fmt: skip
    peft.inject_adapter_in_model(peft_cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return len(lora_layers(model))


def strip_lora(model: nn.Module, merge: bool = False) -> int:
    """Replace every LoRA layer by its original module (with the update merged in when ``merge``)."""
    layers = lora_layers(model)
    for name, layer in layers:
        if merge:
            layer.merge()  # type: ignore[operator]
        base: Any = layer.get_base_layer()  # type: ignore[operator]
        set_module(model, name, base)
    for p in model.parameters():
        p.requires_grad_(True)
    return len(layers)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what a LoRA run saves)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if "lora_" in k}
