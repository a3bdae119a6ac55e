"""Tiny random-init ViTs (no downloads) for the token-rate tests."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from token_rate.reference import NORM_EPS, best_match_reference

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


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 2e-3


def _inputs(shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, ns, nd, c = shape
    src = torch.randn(b, ns, c, generator=g).to(dtype)
    dst = torch.randn(b, nd, c, generator=g).to(dtype)
    return src, dst


def _merge_inputs(b: int, nd: int, ns: int, c: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, nd, c, generator=g).to(dtype)
    size = (torch.rand(b, nd, 1, generator=g) * 3 + 0.5).to(torch.float32)
    src = torch.randn(b, ns, c, generator=g).to(dtype)
    src_size = (torch.rand(b, ns, 1, generator=g) * 2 + 0.1).to(torch.float32)
    # Skewed targets: many sources share a few destinations, some destinations get none.
    idx = (torch.rand(b, ns, generator=g) ** 2 * nd).long().clamp_max(nd - 1)
    return x, size, src, src_size, idx


def _assert_match_agrees(sim: torch.Tensor, idx: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, tol: float) -> None:
    ref_sim, ref_idx = best_match_reference(src, dst)
    assert sim.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(sim, ref_sim, atol=tol, rtol=0)
    # Where the top two candidates are clearly apart the choice must be identical; on near-ties
    # the chosen destination must still reach the maximum similarity.
    full = torch.nn.functional.normalize(src.float(), dim=-1, eps=NORM_EPS) @ torch.nn.functional.normalize(
        dst.float(), dim=-1, eps=NORM_EPS
    ).transpose(1, 2)
    top2 = full.topk(min(2, full.shape[-1]), dim=-1).values
    clear = (
        (top2[..., 0] - top2[..., -1]) > 10 * tol if full.shape[-1] > 1 else torch.ones_like(ref_idx, dtype=torch.bool)
    )
    assert torch.equal(idx[clear], ref_idx[clear])
    chosen = full.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chosen, ref_sim, atol=10 * tol, rtol=0)


@pytest.fixture
def mt() -> SimpleNamespace:
    """Merge/match test tools shared by the kernel and op tests: inputs, tolerances, the match check."""
    return SimpleNamespace(tol=_tol, inputs=_inputs, merge_inputs=_merge_inputs, assert_match_agrees=_assert_match_agrees)
