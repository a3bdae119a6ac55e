"""A keep-everything schedule (and ToMe r=0) must reproduce the unpatched model, family by family."""

from __future__ import annotations

import pytest
import torch

import token_rate
from token_rate import DiffRateConfig, Schedule, ToMeConfig

TOL = 1e-5


def _full(model):
    d = token_rate.model_dims(model)
    return Schedule.full(d.depth, d.num_tokens, d.num_prefix_tokens)


@pytest.mark.parametrize("mode", ["official", "weighted"])
def test_timm_full_schedule_matches_unpatched(timm_model, images, timm_variant, mode):
    model = timm_model(timm_variant)
    with torch.no_grad():
        ref = model(images)
    token_rate.patch(model, DiffRateConfig(schedule=_full(model), mode=mode))
    with torch.no_grad():
        out = model(images)
    assert (out - ref).abs().max().item() <= TOL
    d = token_rate.model_dims(model)
    assert token_rate.last_token_counts(model) == [d.num_tokens] * d.depth


def test_timm_tome_r0_matches_unpatched(timm_model, images, timm_variant):
    model = timm_model(timm_variant)
    with torch.no_grad():
        ref = model(images)
    token_rate.patch(model, ToMeConfig(r=0))
    with torch.no_grad():
        out = model(images)
    assert (out - ref).abs().max().item() <= TOL


def test_timm_unfused_attention_matches(timm_model, images):
    """The explicit-matmul path (fused_attn=False) is honoured too."""
    model = timm_model("deit3_layerscale")
    for blk in model.blocks:
        blk.attn.fused_attn = False
    with torch.no_grad():
        ref = model(images)
    token_rate.patch(model, _full(model))
    with torch.no_grad():
        assert (model(images) - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", ["classifier", "base"])
def test_hf_full_schedule_matches_unpatched(hf_model, hf_out, images, kind):
    model = hf_model(kind)
    with torch.no_grad():
        ref = hf_out(model, images)
    token_rate.patch(model, _full(model))
    with torch.no_grad():
        out = hf_out(model, images)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL
    token_rate.patch(model, ToMeConfig(r=0))
    with torch.no_grad():
        assert (hf_out(model, images) - ref).abs().max().item() <= TOL


def test_hf_eager_attention_matches(hf_model, hf_out, images):
    model = hf_model("classifier", attn_implementation="eager")
    with torch.no_grad():
        ref = hf_out(model, images)
    token_rate.patch(model, _full(model))
    with torch.no_grad():
        assert (hf_out(model, images) - ref).abs().max().item() <= TOL


def test_unpatch_restores_classes_and_outputs(timm_model, images):
    model = timm_model("vit")
    cls, block_cls = type(model), type(model.blocks[0])
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(images)
    token_rate.patch(model, Schedule([17, 9, 5], [13, 7, 3]))
    assert model.blocks[0]._token_rate_original_class is block_cls
    assert set(model.state_dict()) == keys  # weights keep their names
    with torch.no_grad():
        model(images)
    assert token_rate.last_token_counts(model) == [13, 7, 3]  # the patch was in effect
    token_rate.unpatch(model)
    assert type(model) is cls and type(model.blocks[0]) is block_cls
    assert not token_rate.is_patched(model)
    with torch.no_grad():
        assert torch.equal(model(images), ref)


def test_repatch_replaces_previous_patch(timm_model, images):
    model = timm_model("vit")
    token_rate.patch(model, ToMeConfig(r=2))
    token_rate.patch(model, Schedule([17, 9, 5], [13, 7, 3]))
    with torch.no_grad():
        model(images)
    assert token_rate.last_token_counts(model) == [13, 7, 3]
    assert sum(c.__name__.startswith("TokenRate") for c in type(model.blocks[0]).__mro__) == 1


def test_distilled_deit_two_prefix_tokens(images):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_small_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=3, embed_dim=64, num_heads=2, num_classes=10).eval()
    with torch.no_grad():
        ref = model(images)
    assert token_rate.model_dims(model).num_prefix_tokens == 2
    token_rate.patch(model, _full(model))
    with torch.no_grad():
        assert (model(images) - ref).abs().max().item() <= TOL


def test_patched_model_copies_and_pickles(timm_model, images):
    import copy
    import pickle

    model = token_rate.patch(timm_model("vit"), Schedule([17, 12, 8], [15, 9, 4]))
    with torch.no_grad():
        out = model(images)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(clone(images), out)
        assert token_rate.last_token_counts(clone) == [15, 9, 4]
        assert clone.blocks[1]._token_rate_ctx is token_rate.get_context(clone)
