"""The Differentiable Discrete Proxy and search mode."""

from __future__ import annotations

import copy

import pytest
import torch

import token_rate
from slimkit.errors import BadInputError
from token_rate import DiffRateConfig, Schedule, SearchConfig
from token_rate.ddp import DiffRate, DiffRateDDP, ste_ceil


def test_candidates_and_uniform_start():
    d = DiffRate(196, num_prefix_tokens=1, granularity=4)
    assert len(d.candidates) == 49 and d.candidates[0] == 196 and d.candidates[-1] == 4
    assert d.kept_int() == 101  # mean of {196, ..., 4} = 100, + class token
    fixed = DiffRate(196, fixed=True)
    assert fixed.candidates.tolist() == [196.0] and fixed.kept_int() == 197


def test_ste_ceil_gradient_is_identity():
    x = torch.tensor([2.2, 3.0], requires_grad=True)
    y = ste_ceil(x)
    assert y.tolist() == [3.0, 3.0]
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [1.0, 1.0]


def test_keep_probability_and_mask():
    torch.manual_seed(0)
    d = DiffRate(16, num_prefix_tokens=1, granularity=4)  # candidates 16, 12, 8, 4
    with torch.no_grad():
        d.logits.copy_(torch.randn(4))
    p = d.probabilities()
    keep = d.keep_probability(17)
    # P_j = sum of p_i with c_i + 1 > j
    expect = torch.stack([sum(p[i] for i in range(4) if d.candidates[i] + 1 > j) for j in range(17)])
    torch.testing.assert_close(keep, expect)
    assert keep[0].item() == pytest.approx(1.0) and (keep[1:] <= keep[:-1] + 1e-7).all()
    mask = d.token_mask(17, k=9, active=13)
    assert mask.detach().tolist() == [1.0] * 9 + [0.0] * 4 + [1.0] * 4
    # The mask's gradient is exactly that of the keep-probabilities P_j (straight-through).
    (expect_grad,) = torch.autograd.grad(expect[9:13].sum(), d.logits)
    mask[9:13].sum().backward()
    assert expect_grad.abs().sum() > 0
    torch.testing.assert_close(d.logits.grad, expect_grad)


def test_search_gradient_reaches_compressing_logits(timm_model, images):
    model = timm_model("vit", depth=4)
    init = Schedule([17, 15, 12, 9], [17, 13, 10, 7])
    token_rate.patch(model, SearchConfig(granularity=1, init_schedule=init))
    model.train()
    out = model(images)
    counts = token_rate.last_token_counts(model)
    assert counts[0] == 17 and 17 > counts[1] > counts[2] > counts[3]
    out.square().mean().backward()  # task loss only: gradient must come through the masks
    ddp = model.token_rate_ddp
    assert ddp.prune[0].logits.grad is None or ddp.prune[0].logits.grad.abs().sum() == 0  # fixed block
    # a block's mask acts on the *following* blocks' attention keys, so the last block's logits
    # only learn from the FLOPs term (as in the official code)
    for i in (1, 2):
        assert ddp.prune[i].logits.grad.abs().sum() > 0
        assert ddp.merge[i].logits.grad.abs().sum() > 0
    # the backbone is frozen, only the logits are trainable
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in token_rate.arch_parameters(model)}


def test_search_flops_gradient_and_export(timm_model):
    model = timm_model("vit")
    token_rate.patch(model, SearchConfig())
    g = token_rate.search_gmacs(model)
    assert g.item() == pytest.approx(token_rate.gmacs(model), rel=1e-6)
    ((g - 0.0) ** 2).backward()
    ddp = model.token_rate_ddp
    sched = token_rate.export_schedule(model, name="found")
    assert sched.prune == [17, 11, 11] and sched.merge == [17, 11, 11]
    # Exact gradient. Uniform logits over candidates c = 16, 12, 8, 4: E = 10, kept k = ceil(E) + 1 = 11
    # (straight-through: dk/dlogit_j = p_j (c_j - E)). The straight-through min hands dGMACs/dk to both
    # the prune and the merge count of a block: its own MLP (8 C^2) plus, but for the last block, the
    # next block's attention (4 C^2 + 4 k C).
    c = 64
    dk_dlogits = torch.tensor([16.0, 12.0, 8.0, 4.0]).sub(10.0).div(4.0)
    for i, dgmacs_dk in ((1, 8 * c * c + 4 * c * c + 4 * 11 * c), (2, 8 * c * c)):
        expect = 2 * g.detach() * dgmacs_dk / 1e9 * dk_dlogits
        torch.testing.assert_close(ddp.prune[i].logits.grad, expect)
        torch.testing.assert_close(ddp.merge[i].logits.grad, expect)
    assert token_rate.current_token_counts(model) == sched.effective()


def test_search_train_step_matches_sliced_inference(timm_model, images):
    """Masking tokens out of the keys (search) == removing them (inference) for the class token."""
    model = timm_model("vit")
    token_rate.patch(model, SearchConfig(granularity=1, size_clamp_in_train=False,
                                         init_schedule=Schedule([17, 14, 10], [15, 11, 7])))
    model.train()
    with torch.no_grad():
        searched = model(images)
    sched = token_rate.export_schedule(model)
    assert token_rate.last_token_counts(model) == sched.effective()
    token_rate.patch(model, DiffRateConfig(schedule=sched))
    model.eval()
    with torch.no_grad():
        sliced = model(images)
    assert token_rate.last_token_counts(model) == sched.effective()
    torch.testing.assert_close(searched, sliced, atol=1e-4, rtol=1e-4)


def test_search_eval_mode_slices(timm_model, images):
    model = timm_model("global_pool")
    token_rate.patch(model, SearchConfig())
    assert model.token_rate_ddp.fixed_blocks == (0, 2)  # avg pool: last block fixed too
    with torch.no_grad():
        out = model(images)
    sched = token_rate.export_schedule(model)
    assert token_rate.last_token_counts(model) == sched.effective()
    # eval-mode search slices exactly like the fixed schedule it would export
    fixed = token_rate.patch(copy.deepcopy(model), DiffRateConfig(schedule=sched))
    with torch.no_grad():
        assert torch.equal(fixed(images), out)
    token_rate.unpatch(model)
    assert "token_rate_ddp" not in dict(model.named_modules())
    assert all(p.requires_grad for p in model.parameters())


def test_unsupported_models_raise():
    with pytest.raises(BadInputError, match="unsupported model"):
        token_rate.patch(torch.nn.Linear(3, 3), "deit_small@2.9")
    with pytest.raises(BadInputError, match="not in search mode"):
        token_rate.arch_parameters(token_rate.patch(_tiny_vit(), Schedule([17, 17, 17], [17, 17, 17])))


def test_unsupported_timm_parts_are_named():
    import timm

    with pytest.raises(BadInputError, match="attention-pool"):
        token_rate.patch(timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                           depth=1, embed_dim=32, num_heads=2, global_pool="map"),
                         token_rate.ToMeConfig(r=1))
    model = _tiny_vit()
    with pytest.raises(BadInputError, match="has 2 blocks but the model has 3"):
        token_rate.patch(model, Schedule([17, 17], [17, 17]))
    with pytest.raises(BadInputError, match="197 input tokens but the model has 17"):
        token_rate.patch(model, "deit_small@2.9")


def _tiny_vit():
    import timm

    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                             embed_dim=32, num_heads=2)


def test_warm_start_lands_near_the_requested_count():
    for granularity in (1, 4):
        d = DiffRate(196, granularity=granularity)
        for kept in (180, 101, 40):
            d.set_kept(kept)
            assert abs(d.kept_int() - kept) <= granularity + 1
            assert d.probabilities().max() < 0.99  # still soft enough to learn


def test_gradient_checkpointing_is_refused(timm_model):
    model = timm_model("vit")
    model.set_grad_checkpointing(True)
    with pytest.raises(BadInputError, match="gradient checkpointing"):
        token_rate.patch(model, SearchConfig())


def test_search_masking_can_be_forced_in_eval_mode(timm_model, images):
    model = timm_model("vit")
    token_rate.patch(model, SearchConfig())
    token_rate.set_search_masking(model, True)  # eval-mode backbone, differentiable masks
    out = model(images)
    mask = token_rate.get_context(model).state.mask  # constant length, masked keys
    assert mask is not None and mask.shape == (2, 17)
    assert (mask > 0.5).sum(dim=1).tolist() == [token_rate.last_token_counts(model)[-1]] * 2
    model.train()  # the model has no dropout: forced masking in eval == the training-mode search
    with torch.no_grad():
        assert torch.equal(model(images), out.detach())
    model.eval()
    out.square().mean().backward()
    assert model.token_rate_ddp.prune[1].logits.grad.abs().sum() > 0
    token_rate.set_search_masking(model, None)
    with torch.no_grad():
        model(images)
    assert token_rate.get_context(model).state.mask is None  # eval: sliced


def test_search_keeps_similarity_scaled_sizes_on_merged_away_tokens(timm_model, images):
    """Official search: a merged-away token stays (masked) with its similarity-scaled size, so the
    size its destination gained equals the size it still carries (log(size) scales its mask gradient)."""
    from token_rate.patch import get_context

    model = timm_model("vit")
    token_rate.patch(model, SearchConfig(granularity=1, mode="official", size_clamp_in_train=False,
                                         init_schedule=Schedule([17, 17, 17], [17, 9, 9])))
    model.train()
    with torch.no_grad():
        model(images)
    st = get_context(model).state
    assert st.mask is not None and st.size is not None
    kept = st.mask > 0.5
    n_kept = kept.sum(dim=1)
    active = token_rate.last_token_counts(model)[-1]
    assert active < 17 and n_kept.tolist() == [active, active]  # block 1 merged (warm start ~9-10)
    size = st.size[..., 0]
    gained = (size * kept).sum(dim=1) - n_kept.float()  # every kept token started at size 1
    carried = (size * ~kept).sum(dim=1)
    assert bool((size[~kept] < 1.0).all())
    torch.testing.assert_close(gained, carried)


def test_warm_start_logits_fall_by_sharpness_per_candidate_step():
    d = DiffRate(16, num_prefix_tokens=1, granularity=4)  # candidates 16, 12, 8, 4
    d.set_kept(9)  # 8 patches: distances 2, 1, 0, 1 steps
    assert d.logits.tolist() == [-6.0, -3.0, 0.0, -3.0]
    d.set_kept(11, sharpness=2.0)  # 10 patches: 1.5, 0.5, 0.5, 1.5 steps
    assert d.logits.tolist() == [-3.0, -1.0, -1.0, -3.0]
    two = DiffRate(8, num_prefix_tokens=2, granularity=4)  # candidates 8, 4: one step is 4 tokens
    two.set_kept(7)  # 5 patches: 3/4 and 1/4 of a step away
    assert two.logits.tolist() == [-2.25, -0.75]
    fixed = DiffRate(16, fixed=True)  # a single candidate: nothing to choose, the count stays 17
    fixed.set_kept(9)
    assert fixed.kept_int() == 17


def test_search_clamps_scaled_sizes_to_one_in_training(timm_model, images):
    """Official quirk (size_clamp_in_train, the default): in training a merged-away token's
    similarity-scaled size (size 1 x cosine <= 1) is clamped up to exactly 1."""
    from token_rate.patch import get_context

    model = timm_model("vit")
    token_rate.patch(model, SearchConfig(granularity=1, mode="official",
                                         init_schedule=Schedule([17, 17, 17], [17, 9, 9])))
    model.train()
    with torch.no_grad():
        model(images)
    st = get_context(model).state
    kept = st.mask > 0.5
    size = st.size[..., 0]
    assert int((~kept).sum()) > 0 and size[~kept].unique().tolist() == [1.0]
    torch.testing.assert_close((size * kept).sum(dim=1) - kept.sum(dim=1).float(), (~kept).sum(dim=1).float())


def test_proxy_defaults_and_description():
    d = DiffRate(16)  # default granularity 4, one class token
    assert d.candidates.tolist() == [16.0, 12.0, 8.0, 4.0] and d.num_patches == 16
    assert d.candidates.dtype == torch.float32  # a float buffer in search checkpoints, as in the official code
    assert repr(d) == "DiffRate(candidates=4, prefix=1, fixed=False)"
    assert repr(DiffRate(16, num_prefix_tokens=2, fixed=True)) == "DiffRate(candidates=1, prefix=2, fixed=True)"
    with pytest.raises(ValueError) as exc:
        DiffRate(16, granularity=0)
    assert str(exc.value) == "granularity must be >= 1, got 0"
    ddp = DiffRateDDP(3, 20)  # default granularity 4: 20, 16, 12, 8, 4
    assert [len(m.candidates) for m in ddp.prune] == [1, 5, 5] and ddp.merge[1].num_prefix_tokens == 1
    assert ddp.fixed_blocks == (0,)
    fine = DiffRateDDP(3, 16, num_prefix_tokens=2, granularity=2, fixed_blocks=(0, -1))
    assert [len(m.candidates) for m in fine.merge] == [1, 8, 1] and fine.fixed_blocks == (0, 2)
    assert fine.prune[1].kept_int() == 9 + 2  # uniform over 16, 14, ..., 2: mean 9, plus 2 prefix tokens


def test_masks_are_fp32_on_the_logits_device_whatever_the_defaults():
    d = DiffRate(4, granularity=2)  # candidates 4, 2
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("meta"):
            keep = d.keep_probability(6)
            mask = d.token_mask(6, k=3, active=5)
    finally:
        torch.set_default_dtype(default_dtype)
    assert (keep.device.type, keep.dtype, mask.device.type, mask.dtype) == ("cpu", torch.float32, "cpu", torch.float32)
    # uniform p = 1/2: ranks 0..2 lie inside both candidates (+1 prefix), ranks 3..4 inside the larger only
    assert keep.tolist() == [1.0, 1.0, 1.0, 0.5, 0.5, 0.0]
    assert mask.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_search_steps_mask_like_the_official_code():
    """Three search steps on hand-set proxies (1 class token + 5 patches, tokens already in rank order):
    block 1 prunes to 4, block 2 to 3, block 3 merges to 2. As in the official code, a proxy that
    keeps every active token applies no mask, tokens masked earlier stay last whatever their
    importance, and a step only zeroes the ranks it removes itself (earlier-masked ranks keep a
    1 there, so their gradient still reaches the proxy that masked them)."""
    from token_rate.context import ModelInfo, TokenRateContext
    from token_rate.flops import ViTDims

    info = ModelInfo("timm", ViTDims(depth=4, embed_dim=4, num_tokens=6), 1, True, "token")
    ctx = TokenRateContext("search", SearchConfig(granularity=1, mode="official"), info)
    ddp = DiffRateDDP(4, 5, 1, 1)  # candidates 5..1 patches; blocks 1 (prune and merge) and 3 (prune) uniform
    never = -100.0
    with torch.no_grad():
        ddp.prune[2].logits.copy_(torch.tensor([never, never, never, 0.0, never]))  # keep 2 + 1
        ddp.merge[2].logits.copy_(torch.tensor([0.0, never, never, never, never]))  # keep all
        ddp.merge[3].logits.copy_(torch.tensor([never, never, never, never, 0.0]))  # keep 1 + 1
    ctx.ddp = ddp
    assert ddp.kept_ints() == ([6, 4, 3, 4], [6, 4, 6, 2])
    torch.manual_seed(0)
    x = torch.randn(1, 6, 4)
    ctx.reset(x, training=True)
    # importance of the patch tokens in their current order; ranks masked earlier are the most "important"
    steps = [(1, torch.tensor([[5.0, 4, 3, 2, 1]])), (2, torch.tensor([[5.0, 4, 3, 9, 9]])),
             (3, torch.tensor([[5.0, 4, 9, 9, 9]]))]
    with torch.device("meta"):  # every tensor the steps make follows the inputs' device
        for index, importance in steps:
            x = ctx.compress(x, index, importance, None, True)
    st = ctx.state
    assert st.counts == [4, 3, 2] and st.mask.device.type == "cpu"
    assert st.mask.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    assert st.size[..., 0].tolist() == [[1.0, 2.0, 1.0, 1.0, 1.0, 1.0]]  # training clamp: the merged rank carries 1
    grads = torch.autograd.grad(st.mask.sum(), [ddp.prune[1].logits, ddp.merge[1].logits, ddp.prune[3].logits],
                                allow_unused=True)
    # d/d logits of P_0 + P_1 + P_4 + P_5 (uniform p = 1/5; the ranks blocks 2 and 3 did not remove)
    torch.testing.assert_close(grads[0], torch.tensor([0.28, 0.08, -0.12, -0.12, -0.12]))
    assert grads[1] is None and grads[2] is None  # merge 1 (4 of 4) and prune 3 (4 of 3) apply no mask
