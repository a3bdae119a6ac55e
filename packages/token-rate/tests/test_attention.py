"""Search-mode policy attention (DynamicViT's ``softmax_with_policy``) on hand-worked inputs."""

from __future__ import annotations

import math

import pytest
import torch

from token_rate.attention import softmax_with_policy

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
