"""Bi-ViT measurement: teacher and student training, the ablation table, the gradient figure, OPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from arbitrary_quant.bivit import BinaryAttention, BinaryLinear
from arbitrary_quant.bivit_training import (
    VARIANTS,
    BiViTTableSettings,
    bivit_table,
    gradient_figure,
    small_vit,
    train_binary,
    train_teacher,
    vit_ops,
)
from arbitrary_quant.config import BiViTConfig
from slimkit.data import digits
from slimkit.errors import BadInputError
from slimkit.io import load_json
from slimkit.train import TrainConfig
from slimkit.wrappers import wrapped_modules


def tiny(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    args = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2} | kw
    return small_vit(10, 1, **args)


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    """128 digits at 16x16, grey: small enough to overfit in a few dozen steps."""
    full = digits("train", size=16, channels=1, seed=0)
    x, y = full.tensors
    return TensorDataset(x[:128], y[:128])


def config(tmp_path, name: str, steps: int, lr: float = 3e-3, log_every: int = 1) -> TrainConfig:
    return TrainConfig(
        output_dir=str(tmp_path / name),
        max_steps=steps,
        batch_size=32,
        lr=lr,
        cpu=True,
        progress=False,
        log_every=log_every,
        seed=0,
    )


def mean_loss(metrics: list[dict], part: slice) -> float:
    values = [m["loss"] for m in metrics][part]
    return sum(values) / len(values)


# --------------------------------------------------------------------------- models and training


def test_small_vit_shapes_and_bad_arguments():
    model = small_vit(10, 1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert model.patch_embed.num_patches + model.num_prefix_tokens == 65
    with pytest.raises(BadInputError, match="multiple of patch_size"):
        small_vit(10, 1, img_size=30)
    with pytest.raises(BadInputError, match="num_heads"):
        small_vit(10, 1, embed_dim=30, num_heads=4)
    with pytest.raises(BadInputError, match="depth"):
        small_vit(10, 1, depth=0)


def test_teacher_training_lowers_the_loss(tmp_path, data):
    model = tiny()
    result = train_teacher(model, data, config(tmp_path, "t", 60, lr=5e-3))
    assert result.steps == 60
    assert mean_loss(result.metrics, slice(-5, None)) < 0.8 * mean_loss(result.metrics, slice(0, 5)), result.metrics


def test_student_starts_from_the_teacher_and_distillation_lowers_the_loss(tmp_path, data):
    teacher = tiny(seed=1)
    train_teacher(teacher, data, config(tmp_path, "t", 30))
    teacher.eval()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny(seed=2)  # different random weights: they must be overwritten
    assert not torch.equal(student.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight)
    seen: dict[str, torch.Tensor] = {}

    class Snapshot:
        def on_train_start(self, ctx):
            seen.update({k: v.detach().clone() for k, v in ctx.model.state_dict().items()})

    cfg = BiViTConfig(top_k=4)
    result = train_binary(student, teacher, data, cfg, config(tmp_path, "s", 40), callbacks=[Snapshot()])
    # at the first step every original tensor equals the teacher's (the binarizer adds its own parameters)
    originals = {
        k.replace(".base_layer", ""): v
        for k, v in seen.items()
        if "norm_q" not in k and "norm_k" not in k and "_bin." not in k and ".latent_" not in k
    }
    assert set(originals) == set(t_state)
    assert all(torch.equal(originals[k], t_state[k]) for k in t_state)
    # so does every BinaryLinear's trainable copy of its weight and bias
    latents = {k.replace(".base_layer", "").replace(".latent_", "."): v for k, v in seen.items() if ".latent_" in k}
    assert latents and all(torch.equal(v, t_state[k]) for k, v in latents.items())
    # binarized in place, trained with CE + KD + ranking, loss down
    assert {type(m) for _, m in wrapped_modules(student)} >= {BinaryAttention, BinaryLinear}
    assert {"ce", "kd", "rank"} <= set(result.metrics[0])
    assert mean_loss(result.metrics, slice(-5, None)) < mean_loss(result.metrics, slice(0, 5)), result.metrics
    # the teacher: unchanged, gradients and mode as before, no hook left
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(not m._forward_hooks for m in teacher.modules())


def test_train_binary_refuses_a_mismatched_or_binarized_student(tmp_path, data):
    teacher = tiny()
    with pytest.raises(BadInputError):
        train_binary(tiny(embed_dim=64), teacher, data, BiViTConfig(), config(tmp_path, "a", 1))
    done = tiny()
    train_binary(done, teacher, data, BiViTConfig(ranking_loss=None, kd_weight=0.0), config(tmp_path, "b", 1))
    with pytest.raises(BadInputError, match="wrapped"):
        train_binary(done, teacher, data, BiViTConfig(), config(tmp_path, "c", 1))
    with pytest.raises(BadInputError, match="BiViTConfig"):
        train_binary(tiny(), teacher, data, {"attention": "sign"}, config(tmp_path, "d", 1))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the table


def test_table_tiny_settings_rows_and_files(tmp_path):
    s = BiViTTableSettings(
        seeds=(0,),
        image_size=16,
        patch_size=8,
        depth=1,
        embed_dim=16,
        num_heads=2,
        batch_size=16,
        teacher_steps=3,
        student_steps=2,
        top_k=2,
    )
    out = tmp_path / "table"
    out.mkdir()
    result = bivit_table(s, output=out, show_progress=False)
    assert [r["variant"] for r in result["rows"]] == list(VARIANTS)
    for row in result["rows"]:
        assert {"variant", "label", "attention", "distillation", "top1", "top1_mean", "top1_std"} <= set(row)
        assert len(row["top1"]) == 1 and 0.0 <= row["top1_mean"] <= 1.0 and row["top1_std"] == 0.0
    attention = {r["variant"]: (r["attention"], r["distillation"]) for r in result["rows"]}
    assert attention["sign"] == ("sign", "none") and attention["learnable"] == ("learnable", "none")
    assert attention["learnable_distill"][0] == "learnable" and "pairwise" in attention["learnable_distill"][1]
    assert len(result["runs"]) == 4 and result["eval_split"] == "val"
    assert result["command"].startswith("arbitrary-quant bivit-table --data digits --seeds 0 ")
    assert "--teacher-steps 3 --student-steps 2" in result["command"]
    assert {"device", "torch_threads", "versions"} <= set(result["env"])
    assert (out / "table.md").read_text() == result["markdown"] + "\n"
    assert load_json(out / "results.json") == result
    assert result["markdown"].count("\n| ") == 5 and "1 seed)" in result["markdown"]


def test_table_settings_are_validated():
    for bad in (
        {"data": "imagenet"},
        {"seeds": ()},
        {"seeds": (0, 0)},
        {"seeds": (-1,)},
        {"teacher_steps": 0},
        {"lr": 0.0},
        {"patch_size": 5},
        {"top_k": 0},
        {"kd_weight": -1.0},
        {"eval_split": "train"},
    ):
        with pytest.raises(BadInputError):
            BiViTTableSettings(**bad)
    s = BiViTTableSettings(data="crops")
    assert s.channels() == 3 and s.held_out_split() == "test"
    assert BiViTTableSettings().to_dict()["seeds"] == [0, 1, 2]


# --------------------------------------------------------------------------- the gradient figure


def test_gradient_figure_writes_a_png_and_sign_is_smaller(tmp_path):
    model = tiny(img_size=32, depth=2, embed_dim=64)  # 65 tokens
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = gradient_figure(model, x, y, tmp_path / "grad.png")
    assert (tmp_path / "grad.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["tokens"] == 65 and list(result["sign"]) == ["blocks.0.attn", "blocks.1.attn"]
    for block in result["sign"]:
        for t in ("q", "k"):
            assert 0 < result["sign"][block][t] < result["learnable"][block][t]
            assert result["ratio"][block][t] == pytest.approx(result["sign"][block][t] / result["learnable"][block][t])
    assert not wrapped_modules(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(BadInputError, match=r"only \.png"):
        gradient_figure(model, x, y, tmp_path / "grad.pdf")


# --------------------------------------------------------------------------- OPs


def test_vit_ops_binary_ops_equal_fp_part_plus_bops_over_64():
    model = tiny(img_size=32, depth=2, embed_dim=64)
    ops = vit_ops(img_size=32, model=model)
    fp, b = ops["fp_model"], ops["bivit"]
    assert b["ops"] < fp["fp_flops"] and ops["ratio"] > 1
    assert b["ops"] == b["fp_flops"] + b["bops"] / 64  # exactly
    assert set(ops["full_precision_layers"]) == {"patch_embed.proj", "head"}
    assert b["fp_flops"] == sum(ops["full_precision_layers"].values())
    # every other product is 1-bit x 1-bit: BOPs = its MACs, and nothing is lost or double counted
    assert b["bops"] == b["binary_macs"] == fp["macs"] - b["fp_flops"]
    # by hand: patch embed 64 patches x 16 inputs x 64; head 64 x 10
    assert ops["full_precision_layers"] == {"patch_embed.proj": 64 * 16 * 64, "head": 64 * 10}
    assert ops["paper_ratio"] == 61.5
    with pytest.raises(BadInputError):
        vit_ops(img_size=0, model=model)
