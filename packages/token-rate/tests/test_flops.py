"""Analytic MACs: published parity, the differentiable form, and a counted cross-check."""

from __future__ import annotations

import pytest
import torch

import token_rate
from token_rate import Schedule, ToMeConfig, ViTDims
from token_rate.flops import analytic_macs, attention_macs, differentiable_gmacs, mlp_macs

DEIT_S = ViTDims(depth=12, embed_dim=384, num_tokens=197)


def test_deit_small_published_2_9_is_2_905():
    assert token_rate.gmacs("deit_small@2.9") == pytest.approx(2.905, abs=5e-4)
    assert token_rate.gmacs(DEIT_S, "deit_small@2.9") == pytest.approx(2.905256448, rel=1e-9)


@pytest.mark.parametrize("name,readme", [("deit_base@11.5", 11.517), ("mae_vit_base@11.5", 11.517),
                                         ("mae_vit_large@42.3", 42.290), ("mae_vit_huge@103.4", 103.337)])
def test_published_gmacs_match_readme(name, readme):
    assert token_rate.gmacs(name) == pytest.approx(readme, abs=5e-4)


def test_every_published_schedule_is_near_its_target():
    for name in token_rate.list_schedules():
        target = float(name.split("@")[1])
        got = token_rate.gmacs(name)
        # Targets are rounded labels: within 0.06 G or 1%, except ViT-H "93.2" (computes to 92.11).
        slack = 1.2 if name == "mae_vit_huge@93.2" else max(0.06, 0.01 * target)
        assert abs(got - target) <= slack, (name, got)


def test_baselines():
    assert token_rate.gmacs(DEIT_S) == pytest.approx(4.599, abs=1e-3)
    assert token_rate.gmacs(ViTDims(depth=12, embed_dim=192, num_tokens=197)) == pytest.approx(1.25, abs=0.01)
    assert token_rate.gmacs(ViTDims(depth=12, embed_dim=768, num_tokens=197)) == pytest.approx(17.56, abs=0.01)


def test_formula_terms():
    n, c = 10, 8
    assert attention_macs(n, c) == 4 * n * c * c + 2 * n * n * c
    assert mlp_macs(n, c) == 8 * n * c * c
    d = ViTDims(depth=2, embed_dim=c, num_tokens=n, patch_size=2, in_chans=3, num_classes=5)
    expected = n * c * 3 * 4 + c * 5 + attention_macs(10, c) + mlp_macs(7, c) + attention_macs(7, c) + mlp_macs(4, c)
    assert analytic_macs(d, [7, 4]) == expected


def test_tome_r13_deit_small():
    assert token_rate.gmacs(DEIT_S, ToMeConfig(r=13)) == pytest.approx(2.703, abs=1e-3)


def test_differentiable_matches_integer_count_and_sends_gradient_both_ways():
    torch.manual_seed(0)
    sched = token_rate.load_schedule("deit_small@2.9")
    p = [torch.tensor(float(v), requires_grad=True) for v in sched.prune]
    m = [torch.tensor(float(v), requires_grad=True) for v in sched.merge]
    g = differentiable_gmacs(DEIT_S, p, m)
    assert g.item() == pytest.approx(token_rate.gmacs(DEIT_S, sched), rel=1e-6)
    g.backward()
    # straight-through min: every block's prune and merge counts get the same gradient, its own MLP
    # (8C^2) plus, but for the last block, the next block's attention (4C^2 + 4 N C), N = its output count.
    c = 384
    for i, n in enumerate(sched.effective(197)):
        expect = 8 * c * c + (4 * c * c + 4 * n * c if i < 11 else 0)
        for t in (p[i], m[i]):
            assert t.grad is not None and t.grad.item() * 1e9 == pytest.approx(expect, rel=1e-5), i


def test_gmacs_of_patched_model_follows_schedule(timm_model):
    model = timm_model("vit")
    d = token_rate.model_dims(model)
    base = token_rate.gmacs(model)
    sched = Schedule([17, 9, 5], [13, 7, 3])
    token_rate.patch(model, sched)
    assert base == pytest.approx(analytic_macs(d) / 1e9, rel=1e-12)
    assert token_rate.gmacs(model) == pytest.approx(analytic_macs(d, [13, 7, 3]) / 1e9, rel=1e-12)


def test_counted_cross_check(timm_model, images):
    """``torch.utils.flop_counter`` on the real forward (it sees the tensors the blocks actually ran on)
    equals the analytic count of the scheduled tokens plus the matching matmuls the method adds, so a
    block that silently skipped a reduction (one-token steps included) would show here."""
    pytest.importorskip("slimkit.bench")
    model = timm_model("vit", depth=4)
    x = images[:1]
    d = token_rate.model_dims(model)
    # The official patch-embed term uses N including the class token; the counter sees N - 1 patches.
    embed_overcount = d.embed_dim * d.in_chans * d.patch_size**2 / 1e9
    base_counted = token_rate.counted_gmacs(model, x)
    assert base_counted == pytest.approx(token_rate.gmacs(model) - embed_overcount, rel=1e-9)
    # a one-token prune (block 0), prune + merge, a one-token merge (block 2), prune + merge
    sched = Schedule([16, 14, 11, 7], [16, 11, 10, 5], num_tokens=17)
    token_rate.patch(model, sched)
    counted = token_rate.counted_gmacs(model, x)
    assert token_rate.last_token_counts(model) == [16, 11, 10, 5]
    # Extra work beyond the model: each merge's similarity matmul, (sources x non-class destinations)
    # x width; the class-attention row is an elementwise product the counter does not count.
    matching = sum((kp - km) * (km - 1) * d.embed_dim for kp, km in ((14, 11), (11, 10), (7, 5)))
    assert counted == pytest.approx(token_rate.gmacs(model) - embed_overcount + matching / 1e9, rel=1e-9)


def test_deit_small_with_published_schedule_end_to_end():
    """The real DeiT-S layout: per-layer counts after patching equal the published list, 2.905 GMACs."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    token_rate.patch(model, "deit_small@2.9")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert token_rate.last_token_counts(model) == [197, 194, 176, 156, 141, 133, 121, 107, 88, 64, 56, 3]
    assert token_rate.gmacs(model) == pytest.approx(2.905, abs=5e-4)


def _bad_input(fn, *args):
    from slimkit.errors import BadInputError

    with pytest.raises(BadInputError) as exc:
        fn(*args)
    return str(exc.value)


def test_differentiable_gmacs_single_block_by_hand():
    d = ViTDims(depth=1, embed_dim=8, num_tokens=10, patch_size=2, in_chans=3, num_classes=5)
    p, m = torch.tensor(7.0, requires_grad=True), torch.tensor(6.0, requires_grad=True)
    g = differentiable_gmacs(d, [p], [m])
    # stem 10*8*3*2^2 + head 8*5 = 1000; attention on 10 tokens 4*10*64 + 2*100*8 = 4160; MLP on 6: 8*6*64 = 3072
    assert g.item() * 1e9 == pytest.approx(1000 + 4160 + 3072, rel=1e-6)
    g.backward()
    assert p.grad.item() * 1e9 == pytest.approx(8 * 64) and m.grad.item() * 1e9 == pytest.approx(8 * 64)


def test_differentiable_gmacs_follows_the_counts_device_not_the_default():
    d = ViTDims(depth=2, embed_dim=8, num_tokens=10, patch_size=2, in_chans=3, num_classes=5)
    with torch.device("meta"):
        g = differentiable_gmacs(d, [torch.tensor(9.0, device="cpu")] * 2, [torch.tensor(7.0, device="cpu")] * 2)
    assert g.device.type == "cpu"
    assert g.item() == pytest.approx(analytic_macs(d, [7, 7]) / 1e9, rel=1e-6)


def test_differentiable_gmacs_needs_one_count_per_block():
    two = [torch.tensor(9.0)] * 2
    assert _bad_input(differentiable_gmacs, DEIT_S, two, [torch.tensor(9.0)] * 12) == \
        "need 12 prune and merge counts, got 2/12"
    assert _bad_input(differentiable_gmacs, DEIT_S, [torch.tensor(9.0)] * 12, two) == \
        "need 12 prune and merge counts, got 12/2"


def test_gmacs_of_configs_lists_and_bad_inputs():
    from token_rate import DiffRateConfig, SearchConfig

    d = ViTDims(depth=2, embed_dim=8, num_tokens=10, patch_size=2, in_chans=3, num_classes=5)
    assert token_rate.gmacs(d, [7, 4]) == analytic_macs(d, [7, 4]) / 1e9
    assert token_rate.gmacs(d, (7.0, 4.0)) == analytic_macs(d, [7, 4]) / 1e9
    assert token_rate.gmacs(DEIT_S, DiffRateConfig(schedule="deit_small@2.9")) == \
        pytest.approx(2.905256448, rel=1e-9)
    assert _bad_input(token_rate.gmacs, DEIT_S, SearchConfig()) == \
        "a SearchConfig has no fixed schedule; pass the patched model instead"
    assert _bad_input(token_rate.gmacs, DEIT_S, 2.9) == \
        "cannot count MACs for a float; pass a Schedule, config or list"


def test_gmacs_checks_a_schedule_against_the_dims():
    eleven = ViTDims(depth=11, embed_dim=384, num_tokens=197)
    assert _bad_input(token_rate.gmacs, eleven, "deit_small@2.9") == \
        "schedule 'deit_small@2.9': has 12 blocks but the model has 11"
    fewer = ViTDims(depth=12, embed_dim=384, num_tokens=150)
    assert _bad_input(token_rate.gmacs, fewer, "deit_small@2.9") == \
        "schedule 'deit_small@2.9': prune[0]=197 exceeds the 150 input tokens"
    sched = Schedule([17, 9], [13, 7])  # no input count of its own: the dims' count is checked
    assert _bad_input(token_rate.gmacs, ViTDims(depth=2, embed_dim=8, num_tokens=15), sched) == \
        "schedule: prune[0]=17 exceeds the 15 input tokens"
    assert token_rate.gmacs(ViTDims(depth=2, embed_dim=8, num_tokens=17), sched) == \
        analytic_macs(ViTDims(depth=2, embed_dim=8, num_tokens=17), [13, 7]) / 1e9


def test_tome_counts_cap_r_at_half_the_unprotected_tokens():
    from token_rate.flops import tome_token_counts

    d = ViTDims(depth=3, embed_dim=8, num_tokens=10)
    # 10 tokens: at most (10 - 1) // 2 = 4 merges; then (6 - 1) // 2 = 2; then r = 1 binds
    assert tome_token_counts(d, [8, 8, 1]) == [6, 4, 3]
    assert tome_token_counts(ViTDims(depth=2, embed_dim=8, num_tokens=10, num_prefix_tokens=2), [8, 0]) == [6, 6]


def test_gmacs_of_an_unknown_target_lists_the_published_names():
    names = ", ".join(token_rate.list_schedules())
    assert _bad_input(token_rate.gmacs, "deit_small@2.9@x") == \
        f"unknown schedule 'deit_small@2.9@x'; published: {names}"  # family from the first '@': deit_small
    assert _bad_input(token_rate.gmacs, "deit_huge@1.0") == (
        "unknown schedule family 'deit_huge'; known: deit_base, deit_small, deit_tiny, mae_vit_base, mae_vit_huge, "
        "mae_vit_large")


def test_gmacs_takes_dims_as_a_dict_and_names_what_it_cannot_use():
    dims = {"depth": 2, "embed_dim": 8, "num_tokens": 10, "patch_size": 2, "num_classes": 5}
    assert token_rate.gmacs(dims, [7, 4]) == analytic_macs(ViTDims(**dims), [7, 4]) / 1e9
    assert _bad_input(token_rate.gmacs, 12) == "gmacs() needs a model, ViTDims or published name, got int"


def test_analytic_macs_needs_one_count_per_block():
    assert _bad_input(analytic_macs, ViTDims(depth=2, embed_dim=8, num_tokens=10), [7]) == \
        "1 per-block counts for a model with 2 blocks"
