"""Search-mode policy attention (DynamicViT's ``softmax_with_policy``) on hand-worked inputs."""

from __future__ import annotations

import math

import pytest
import torch

from token_rate.attention import attend, softmax_with_policy

EPS = 1e-6


def _expected(rows):
    """(e + eps/n) / (sum e + eps) for the unnormalised kept weights e of each query row."""
    n = len(rows[0])
    return torch.tensor([[(e + EPS / n) / (sum(row) + EPS) for e in row] for row in rows]).view(1, 1, n, n)


def test_masked_keys_are_dropped_but_each_token_sees_itself():
    logits = torch.tensor([0.0, math.log(2.0), 0.0]).expand(1, 1, 3, 3)  # key 1 twice as attractive
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    out = softmax_with_policy(logits, mask)
    # queries 0 and 2 lose key 1; query 1 keeps itself (the diagonal) and so sees all three keys
    torch.testing.assert_close(out, _expected([[0.5, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.5]]))
    assert out.dtype == torch.float32


def test_policy_softmax_is_fp32_on_the_logits_device_whatever_the_defaults():
    logits = torch.zeros(2, 1, 2, 2, dtype=torch.bfloat16)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("meta"):
            out = softmax_with_policy(logits, mask)
    finally:
        torch.set_default_dtype(default_dtype)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    expect = torch.cat([_expected([[1.0, 0.0], [1.0, 1.0]]), _expected([[1.0, 1.0], [1.0, 1.0]])])
    torch.testing.assert_close(out, expect)


def test_policy_softmax_is_stable_and_uniform_when_only_masked_keys_carry_weight():
    # key 1 dominates every row but is masked for queries 0 and 2: what they still see weighs
    # exp(-100) ~ 0, so the eps terms take over and spread the row uniformly (no NaN, no overflow)
    logits = torch.tensor([0.0, 100.0, 0.0]).expand(1, 1, 3, 3)
    out = softmax_with_policy(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    tiny = math.exp(-100.0)
    expect = _expected([[tiny, 0.0, tiny], [tiny, 1.0, tiny], [tiny, 0.0, tiny]])
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-9)
    assert out[0, 0, 0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3], rel=1e-4)


def test_importance_without_class_token_averages_over_active_queries_and_heads():
    from token_rate.attention import _importance_from

    attn = torch.tensor([[[0.5, 0.25, 0.25], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]],
                         [[0.25, 0.25, 0.5], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]]]).unsqueeze(0)  # [1, 2 heads, 3, 3]
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # query 2 is merged away: its row must not count
    got = _importance_from(attn, has_class_token=False, num_prefix=0, mask=mask)
    # key j: mean over heads of the mean over queries 0 and 1
    expect = torch.tensor([[(0.5 + 0.0 + 0.25 + 0.5) / 4, (0.25 + 0.5 + 0.25 + 0.0) / 4, (0.25 + 0.5 + 0.5 + 0.5) / 4]])
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(_importance_from(attn, False, 1, mask), expect[:, 1:])
    torch.testing.assert_close(_importance_from(attn, False, 0), attn.mean(dim=(1, 2)))  # unmasked: every query
    torch.testing.assert_close(_importance_from(attn, True, 1), attn[:, :, 0, 1:].mean(dim=1))  # class row


@pytest.mark.parametrize("scale", [0.125, 0.37])
def test_fused_and_explicit_attention_use_the_same_scale(scale):
    """The fused SDPA path must apply the module's ``scale`` (HF passes ``attn.scaling``), not SDPA's
    default 1/sqrt(head_dim), or it diverges from the explicit path for any other scale."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    size = torch.rand(2, 9, 1) + 0.5
    common = dict(scale=scale, size=size, mask=None, dropout_p=0.0, want_importance=True,
                  has_class_token=True, num_prefix=1)
    fused, imp_fused = attend(q, k, v, explicit=False, **common)
    manual, imp_manual = attend(q, k, v, explicit=True, **common)
    ref = (((q * scale) @ k.transpose(-2, -1)) + size.log()[:, None, None, :, 0]).softmax(-1) @ v
    torch.testing.assert_close(manual, ref)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(imp_fused, imp_manual, atol=1e-6, rtol=1e-5)
