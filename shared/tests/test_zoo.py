"""slimkit.zoo: the small ResNet every method package trains on the offline sets, and models by name."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from slimkit.errors import BadInputError
from slimkit.zoo import BUILTIN_MODELS, BasicBlock, ModelSpec, SmallResNet, load_model


def test_small_resnet_layout_what_the_methods_rely_on() -> None:
    model = SmallResNet(num_classes=7, in_chans=3, widths=(16, 32, 64))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # named stem / layers / fc (MultiQuant finds the stem by name), a BatchNorm after every 3x3 conv
    assert [n for n, _ in model.named_children()] == ["stem", "layers", "pool", "fc"]
    blocks = list(model.layers)
    assert all(isinstance(b, BasicBlock) for b in blocks)
    assert [isinstance(b.shortcut, nn.Identity) for b in blocks] == [True, False, False]
    assert [b.conv1.stride for b in blocks] == [(1, 1), (2, 2), (2, 2)]
    with pytest.raises(BadInputError, match="widths must be positive"):
        SmallResNet(widths=(16, 0))


def test_models_by_name_and_spec() -> None:
    assert BUILTIN_MODELS == ("small_resnet", "small_resnet_wide")
    wide = load_model("small_resnet_wide", num_classes=4, in_chans=1)
    assert isinstance(wide, SmallResNet) and wide.fc.in_features == 64
    assert load_model("tv/resnet18", num_classes=3, in_chans=1).conv1.in_channels == 1
    spec = ModelSpec("small_resnet", num_classes=5, in_chans=3, image_size=16)
    built = spec.build()
    assert built(torch.randn(1, 3, 16, 16)).shape == (1, 5)
    with pytest.raises(BadInputError, match="unknown model 'no_such_net'"):
        load_model("no_such_net")


def test_spec_keeps_the_builder_keywords_through_json() -> None:
    """A small timm ViT needs img_size / depth / ... to be rebuilt; the spec carries them."""
    spec = ModelSpec("vit_tiny_patch16_224", 4, 1, 16, kwargs={"img_size": 16, "patch_size": 4, "depth": 2,
                                                                 "embed_dim": 32, "num_heads": 2})  # fmt: skip
    again = ModelSpec(**json.loads(json.dumps(dataclasses.asdict(spec))))
    assert again == spec
    vit = again.build()
    assert len(vit.blocks) == 2 and vit.pos_embed.shape == (1, 17, 32)
    assert vit(torch.randn(2, 1, 16, 16)).shape == (2, 4)
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        ModelSpec(kwargs=[1])  # type: ignore[arg-type]
