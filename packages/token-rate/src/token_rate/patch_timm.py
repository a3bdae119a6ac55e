"""timm 1.x ``VisionTransformer`` adapter (vit_*, deit_*, deit3_*, register-token and avg-pool variants).

The patched block runs the original sub-modules in timm's order, with LayerScale (``ls1``/``ls2``),
``q_norm``/``k_norm``, the attention output norm and gate, and drop-path all honoured, and the
compression step between the attention residual and the MLP. Attention stays on fused SDPA when
the module had ``fused_attn`` set. The model's ``pool`` becomes size-weighted for average pooling
(the MAE-style head), which reduces to timm's plain mean when nothing was merged.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from slimkit.errors import BadInputError
from token_rate.attention import attend, head_mean
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.flops import ViTDims

__all__ = ["is_timm_vit", "inspect_timm", "TimmBlockMixin", "TimmModelMixin"]

_SUPPORTED_POOLS = ("token", "avg", "avgmax", "max", "")


def is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is optional
        return False
    return isinstance(model, VisionTransformer)


def inspect_timm(model: nn.Module) -> tuple[ModelInfo, list[nn.Module]]:
    """Check every part the patch relies on; BadInputError names what is missing."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    name = type(model).__name__
    blocks = list(getattr(model, "blocks", []))
    if not blocks:
        raise BadInputError(f"{name}: no transformer blocks found at model.blocks")
    for i, blk in enumerate(blocks):
        if not isinstance(blk, Block) or type(blk).forward is not Block.forward:
            raise BadInputError(
                f"{name}: blocks[{i}] is {type(blk).__name__}; only timm's pre-norm Block is supported "
                "(not ResPostBlock / ParallelScalingBlock / custom blocks)")
        attn = blk.attn
        if not isinstance(attn, Attention):
            raise BadInputError(
                f"{name}: blocks[{i}].attn is {type(attn).__name__}; only timm.layers.Attention "
                "(no RoPE / differential attention) is supported")
        for attr in ("qkv", "q_norm", "k_norm", "proj", "num_heads", "head_dim", "scale"):
            if not hasattr(attn, attr):
                raise BadInputError(f"{name}: blocks[{i}].attn has no '{attr}'")
    if getattr(model, "attn_pool", None) is not None:
        raise BadInputError(f"{name}: attention-pool heads (global_pool='map'/'prr') are not supported")
    pool = getattr(model, "global_pool", "token")
    if pool not in _SUPPORTED_POOLS:
        raise BadInputError(f"{name}: global_pool={pool!r} is not supported (use one of {_SUPPORTED_POOLS})")
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = getattr(model, "cls_token", None) is not None
    patch: Any = model.patch_embed
    ps = patch.patch_size
    patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    proj = getattr(patch, "proj", None)
    in_chans = int(proj.in_channels) if isinstance(proj, nn.Conv2d) else 3
    vit: Any = model
    embed_dim = int(vit.embed_dim)
    mlp: Any = getattr(blocks[0], "mlp", None)
    hidden = int(mlp.fc1.out_features) if hasattr(mlp, "fc1") else 4 * embed_dim
    head = getattr(model, "head", None)
    num_classes = int(head.out_features) if isinstance(head, nn.Linear) else 0
    dims = ViTDims(depth=len(blocks), embed_dim=embed_dim, num_tokens=int(patch.num_patches) + num_prefix,
                   patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                   mlp_ratio=hidden / embed_dim, num_prefix_tokens=num_prefix)
    info = ModelInfo(family="timm", dims=dims, num_prefix_tokens=num_prefix, has_class_token=has_cls,
                     global_pool=str(pool), pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)))
    return info, blocks


def _timm_attention(attn: Any, x: Tensor, ctx: TokenRateContext, want: str | None,
                    training: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    info = ctx.info
    out, importance = attend(
        q, k, v, scale=attn.scale, size=ctx.attention_size(), mask=ctx.state.mask,
        dropout_p=attn.attn_drop.p if training else 0.0, explicit=not getattr(attn, "fused_attn", True),
        want_importance=want == "importance", has_class_token=info.has_class_token,
        num_prefix=info.num_prefix_tokens)
    out = out.transpose(1, 2).reshape(b, n, -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    metric = head_mean(k) if want == "metric" else None
    return out, importance, metric


class TimmBlockMixin:
    """Forward of a patched timm ``Block``; combined with the block's own class at patch time."""

    _token_rate_ctx: TokenRateContext
    _token_rate_index: int

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        blk: Any = self
        ctx = self._token_rate_ctx
        i = self._token_rate_index
        training = blk.training
        if attn_mask is not None or is_causal:
            raise BadInputError("token-rate patched blocks do not support attn_mask / is_causal")
        if i == 0:
            ctx.reset(x, training)
        want = ctx.wants(i, x.shape[1], training)
        y, importance, metric = _timm_attention(blk.attn, blk.norm1(x), ctx, want, training)
        x = x + blk.drop_path1(blk.ls1(y))
        x = ctx.compress(x, i, importance, metric, training)
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))  # type: ignore[no-any-return]


class TimmModelMixin:
    """Size-weighted pooling for average-pool heads (MAE-style) and, in search mode, pools that skip
    the masked tokens; everything else is timm's."""

    _token_rate: TokenRateContext

    def pool(self, x: Tensor, pool_type: str | None = None) -> Tensor:
        model: Any = self
        st = self._token_rate.state
        pool_type = model.global_pool if pool_type is None else pool_type
        if pool_type == "max" and st.mask is not None and st.mask.shape[1] == x.shape[1]:
            # Search mode: masked tokens are not in the sliced model, so they cannot win the max.
            start = 0 if model.pool_include_prefix else model.num_prefix_tokens
            return x[:, start:].masked_fill(st.mask[:, start:, None] <= 0.5, float("-inf")).amax(dim=1)
        if pool_type in ("avg", "avgmax") and st.size is not None and st.size.shape[1] == x.shape[1]:
            start = 0 if model.pool_include_prefix else model.num_prefix_tokens
            xs = x[:, start:]
            w = st.size[:, start:].to(x.dtype)
            if st.mask is not None:
                w = w * st.mask[:, start:, None].to(x.dtype)
            denom = w.sum(dim=1)
            if st.mask is not None:
                denom = denom.detach()
            avg = (xs * w).sum(dim=1) / denom
            if pool_type == "avgmax":
                # Search mode: masked tokens are not in the sliced model, so they cannot win the max.
                peak = xs if st.mask is None else xs.masked_fill(st.mask[:, start:, None] <= 0.5, float("-inf"))
                return 0.5 * (peak.amax(dim=1) + avg)
            return avg
        return super().pool(x, pool_type)  # type: ignore[misc,no-any-return]
