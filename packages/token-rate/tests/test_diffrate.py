"""The DiffRate handlers: a schedule is checked against the model it is applied to."""

from __future__ import annotations

import pytest

import token_rate
from slimkit.errors import BadInputError
from token_rate import Schedule, load_schedule
from token_rate.diffrate import check_schedule_fits
from token_rate.patch import model_info


def test_published_schedule_on_another_model_is_refused():
    import timm

    tiny = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    with pytest.raises(BadInputError, match=r"made for another model \(deit_small_patch16_224\): embed_dim 384"):
        token_rate.patch(tiny, "deit_small@2.9")
    assert not token_rate.is_patched(tiny)
    token_rate.patch(tiny, "deit_tiny@0.9")  # its own schedule fits
    assert token_rate.gmacs(tiny) == pytest.approx(token_rate.gmacs("deit_tiny@0.9"))


def test_searched_schedule_records_dims_and_is_checked(timm_model):
    model = timm_model("vit")  # 17 tokens, width 64, depth 3
    sched = Schedule([17, 15, 12], [15, 12, 8], num_tokens=17,
                     meta={"dims": {"depth": 3, "embed_dim": 128, "num_tokens": 17}})
    with pytest.raises(BadInputError, match="embed_dim 128 \\(model: 64\\)"):
        check_schedule_fits(sched, model_info(model))
    sched.meta["dims"]["embed_dim"] = 64
    check_schedule_fits(sched, model_info(model))
    with pytest.raises(BadInputError, match="made for 197 input tokens"):
        check_schedule_fits(load_schedule("deit_small@2.9"), model_info(model))


def test_published_schedules_unchanged():
    s = load_schedule("deit_small@2.9")
    assert s.effective(197) == [197, 194, 176, 156, 141, 133, 121, 107, 88, 64, 56, 3]
    assert s.meta["dims"]["embed_dim"] == 384 and s.meta["model"] == "deit_small_patch16_224"
    assert round(token_rate.gmacs("deit_small@2.9"), 3) == 2.905


def test_schedule_fit_messages_name_the_schedule_and_every_wrong_dim():
    from token_rate.context import ModelInfo
    from token_rate.flops import ViTDims

    info = ModelInfo("timm", ViTDims(depth=3, embed_dim=64, num_tokens=17, patch_size=8), 1, True, "token")
    counts = ([17, 15, 12], [15, 12, 8])
    other = {"depth": 4, "embed_dim": 128, "num_tokens": 197, "patch_size": 16}
    wrong = "depth 4 (model: 3), embed_dim 128 (model: 64), num_tokens 197 (model: 17), patch_size 16 (model: 8)"

    def message(sched):
        with pytest.raises(BadInputError) as exc:
            check_schedule_fits(sched, info)
        return str(exc.value)

    assert message(Schedule(*counts, num_tokens=18)) == "schedule was made for 18 input tokens but the model has 17"
    assert message(Schedule(*counts, meta={"dims": other})) == f"schedule was made for another model: {wrong}"
    assert message(Schedule(*counts, name="mine", meta={"dims": other, "model": "vit_x"})) == \
        f"schedule mine was made for another model (vit_x): {wrong}"
    check_schedule_fits(Schedule(*counts, meta={"dims": {"depth": 3, "embed_dim": 64, "num_tokens": 17}}), info)


def test_schedule_fit_checks_counts_against_the_model_not_the_schedule():
    from token_rate.context import ModelInfo
    from token_rate.flops import ViTDims

    def message(sched, info):
        with pytest.raises(BadInputError) as exc:
            check_schedule_fits(sched, info)
        return str(exc.value)

    fifteen = ModelInfo("timm", ViTDims(depth=3, embed_dim=8, num_tokens=15), 1, True, "token")
    assert message(Schedule([17, 15, 12], [15, 12, 8]), fifteen) == "schedule: prune[0]=17 exceeds the 15 input tokens"
    two_prefix = ModelInfo("timm", ViTDims(depth=3, embed_dim=8, num_tokens=17), 2, True, "token")
    assert message(Schedule([17, 15, 12], [15, 12, 2]), two_prefix) == \
        "schedule: merge[2]=2 is below the minimum 3 (2 prefix token(s) + 1 patch token)"
