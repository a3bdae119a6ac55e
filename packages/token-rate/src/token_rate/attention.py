"""Attention with token sizes and masks, shared by the timm and Hugging Face adapters.

* Proportional attention: ``+log(size)`` on the keys, passed to fused SDPA as an additive float
  mask, so the main attention never falls back to a manual implementation at inference.
* Class-attention importance (DiffRate's sort key): the CLS query row, averaged over heads, from a
  separate ``q_cls . k`` reduction (O(N C) extra work, see :func:`class_attention`). Models without
  a class token use the attention each token *receives*, averaged over heads and queries (the
  official CAFormer choice), which needs the full attention matrix.
* Search mode: DynamicViT's ``softmax_with_policy``: masked tokens are removed from the keys
  (each token still sees itself), the sequence length stays constant and the gradient reaches the
  mask through the attention weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["size_bias", "softmax_with_policy", "attend", "class_attention", "head_mean"]

_POLICY_EPS = 1e-6


def size_bias(size: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``log(size)`` shaped [B, 1, 1, N] for broadcasting over heads and queries."""
    if size is None:
        return None
    return size.float().log().to(dtype)[:, None, None, :, 0]


def softmax_with_policy(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over keys restricted to ``mask`` [B, N] (diagonal always kept), in fp32."""
    b, _, n, _ = logits.shape
    policy = mask.float().reshape(b, 1, 1, n)
    eye = torch.eye(n, dtype=torch.float32, device=logits.device).view(1, 1, n, n)
    policy = policy + (1.0 - policy) * eye
    z = logits.float()
    z = z - z.max(dim=-1, keepdim=True).values.detach()
    e = z.exp() * policy
    return (e + _POLICY_EPS / n) / (e.sum(dim=-1, keepdim=True) + _POLICY_EPS)


def attend(q: Tensor, k: Tensor, v: Tensor, *, scale: float, size: Tensor | None, mask: Tensor | None,
           dropout_p: float, explicit: bool, want_importance: bool, has_class_token: bool,
           num_prefix: int) -> tuple[Tensor, Tensor | None]:
    """Multi-head attention on [B, H, N, D] tensors; returns ``(out [B, H, N, D], importance [B, N - prefix])``.

    ``size`` enables proportional attention; ``mask`` switches to search-mode policy attention.
    ``importance`` is ``None`` unless requested.
    """
    bias = size_bias(size, q.dtype)
    importance: Tensor | None = None
    if mask is not None or explicit:
        logits = (q * scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            attn = softmax_with_policy(logits, mask).to(q.dtype)
        else:
            attn = logits.softmax(dim=-1)
        if want_importance:
            importance = _importance_from(attn, has_class_token, num_prefix, mask)
        if dropout_p > 0.0:
            attn = F.dropout(attn, p=dropout_p)
        return attn @ v, importance
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    if want_importance:
        with torch.no_grad():
            if has_class_token:
                importance = class_attention(q, k, scale, size, num_prefix)
            else:
                logits = (q * scale) @ k.transpose(-2, -1)
                if bias is not None:
                    logits = logits + bias
                importance = _importance_from(logits.float().softmax(dim=-1), False, num_prefix)
    return out, importance


def class_attention(q: Tensor, k: Tensor, scale: float, size: Tensor | None, num_prefix: int) -> Tensor:
    """Head-averaged attention of the class query (token 0) to the patch tokens, [B, N - prefix], fp32.

    Works on ``k`` in its token-major memory layout (``[B, N, H, D]``, how the fused qkv projection
    stores it): one broadcast multiply-and-reduce over ``D`` reads ``k`` once, where ``q_cls @ k^T``
    would first copy ``k`` into head-major order and then run a batch of matrix-vector products.
    """
    q_cls = (q[:, :, 0].float() * scale).unsqueeze(1)          # [B, 1, H, D]
    logits = (k.transpose(1, 2).float() * q_cls).sum(dim=-1)    # [B, N, H]
    if size is not None:
        logits = logits + size.float().log()                    # [B, N, 1] broadcasts over heads
    return logits.softmax(dim=1)[:, num_prefix:].mean(dim=-1)


def head_mean(k: Tensor) -> Tensor:
    """``k.mean(dim=1)`` for [B, H, N, D] keys (ToMe's metric), as H - 1 in-place adds of [B, N, D] slices.

    A reduction over the head dimension of the strided qkv view is several times slower on CPU than
    these contiguous-row adds, which sum in the same order.
    """
    heads = k.shape[1]
    acc = k[:, 0].clone(memory_format=torch.contiguous_format)
    for h in range(1, heads):
        acc += k[:, h]
    return acc.div_(heads)


def _importance_from(attn: Tensor, has_class_token: bool, num_prefix: int, mask: Tensor | None = None) -> Tensor:
    """Sort key from the attention matrix. Without a class token: the attention each token receives,
    averaged over heads and the *active* queries only, so search mode (masked rows still in the
    sequence) ranks tokens exactly as the sliced inference model, which has no such rows."""
    if has_class_token:
        return attn[:, :, 0, num_prefix:].mean(dim=1).detach()
    if mask is None:
        return attn.mean(dim=(1, 2))[:, num_prefix:].detach()
    rows = mask.to(attn.dtype)[:, None, :, None]  # [B, 1, N, 1]: which queries count
    received = (attn * rows).sum(dim=2).mean(dim=1) / rows.sum(dim=2)[:, :, 0]
    return received[:, num_prefix:].detach()
