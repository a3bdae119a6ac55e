"""Real model families: torchvision ResNet-18, timm CNN and ViT, a tiny transformers Llama."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nm_sparse
from nm_sparse import NMConfig

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def _convs(model: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]


@pytest.mark.parametrize("method", ["spre"])  # SpRe on 3x3 convs, SR-STE on the 1x1 downsamples
def test_torchvision_resnet18(method: str) -> None:
    model = torchvision.models.resnet18(num_classes=10)
    convs = _convs(model)
    report = nm_sparse.sparsify(model, NMConfig(method=method))
    assert report.names == convs[1:]  # every conv but the stem; fc dense
    if method == "spre":
        spre = [layer for layer in report.layers if layer.method == "spre"]
        assert len(spre) == 16 and report.bn_pairing == "fx"  # the 3x3 convs of the 8 blocks
        assert all(layer.bn == layer.name.replace("conv", "bn") for layer in spre)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).sum().backward()
    nm_sparse.step(model)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    report_d = nm_sparse.deploy(model)
    with torch.no_grad():
        got = model(x)
    assert float((got - expected).abs().max()) <= 1e-4
    assert report_d.check.all_valid and len(report_d.check.layers) == 19


def test_timm_resnet_bimask() -> None:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    convs = _convs(model)
    report = nm_sparse.sparsify(model, NMConfig(method="bimask", bimask_candidates=2))
    assert convs[0] == "conv1.0" and len(convs) == 14
    assert report.names == convs[1:]  # every conv but the stem (the deep stem's later convs and downsamples too)
    assert {s.name: s.reason for s in report.skipped} == {
        "conv1.0": "first conv kept dense",
        "fc": "last Linear (classifier) kept dense",
    }
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert nm_sparse.check(model).all_valid


def test_timm_vit_linear_layers() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)
    report = nm_sparse.sparsify(model, NMConfig(method="bimask", bimask_candidates=2))
    expected = [f"blocks.{i}.{leaf}" for i in range(2) for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert report.names == expected
    assert {s.name: s.reason for s in report.skipped} == {
        "patch_embed.proj": "first conv kept dense",
        "head": "last Linear (classifier) kept dense",
    }
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert model.blocks[0].attn.qkv.base_layer.weight.grad is not None
    nm_sparse.deploy(model)
    assert nm_sparse.check(model).all_valid


def test_llama_mlp_layers() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    report = nm_sparse.sparsify(model, NMConfig(include=["*.mlp.*"], pattern="2:4"))
    assert report.names == [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    ids = torch.randint(0, 64, (2, 8))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    nm_sparse.deploy(model)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert float((got - expected).abs().max()) <= 1e-4
    check = nm_sparse.check(model)
    assert check.all_valid and len(check.layers) == 6 and check.sparsity == pytest.approx(0.5)
