"""Matching/merging references, the DiffRate prune+merge step and proportional attention."""

from __future__ import annotations

import pytest
import torch

import token_rate
from token_rate import DiffRateConfig, Schedule
from token_rate.attention import attend
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.flops import ViTDims
from token_rate.merge import best_match, best_match_reference, merge, merge_reference


def test_best_match_reference_is_cosine_argmax():
    torch.manual_seed(0)
    src, dst = torch.randn(2, 7, 5) * 3, torch.randn(2, 4, 5)
    sim, idx = best_match_reference(src, dst)
    for b in range(2):
        for s in range(7):
            cos = torch.nn.functional.cosine_similarity(src[b, s][None], dst[b], dim=-1)
            assert idx[b, s].item() == int(cos.argmax())
            assert sim[b, s].item() == pytest.approx(cos.max().item(), abs=1e-6)
    assert sim.dtype == torch.float32 and idx.dtype == torch.int64


@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_merge_reference_against_loops(mode):
    torch.manual_seed(0)
    x, size = torch.randn(1, 3, 4), torch.tensor([[[1.0], [2.0], [1.5]]])
    src, src_size = torch.randn(1, 4, 4), torch.tensor([[[1.0], [3.0], [0.5], [2.0]]])
    idx = torch.tensor([[0, 2, 2, 0]])
    out, new_size = merge_reference(x, size, src, src_size, idx, mode)
    for d in range(3):
        members = [s for s in range(4) if idx[0, s] == d]
        w = [1.0] + [1.0] * len(members) if mode == "mean" else [size[0, d, 0].item()] + [
            src_size[0, s, 0].item() for s in members]
        vecs = [x[0, d]] + [src[0, s] for s in members]
        expect = sum(wi * v for wi, v in zip(w, vecs)) / sum(w)
        torch.testing.assert_close(out[0, d], expect)
        assert new_size[0, d, 0].item() == pytest.approx(size[0, d, 0].item() + sum(src_size[0, s, 0].item()
                                                                                  for s in members))


def test_dispatch_agrees_with_reference_on_cpu():
    torch.manual_seed(0)
    src, dst = torch.randn(2, 9, 6), torch.randn(2, 5, 6)
    s1, i1 = best_match(src, dst)
    s2, i2 = best_match_reference(src, dst)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)
    size, src_size = torch.rand(2, 5, 1) + 1, torch.rand(2, 9, 1) + 1
    for mode in ("mean", "weighted"):
        a = merge(dst, size, src, src_size, i1, mode)
        b = merge_reference(dst, size, src, src_size, i1, mode)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def _ctx(n: int, prune: int, merge_k: int, mode: str = "weighted", prefix: int = 1) -> TokenRateContext:
    dims = ViTDims(depth=1, embed_dim=8, num_tokens=n, num_prefix_tokens=prefix)
    info = ModelInfo("timm", dims, prefix, True, "token")
    cfg = DiffRateConfig(schedule=Schedule([prune], [merge_k], num_prefix_tokens=prefix), mode=mode,
                         trace_source=True)  # type: ignore[arg-type]
    return TokenRateContext("diffrate", cfg, info, prune=[prune], merge_counts=[merge_k])


@pytest.mark.parametrize("prefix", [1, 3])
def test_prune_keeps_top_class_attention_in_order(prefix):
    torch.manual_seed(0)
    n = 12
    x = torch.randn(2, n, 8)
    importance = torch.rand(2, n - prefix)
    ctx = _ctx(n, 7, 7, prefix=prefix)
    ctx.reset(x, training=False)
    out = ctx.compress(x, 0, importance, None, training=False)
    assert out.shape == (2, 7, 8)
    for b in range(2):
        top = (importance[b].argsort(descending=True)[: 7 - prefix] + prefix).tolist()
        assert torch.equal(out[b, :prefix], x[b, :prefix])
        assert torch.equal(out[b, prefix:], x[b, top])
    assert ctx.state.size is None  # pruning alone creates no sizes


@pytest.mark.parametrize("mode", ["official", "weighted"])
def test_merge_step_invariants(mode):
    """Merge-only: every patch lands in exactly one token, prefix tokens are never a destination,
    and each token is the (single-step) average of the inputs it covers."""
    torch.manual_seed(0)
    n, prefix, k = 14, 2, 6
    x = torch.randn(3, n, 8)
    ctx = _ctx(n, n, k, mode=mode, prefix=prefix)
    ctx.reset(x, training=False)
    importance = torch.rand(3, n - prefix)
    out = ctx.compress(x, 0, importance, None, training=False)
    src, size = ctx.state.source, ctx.state.size
    assert out.shape == (3, k, 8) and src.shape == (3, k, n)
    assert torch.equal(src.sum(dim=1), torch.ones(3, n))  # a partition of the input tokens
    assert torch.equal(src[:, :prefix], torch.eye(n)[:prefix].expand(3, -1, -1))  # prefix untouched
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix])
    # first merge from unit sizes: unweighted mean == size-weighted mean
    expect = (src @ x) / src.sum(-1, keepdim=True)
    torch.testing.assert_close(out, expect)
    if mode == "weighted":
        torch.testing.assert_close(size.sum(dim=1), torch.full((3, 1), float(n)))
    else:  # a source's size is scaled by its cosine similarity to its destination (clamped at 0) before it is added
        # Each group's destination is its highest-ranked member (every source ranks below every destination).
        rank = torch.cat([torch.full((3, prefix), 2.0), importance], dim=1)  # prefix tokens head their own group
        dst = (src * rank[:, None, :]).argmax(dim=-1)  # [3, k] input index of each destination
        cos = torch.nn.functional.cosine_similarity(x[:, :, None], x.gather(1, dst[..., None].expand(-1, -1, 8))[:, None],
                                                    dim=-1)  # [3, n, k]: input token vs each destination
        expect_size = 1 + (src * cos.transpose(1, 2).clamp_min(0)).sum(-1) - src.gather(-1, dst[..., None])[..., 0]
        torch.testing.assert_close(size[..., 0], expect_size)
        assert torch.equal(size[:, :prefix], torch.ones(3, prefix, 1))


def test_token_counts_follow_schedule_and_sources_partition(timm_model, images):
    model = timm_model("reg_tokens")  # 4 registers + class token + 16 patches
    sched = Schedule([21, 17, 12], [19, 11, 8], num_prefix_tokens=5)
    token_rate.patch(model, DiffRateConfig(schedule=sched, mode="weighted", trace_source=True))
    with torch.no_grad():
        model(images)
    assert token_rate.last_token_counts(model) == sched.effective(21) == [19, 11, 8]
    src = token_rate.token_source(model)
    assert src.shape == (2, 8, 21)
    # prefix tokens survive alone; pruned patches are covered by no token, others by exactly one
    assert torch.equal(src[:, :5, :5], torch.eye(5).expand(2, -1, -1))
    assert ((src.sum(dim=1) == 0) | (src.sum(dim=1) == 1)).all()
    # weighted mode: a token's size is the number of input tokens it covers
    assert torch.equal(token_rate.get_context(model).state.size[..., 0], src.sum(dim=-1))


def test_proportional_attention_equals_duplicated_tokens():
    """A key of size s acts like s identical copies: SDPA + log(size) bias == explicit duplication."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    size = torch.tensor([[[1.0], [3.0], [1.0], [2.0]]])
    common = dict(scale=8 ** -0.5, mask=None, dropout_p=0.0, want_importance=True, has_class_token=True,
                  num_prefix=1)
    fused, imp_f = attend(q, k, v, size=size, explicit=False, **common)
    manual, imp_m = attend(q, k, v, size=size, explicit=True, **common)
    torch.testing.assert_close(fused, manual, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(imp_f, imp_m, atol=1e-6, rtol=1e-5)
    rep = torch.tensor([0, 1, 1, 1, 2, 3, 3])
    dup, _ = attend(q, k[:, :, rep], v[:, :, rep], size=None, explicit=True, **common)
    torch.testing.assert_close(fused, dup, atol=1e-6, rtol=1e-5)


def test_reference_dtypes_and_the_bad_mode_message():
    """The references' contracts at the edges: sizes keep their dtype, similarities are float32 even with no
    source token, and an unknown merge mode names the modes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    size = torch.ones(1, 3, 1, dtype=torch.float64)
    src = torch.randn(1, 2, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([[0, 2]])
    new_x, new_size = merge_reference(x, size, src, torch.ones(1, 2, 1, dtype=torch.float64), idx, "weighted")
    assert new_x.dtype == new_size.dtype == torch.float64 and new_size.flatten().tolist() == [2.0, 1.0, 2.0]
    sim, arg = best_match_reference(torch.zeros(2, 0, 4, dtype=torch.float16), torch.randn(2, 3, 4).half())
    assert sim.dtype == torch.float32 and arg.dtype == torch.int64 and sim.shape == arg.shape == (2, 0)
    with pytest.raises(ValueError, match=r"^merge mode must be one of \('mean', 'weighted'\), got 'max'$"):
        merge_reference(x, size, src, size[:, :2], idx, "max")
