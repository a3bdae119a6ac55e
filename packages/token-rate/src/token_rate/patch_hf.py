"""Hugging Face transformers ``ViTModel`` / ``ViTForImageClassification`` adapter (transformers 5.x layout).

transformers 5 lays a ViT out as ``model.layers[i]`` with ``layernorm_before``, ``attention``
(``q_proj``/``k_proj``/``v_proj``/``o_proj``), ``layernorm_after``, ``mlp`` and ``dropout``. The
patched layer keeps that order and compresses between the attention residual and the MLP. Both
heads read the first (class) token, which is pinned in front, so no head change is needed;
``last_hidden_state`` has the compressed token count.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from slimkit.errors import BadInputError
from token_rate.attention import attend, head_mean
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.flops import ViTDims

__all__ = ["is_hf_vit", "inspect_hf", "HFLayerMixin"]

_LAYER_PARTS = ("layernorm_before", "attention", "layernorm_after", "mlp", "dropout")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")


def is_hf_vit(model: nn.Module) -> bool:
    try:
        from transformers import ViTForImageClassification, ViTModel
    except ImportError:  # pragma: no cover - transformers is optional
        return False
    return isinstance(model, (ViTModel, ViTForImageClassification))


def inspect_hf(model: nn.Module) -> tuple[ModelInfo, list[nn.Module]]:
    name = type(model).__name__
    base: Any = getattr(model, "vit", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        if hasattr(getattr(base, "encoder", None), "layer"):
            raise BadInputError(f"{name}: transformers 4.x ViT layout (encoder.layer) is not supported; "
                                "install transformers >= 5")
        raise BadInputError(f"{name}: no transformer layers found at .layers")
    for i, layer in enumerate(layers):
        for part in _LAYER_PARTS:
            if not hasattr(layer, part):
                raise BadInputError(f"{name}: layers[{i}] has no '{part}'")
        for part in _ATTN_PARTS:
            if not hasattr(layer.attention, part):
                raise BadInputError(f"{name}: layers[{i}].attention has no '{part}'")
    cfg = base.config
    image = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
    patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
    num_tokens = (image // patch) ** 2 + 1
    classifier = getattr(model, "classifier", None)
    num_classes = int(classifier.out_features) if isinstance(classifier, nn.Linear) else 0
    dims = ViTDims(depth=len(layers), embed_dim=int(cfg.hidden_size), num_tokens=num_tokens, patch_size=int(patch),
                   in_chans=int(cfg.num_channels), num_classes=num_classes,
                   mlp_ratio=cfg.intermediate_size / cfg.hidden_size, num_prefix_tokens=1)
    info = ModelInfo(family="hf", dims=dims, num_prefix_tokens=1, has_class_token=True, global_pool="token")
    return info, list(layers)


class HFLayerMixin:
    """Forward of a patched ``ViTLayer``; combined with the layer's own class at patch time."""

    _token_rate_ctx: TokenRateContext
    _token_rate_index: int

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        layer: Any = self
        ctx = self._token_rate_ctx
        i = self._token_rate_index
        training = layer.training
        if attention_mask is not None:
            raise BadInputError("token-rate patched ViT layers do not support an attention_mask")
        if i == 0:
            ctx.reset(hidden_states, training)
        want = ctx.wants(i, hidden_states.shape[1], training)
        residual = hidden_states
        h = layer.layernorm_before(hidden_states)
        attn = layer.attention
        b, n, _ = h.shape
        q = attn.q_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
        explicit = getattr(attn.config, "_attn_implementation", "sdpa") == "eager"
        out, importance = attend(
            q, k, v, scale=attn.scaling, size=ctx.attention_size(), mask=ctx.state.mask,
            dropout_p=float(attn.attention_dropout) if training else 0.0, explicit=explicit,
            want_importance=want == "importance", has_class_token=True, num_prefix=1)
        out = attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
        h = layer.dropout(out) + residual
        metric = head_mean(k) if want == "metric" else None
        h = ctx.compress(h, i, importance, metric, training)
        residual = h
        y = layer.mlp(layer.layernorm_after(h))
        return layer.dropout(y) + residual  # type: ignore[no-any-return]
