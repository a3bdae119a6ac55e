"""ToMe baseline: r parsing, merge invariants, counts, LayerScale and the published r=13 count."""

from __future__ import annotations

import pytest
import torch

import token_rate
from slimkit.errors import BadInputError
from token_rate import Schedule, SearchConfig, ToMeConfig
from token_rate.tome import bipartite_merge, parse_r


def test_parse_r_forms():
    assert parse_r(4, 3) == [3, 3, 3, 3]
    assert parse_r(3, (4, -1.0)) == [8, 4, 0]  # decreasing schedule: 2r ... 0
    assert parse_r(3, (4, 1.0)) == [0, 4, 8]
    assert parse_r(4, [5, 2]) == [5, 2, 0, 0]
    assert sum(parse_r(12, (8, -0.5))) == pytest.approx(8 * 12, abs=12)


def test_config_rejects_bad_r():
    for bad in (-1, (3, 2.0), [1, -2], "3"):
        with pytest.raises(BadInputError):
            ToMeConfig(r=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", [1, 2, 5])
def test_bipartite_merge_invariants(prefix):
    torch.manual_seed(0)
    b, n, c, r = 2, 15, 6, 4
    x = torch.randn(b, n, c)
    source = torch.eye(n).expand(b, n, n).contiguous()
    out, size, src = bipartite_merge(x, torch.randn(b, n, c), r, prefix, None, source)
    assert out.shape == (b, n - r, c)
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix])
    assert torch.equal(src.sum(dim=1), torch.ones(b, n))  # every input token in exactly one output token
    torch.testing.assert_close(size[..., 0], src.sum(dim=-1))  # sizes count covered patches
    torch.testing.assert_close(out, (src @ x) / src.sum(-1, keepdim=True))  # size-weighted mean
    assert torch.equal(size[:, :prefix], torch.ones(b, prefix, 1))


def test_single_class_token_order_matches_official_layout():
    """[class, unmerged A (even indices, original order), B (odd indices)] as in the official code."""
    torch.manual_seed(0)
    n = 9
    x = torch.randn(1, n, 4)
    metric = torch.randn(1, n, 4)
    source = torch.eye(n)[None].clone()
    out, _, src = bipartite_merge(x, metric, 1, 1, None, source)
    assert out.shape[1] == 8
    assert src[0, 0].nonzero().flatten().tolist() == [0]
    kept_a = [int(src[0, t].nonzero()[0]) for t in range(1, 4)]  # unmerged A tokens cover one patch each
    assert all(i % 2 == 0 and src[0, t].sum() == 1 for t, i in zip(range(1, 4), kept_a))
    assert kept_a == sorted(kept_a)
    assert [bool(src[0, 4 + j, 2 * j + 1]) for j in range(4)] == [True] * 4  # B tokens in order


@pytest.mark.parametrize(
    "depth,r,counts",
    [
        (5, 100, [9, 5, 3, 2, 2]),  # two patch tokens still merge into one; one patch token is left alone
        (3, [3, 100, 100], [14, 8, 5]),  # an odd number of patch tokens: the cap is floor(13 / 2) = 6
    ],
)
def test_cap_edges_two_patch_tokens_and_odd_counts(timm_model, images, depth, r, counts):
    model = timm_model("vit", depth=depth)
    token_rate.patch(model, ToMeConfig(r=r))
    with torch.no_grad():
        model(images)
    assert token_rate.last_token_counts(model) == counts == token_rate.current_token_counts(model)


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "explicit"])
def test_training_keeps_timms_attention_dropout_draw_for_draw(timm_model, images, fused):
    """With r = 0 the patched model in train mode must drop exactly what timm drops (same op, same RNG draws)."""
    reference = timm_model("vit", depth=2, attn_drop_rate=0.3)
    patched = timm_model("vit", depth=2, attn_drop_rate=0.3)
    for model in (reference, patched):
        for block in model.blocks:
            block.attn.fused_attn = fused
    token_rate.patch(patched, ToMeConfig(r=0))
    reference.train()
    patched.train()
    torch.manual_seed(7)
    want = reference(images)
    torch.manual_seed(7)
    got = patched(images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(patched(images), got)  # the dropout is really on


def test_bfloat16_models_stay_in_bfloat16(timm_model, images):
    """Sizes, sources and masks follow the activations' dtype: a bf16 model merges, traces and searches in bf16."""
    tome = timm_model("vit", depth=2).to(torch.bfloat16)
    token_rate.patch(tome, ToMeConfig(r=4, trace_source=True))
    with torch.no_grad():
        out = tome(images.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and token_rate.last_token_counts(tome) == [13, 9]
    search = timm_model("vit", depth=3).to(torch.bfloat16)
    token_rate.patch(search, SearchConfig(granularity=1, init_schedule=Schedule([17, 15, 12], [17, 13, 10])))
    search.train()
    loss = search(images.to(torch.bfloat16)).float().square().mean()
    loss.backward()
    for ddp in (search.token_rate_ddp.prune[1], search.token_rate_ddp.merge[1]):
        assert ddp.logits.grad is not None and bool(ddp.logits.grad.abs().sum() > 0)  # a real gradient


def test_before_the_first_forward_nothing_is_reported(timm_model):
    model = timm_model("vit", depth=2)
    token_rate.patch(model, ToMeConfig(r=2, trace_source=True))
    assert token_rate.last_token_counts(model) == [] and token_rate.token_source(model) is None


def test_r_is_capped_at_half_the_patches(timm_model, images):
    model = timm_model("vit")
    token_rate.patch(model, ToMeConfig(r=100))
    with torch.no_grad():
        model(images)
    assert token_rate.last_token_counts(model) == [9, 5, 3]  # 17 -> 17 - 8 -> 9 - 4 -> 5 - 2
    assert token_rate.current_token_counts(model) == [9, 5, 3]


def test_tome_with_layerscale_and_sizes(timm_model, images):
    model = timm_model("deit3_layerscale")
    token_rate.patch(model, ToMeConfig(r=[3, 2, 2], trace_source=True))
    with torch.no_grad():
        model(images)  # the output itself is checked against a reference in test_block_reference.py
    assert token_rate.last_token_counts(model) == [14, 12, 10]
    src = token_rate.token_source(model)
    assert torch.equal(src.sum(dim=1), torch.ones(2, 17))
    assert torch.equal(token_rate.get_context(model).state.size[..., 0], src.sum(-1))


def test_tome_on_hf(hf_model, hf_out, images):
    model = hf_model("classifier")
    token_rate.patch(model, ToMeConfig(r=4))
    with torch.no_grad():
        hf_out(model, images)  # the output itself is checked against a reference in test_block_reference.py
    assert token_rate.last_token_counts(model) == [13, 9, 5] == token_rate.current_token_counts(model)


def test_tome_avg_pool_is_size_weighted(timm_model, images):
    """With sizes, the avg-pool head equals the mean over the *original* patches of merged tokens."""
    model = timm_model("global_pool")
    token_rate.patch(model, ToMeConfig(r=[4, 0, 0], trace_source=True))
    feats = model.forward_features(images)
    pooled = model.pool(feats)
    ctx = token_rate.get_context(model)
    w = ctx.state.size[:, 1:, 0]
    torch.testing.assert_close(pooled, (feats[:, 1:] * w[..., None]).sum(1) / w.sum(1, keepdim=True))
    assert w.sum(1).eq(16).all()


def test_two_patches_merge_into_one_by_hand():
    """Class token + 2 patches, r = 1: A = {patch 2} folds into B = {patch 1} (size-weighted mean)."""
    x = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 6.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0]]])
    source = torch.eye(3)[None].clone()
    with torch.device("meta"):  # the index rows it builds follow x's device, not torch's default
        out, new_size, src = bipartite_merge(x, x, 1, 1, size, source)
    assert out.tolist() == [[[9.0, 9.0], [2.5, 5.0]]]  # (1 * [1, 2] + 3 * [3, 6]) / 4
    assert new_size.tolist() == [[[1.0], [4.0]]]
    assert src.tolist() == [[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]]


def test_r_is_capped_at_half_the_unprotected_tokens_with_two_prefix_tokens():
    torch.manual_seed(0)
    x = torch.randn(1, 7, 4)  # 2 prefix tokens + 5 patches: at most 5 // 2 = 2 merges
    out, size, _ = bipartite_merge(x, x, 10, 2, None, None)
    assert out.shape == (1, 5, 4) and size[..., 0].sum().item() == 7.0
    torch.testing.assert_close(out[:, :2], x[:, :2])


def test_parse_r_ramp_on_one_and_two_blocks():
    assert parse_r(1, (4, -1.0)) == [8]  # a single block gets the ramp's start
    assert parse_r(2, (4, -1.0)) == [8, 0]
    assert parse_r(2, 5) == [5, 5]
