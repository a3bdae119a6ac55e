"""Tiny random-init ViTs (no downloads) for the token-rate tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

TINY = dict(pretrained=False, img_size=32, patch_size=8, depth=3, embed_dim=64, num_heads=2, num_classes=10)

# name -> (timm model name, extra kwargs); 16 patches + prefix tokens each.
TIMM_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit": ("vit_small_patch16_224", {}),
    "deit3_layerscale": ("deit3_small_patch16_224", {"init_values": 0.5}),
    "qk_norm": ("vit_small_patch16_224", {"qk_norm": True}),
    "reg_tokens": ("vit_small_patch16_224", {"reg_tokens": 4}),
    "global_pool": ("vit_small_patch16_224", {"global_pool": "avg", "fc_norm": True}),
    "no_cls_avg": ("vit_small_patch16_224", {"global_pool": "avg", "class_token": False, "reg_tokens": 2}),
}


def make_timm(variant: str = "vit", **overrides: Any) -> nn.Module:
    import timm

    name, extra = TIMM_VARIANTS[variant]
    torch.manual_seed(0)
    model = timm.create_model(name, **{**TINY, **extra, **overrides})
    # Non-trivial LayerScale so that dropping ls1/ls2 would change the output.
    for m in model.modules():
        if hasattr(m, "gamma") and isinstance(m.gamma, nn.Parameter):
            with torch.no_grad():
                m.gamma.uniform_(0.2, 1.5)
    return model.eval()


def make_hf(kind: str = "classifier", **overrides: Any) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    torch.manual_seed(0)
    kwargs: dict[str, Any] = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=128, num_labels=10)
    cfg = ViTConfig(**{**kwargs, **overrides})
    cls = ViTForImageClassification if kind == "classifier" else ViTModel
    return cls(cfg).eval()


def hf_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture
def timm_model() -> Callable[..., nn.Module]:
    """Factory: ``timm_model(variant, **overrides)``; variants are the keys of TIMM_VARIANTS."""
    return make_timm


@pytest.fixture
def hf_model() -> Callable[..., nn.Module]:
    """Factory: ``hf_model("classifier" | "base", **config_overrides)``."""
    return make_hf


@pytest.fixture
def hf_out() -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    return hf_output


@pytest.fixture(params=sorted(TIMM_VARIANTS))
def timm_variant(request: pytest.FixtureRequest) -> str:
    """Every timm family the patch supports (cls token, LayerScale, qk-norm, registers, avg pool)."""
    return str(request.param)


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)
