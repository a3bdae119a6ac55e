"""MultiQuant: the branch table, the tiled-FP equivalence, BOPs = k^2 MACs, bounds per branch and bit, undo."""

from __future__ import annotations

import copy
import importlib
import itertools

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from arbitrary_quant.api import REGISTRY, dequantize
from arbitrary_quant.config import AMORTIZED_BRANCHES, MultiQuantConfig
from arbitrary_quant.multiquant import (
    BranchMerge,
    BranchShuffle,
    BranchTile,
    MultiBranchConv,
    SwitchableBN,
    apply_multiquant,
    bound_parameters,
    current_bits,
    init_bounds,
    multiquant,
    set_bits,
    set_quantization,
    storage_bits,
)
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict
from slimkit.opcount import count_ops
from slimkit.zoo import SmallResNet

# the module, not the function of the same name that the package exports
mq = importlib.import_module("arbitrary_quant.multiquant")


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "tv_resnet18": torchvision.models.resnet18(num_classes=10),
        "tv_bottleneck": ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16),
        "timm_resnet18": timm.create_model("resnet18", num_classes=10, pretrained=False),
        "tv_mobilenet_v2": torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
        "small_resnet": SmallResNet(num_classes=10, in_chans=3),
    }


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so the tiled copies are really checked."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def test_official_amortized_table_and_prefix():
    config = MultiQuantConfig()
    assert {b: config.branches(b) for b in (2, 4, 6, 8)} == {2: (0,), 4: (1, 2), 6: (1, 2, 3), 8: (0, 1, 2, 3)}
    assert AMORTIZED_BRANCHES == {2: (0,), 4: (1, 2), 6: (1, 2, 3), 8: (0, 1, 2, 3)}
    # every branch serves 2 or 3 of the 4 bit-widths (a prefix would load branch 0 four times)
    load = [sum(i in config.branches(b) for b in config.bit_list) for i in range(4)]
    assert load == [2, 3, 3, 2]
    prefix = MultiQuantConfig(selection="prefix", groups=3, bit_list=(2, 4, 6))
    assert [prefix.branches(b) for b in (2, 4, 6)] == [(0,), (0, 1), (0, 1, 2)]
    with pytest.raises(BadInputError, match="not in the trained bit_list"):
        config.branches(3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bit_list": (2, 3, 4)}, r"\[3\] are not multiples of weight_bits=2"),
        ({"bit_list": (2, 4, 10)}, "bit-widths 2..8"),
        ({"groups": 2, "selection": "prefix"}, "reaches 8 bits but 2 branches of 2 bits give at most 4"),
        ({"groups": 2, "bit_list": (2, 4)}, "official table for groups=4"),
        ({"bit_list": ()}, "bit_list is empty"),
        ({"bit_list": (4, 4)}, "repeats"),
        ({"distill_weight": 1.5}, r"distill_weight must be in \[0, 1\]"),
        ({"selection": "best"}, "selection must be one of amortized, prefix"),
        ({"groups": 0}, "groups must be a positive integer"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        MultiQuantConfig(**kwargs)


def test_config_round_trips_with_tuples_normalised():
    config = MultiQuantConfig(bit_list=[8, 2, 4], include="layer*", shuffle=False, stem="maxpool")
    assert config.bit_list == (2, 4, 8) and config.include == ["layer*"]
    again = REGISTRY.config_from_dict(config_to_dict(config))
    assert again == config and type(again) is MultiQuantConfig


@pytest.mark.parametrize("name", list(_models()))
def test_tiled_fp_network_computes_the_original_at_every_bit_width(name):
    """Quantization off, the widened network is G copies of the original averaged: the same function."""
    model = _models()[name]
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        multiquant(model, MultiQuantConfig(shuffle=False))
        set_quantization(model, False)
        for bits in (2, 4, 6, 8):
            set_bits(model, bits)
            assert current_bits(model) == bits
            torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_conversion_report_on_a_torchvision_resnet():
    model = torchvision.models.resnet18(num_classes=10)
    report = apply_multiquant(model, MultiQuantConfig())
    convs = [n for n, m in torchvision.models.resnet18().named_modules() if isinstance(m, nn.Conv2d)]
    assert (report.stem, report.head) == ("maxpool", "fc")
    assert report.convs == convs[1:]  # every conv but the stem's
    assert len(report.batchnorms) == 19 and report.shuffled == ["layer2.0", "layer3.0", "layer4.0"]
    assert isinstance(model.maxpool, BranchTile) and isinstance(model.fc, BranchMerge)
    assert isinstance(model.layer2[0], BranchShuffle) and isinstance(model.conv1, nn.Conv2d)
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.layer1[0].bn1, SwitchableBN)
    # one BatchNorm per bit-width, sized to that bit-width's active channels
    assert [bn.num_features for bn in model.layer1[0].bn1.bns] == [64, 128, 192, 256]
    with pytest.raises(BadInputError, match="already converted"):
        apply_multiquant(model, MultiQuantConfig())


def test_shuffle_mixes_branches_only_where_the_official_basic_block_does():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=1, widths=(16, 32, 64)).eval()
    report = apply_multiquant(model, MultiQuantConfig())
    assert report.shuffled == ["layers.1", "layers.2"]  # layers.0 has an identity shortcut
    block = model.layers[1]
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(1, 24, 1, 1)
    set_bits(model, 4)  # 2 branches of 12 channels: out[c * 2 + b] = in[b * 12 + c]
    block.base_layer = nn.Identity()
    out = block(x).flatten().tolist()
    assert out == [float(b * 12 + c) for c in range(12) for b in range(2)]


def test_bops_are_k_squared_macs_layer_by_layer_and_storage_is_2g_bits():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=3).eval()
    x = torch.randn(1, 3, 16, 16)
    original = {r.name: r.macs for r in count_ops(model, x).rows}
    multiquant(model, MultiQuantConfig())
    body = [n for n, m in model.named_modules() if isinstance(m, MultiBranchConv)]
    for bits in (2, 4, 6, 8):
        set_bits(model, bits)
        rows = {r.name: r for r in count_ops(model, x).rows}
        for name in body:
            assert (rows[name].w_bits, rows[name].a_bits) == (2, bits)
            assert rows[name].bops == bits**2 * original[name.replace(".base_layer", "")]
        stem = rows["stem.base_layer.0"]  # the stem Sequential is wrapped by BranchTile
        assert stem.fp_flops == original["stem.0"] and stem.bops == 0
        assert rows["fc.base_layer"].fp_flops == original["fc"]
    assert storage_bits(model)["bits_per_weight"] == 8
    assert storage_bits(model)["original_weights"] == sum(
        m.base_layer.weight.numel() for m in model.modules() if isinstance(m, MultiBranchConv)
    )


def test_weights_are_2_bit_per_branch_and_inputs_k_bit(monkeypatch):
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=3).eval()
    multiquant(model, MultiQuantConfig())
    conv = model.layers[0].conv1
    w3 = conv.quantized_weight(torch.arange(4)) * 3  # {-1, -1/3, 1/3, 1} * 3
    torch.testing.assert_close(w3, torch.round(w3))
    assert set(torch.round(w3).unique().tolist()) == {-3.0, -1.0, 1.0, 3.0}
    seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    real = mq.F.conv2d

    def spy(x, w, *args):
        seen.append((x.detach(), w.detach(), args[-1]))
        return real(x, w, *args)

    monkeypatch.setattr(mq.F, "conv2d", spy)
    x = torch.randn(4, 3, 16, 16)
    for bits in (2, 4, 8):
        set_bits(model, bits)
        seen.clear()
        with torch.no_grad():
            model(x)
        assert len(seen) == 1 + 5  # F.conv2d is patched for every caller: the FP stem conv, then the body's 5
        inputs, weight, groups = seen[1]  # the first body conv: its quantized input and active weights
        n = len(MultiQuantConfig().branches(bits))
        assert groups == n and weight.shape[0] == n * 16 and inputs.shape[1] == n * 16
        torch.testing.assert_close(inputs * (2**bits - 1), torch.round(inputs * (2**bits - 1)))
        assert inputs.min() >= 0 and inputs.max() <= 1


def test_init_bounds_fills_exactly_the_branches_each_bit_width_runs():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=3).train()
    multiquant(model, MultiQuantConfig())
    set_bits(model, 6)
    init_bounds(model, torch.randn(8, 3, 16, 16))
    assert current_bits(model) == 6 and model.training
    for conv in (m for m in model.modules() if isinstance(m, MultiBranchConv)):
        ready = {bits: tuple(torch.nonzero(conv.act_ready[row]).flatten().tolist()) for row, bits in enumerate(conv.bit_list)}
        assert ready == {2: (0,), 4: (1, 2), 6: (1, 2, 3), 8: (0, 1, 2, 3)}
        assert (conv.act_upper > conv.act_lower)[conv.act_ready].all()
    bounds = bound_parameters(model)
    assert len(bounds) == 4 * sum(isinstance(m, MultiBranchConv) for m in model.modules())


def test_undo_is_exact_and_the_wrapped_originals_untouched_by_training():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=3)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    before, state = model(x), copy.deepcopy(model.state_dict())
    multiquant(model, MultiQuantConfig())
    body = {f"layers.{k}" for k in ("0", "1")}
    for bits in (8, 2):
        set_bits(model, bits)
        model(x).sum().backward()  # eval mode: no statistics move
    assert torch.equal(dequantize(model)(x), before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(isinstance(m, (MultiBranchConv, SwitchableBN, BranchTile)) for m in model.modules())
    # a training step changes the widened copies and the FP stem / head, never the wrapped body originals
    multiquant(model, MultiQuantConfig()).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).logsumexp(-1).sum().backward()
    opt.step()
    dequantize(model)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items() if k.split(".")[0] + "." + k.split(".")[1] in body)
    assert not torch.equal(after["fc.weight"], state["fc.weight"])


def test_bad_models_and_bit_widths_are_one_line_errors():
    with pytest.raises(BadInputError, match="cannot tell where the stem ends"):
        multiquant(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2)))
    model = SmallResNet(in_chans=3)
    with pytest.raises(BadInputError, match="every body conv must be branched"):
        multiquant(model, MultiQuantConfig(exclude=["layers.0.conv1"]))
    with pytest.raises(BadInputError, match=r"names no nn\.Linear"):
        multiquant(SmallResNet(in_chans=3), MultiQuantConfig(head="pool"))
    norm_model = SmallResNet(in_chans=3)
    norm_model.layers[0].bn1 = nn.GroupNorm(4, 16)  # type: ignore[assignment]
    with pytest.raises(BadInputError, match=r"cannot branch: layers.0.bn1 \(GroupNorm\)"):
        multiquant(norm_model)
    with pytest.raises(BadInputError, match="no MultiQuant layers"):
        set_bits(SmallResNet(), 4)
    converted = multiquant(SmallResNet(in_chans=3))
    with pytest.raises(BadInputError, match=r"3 bits is not in the trained bit_list \[2, 4, 6, 8\]"):
        set_bits(converted, 3)


def test_every_bit_width_pair_of_tables_differs_only_by_design():
    """The amortized table never reuses one branch set for two bit-widths (each k has its own BN too)."""
    config = MultiQuantConfig()
    sets = [set(config.branches(b)) for b in config.bit_list]
    assert all(a != b for a, b in itertools.combinations(sets, 2))
