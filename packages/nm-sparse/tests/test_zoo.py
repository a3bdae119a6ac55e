"""nm_sparse.zoo: the small ResNet and models by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nm_sparse import NMConfig, sparsify
from nm_sparse.zoo import (
    SmallResNet,
    load_model,
)
from slimkit.errors import BadInputError


def test_small_resnet_shapes_and_defaults() -> None:
    model = SmallResNet()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert SmallResNet(num_classes=3, in_chans=3)(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # every conv after the stem takes a multiple of 16 input channels: all patterns up to 1:16 fit
    assert all(c.in_channels % 16 == 0 for c in convs[1:])


@pytest.mark.parametrize("method", ["srste", "spre", "bimask", "asp", "unstructured"])
def test_small_resnet_sparsifies_at_1_16(method: str) -> None:
    model = SmallResNet()
    report = sparsify(model, NMConfig(method=method, pattern="1:16"))
    assert report.layers, "something must be sparsified"
    skipped = {s.name for s in report.skipped}
    assert skipped == {"stem.0", "fc"}  # first conv and classifier stay dense by default
    model(torch.randn(2, 1, 8, 8)).sum().backward()


def test_load_model_by_name() -> None:
    assert isinstance(load_model("small_resnet"), SmallResNet)
    import timm

    torch.manual_seed(1)
    timm_model = load_model("resnet18", num_classes=4, in_chans=1).eval()
    torch.manual_seed(1)
    direct = timm.create_model("resnet18", pretrained=False, num_classes=4, in_chans=1).eval()
    assert type(timm_model) is type(direct)  # a bare name is timm's model, built with these arguments
    assert all(torch.equal(a, b) for a, b in zip(timm_model.state_dict().values(), direct.state_dict().values()))
    tv_model = load_model("tv/resnet18", num_classes=5, in_chans=1).eval()
    assert type(tv_model).__module__.startswith("torchvision.")
    assert (tv_model.conv1.in_channels, tv_model.fc.out_features) == (1, 5)
    assert tv_model(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(BadInputError):
        load_model("no_such_model_xyz")
