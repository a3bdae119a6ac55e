"""MultiQuant: the branch table, the tiled-FP equivalence, BOPs = k^2 MACs, bounds per branch and bit, undo."""

from __future__ import annotations

import copy
import importlib
import itertools
import math

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
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
    narrow_channels,
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
    assert {b: AMORTIZED_BRANCHES[b] for b in (2, 4, 6, 8)} == {2: (0,), 4: (1, 2), 6: (1, 2, 3), 8: (0, 1, 2, 3)}
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
        ({"bit_list": (2, 4), "weight_bits": 4, "selection": "prefix"}, r"\[2\] are below weight_bits=4"),
        ({"bit_list": (2, 3), "narrow_width": 0.0}, r"narrow_width must be in \(0, 1\]"),
        ({"bit_list": (2, 3), "narrow_width": True}, "narrow_width must be"),
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


class _CifarBlock(nn.Module):
    """A CIFAR-style BasicBlock: ``shortcut = nn.Sequential()`` (empty) is its identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


def test_an_empty_sequential_shortcut_is_an_identity_and_not_shuffled():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    model.add_module("layer1", _CifarBlock(8, 8, 1))
    model.add_module("layer2", _CifarBlock(8, 16, 2))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(16, 10))
    report = apply_multiquant(model, MultiQuantConfig())
    assert report.shuffled == ["layer2"]  # layer1's empty Sequential is the identity


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


# --------------------------------------------------------------------------- odd bit-widths: the narrow branch

ODD = (2, 3, 4, 5, 6, 7, 8)


def test_odd_bit_widths_take_the_official_narrow_branch_slot():
    config = MultiQuantConfig(bit_list=ODD)
    half = math.sqrt(0.5)
    assert [config.branches(b) for b in ODD] == [(0,), (0,), (1, 2), (1, 2), (1, 2, 3), (0, 1, 2), (0, 1, 2, 3)]
    assert [config.narrow(b) for b in ODD] == [None, (1, half), None, (3, half), None, (3, half), None]
    prefix = MultiQuantConfig(bit_list=ODD, selection="prefix", narrow_width=0.5)
    assert [prefix.narrow(b) for b in (3, 5, 7)] == [(1, 0.5), (2, 0.5), (3, 0.5)]
    wide = MultiQuantConfig(bit_list=(4, 6, 7, 8), selection="prefix", weight_bits=4, groups=2)
    assert wide.narrow(7) == (1, math.sqrt(3 / 4)) and wide.narrow(6) == (1, math.sqrt(2 / 4))
    assert [narrow_channels(c, half) for c in (1, 3, 16, 64, 100)] == [1, 2, 11, 45, 71]


def _odd_model() -> nn.Module:
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=3, widths=(16, 32, 64)).eval()
    _randomize_bn(model)
    return model


def test_odd_bit_conv_is_full_branches_plus_the_leading_slice_of_one_more():
    """Against an independent reference: grouped conv over the full branches, then the narrow conv."""
    model = _odd_model()
    multiquant(model, MultiQuantConfig(bit_list=ODD, shuffle=False))
    conv = model.layers[1].conv1  # 16 -> 32 channels, stride 2
    base = conv.base_layer
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        conv.branch_weight.copy_(torch.randn(conv.branch_weight.shape, generator=gen))
    for bits, full, narrow in ((3, [0], 1), (5, [1, 2], 3), (7, [0, 1, 2], 3)):
        set_bits(model, bits)
        m_in, m_out = narrow_channels(16, math.sqrt(0.5)), narrow_channels(32, math.sqrt(0.5))
        assert (m_in, m_out) == (11, 23)
        x = torch.randn(2, len(full) * 16 + m_in, 8, 8, generator=gen)
        set_quantization(model, False)
        w = conv.branch_weight.detach()
        parts = [F.conv2d(x[:, 16 * j : 16 * (j + 1)], w[b], None, base.stride, base.padding) for j, b in enumerate(full)]
        parts.append(F.conv2d(x[:, 16 * len(full) :], w[narrow, :m_out, :m_in], None, base.stride, base.padding))
        torch.testing.assert_close(conv(x), torch.cat(parts, 1), rtol=1e-5, atol=1e-5)
        set_quantization(model, True)
        out = conv(x)
        row = conv.bit_list.index(bits)
        assert bool(conv.act_ready[row, narrow]) and out.shape[1] == len(full) * 32 + m_out


def test_odd_bit_gradients_reach_only_the_narrow_slice_of_the_extra_branch():
    model = _odd_model().train()
    multiquant(model, MultiQuantConfig(bit_list=ODD))
    set_bits(model, 3)
    model(torch.randn(4, 3, 16, 16)).logsumexp(-1).sum().backward()
    conv = model.layers[2].conv2  # 64 -> 64
    grad = conv.branch_weight.grad
    m = narrow_channels(64, math.sqrt(0.5))
    assert grad[0].abs().sum() > 0 and grad[2:].abs().sum() == 0  # branch 0 full, branches 2, 3 idle
    assert grad[1, :m, :m].abs().sum() > 0
    assert grad[1, m:].abs().sum() == 0 and grad[1, :, m:].abs().sum() == 0


def test_odd_bit_tile_merge_shuffle_and_batchnorm_layouts():
    model = _odd_model()
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    multiquant(model, MultiQuantConfig(bit_list=ODD))
    set_bits(model, 5)  # 2 full branches + the narrow slice of branch 3
    x = torch.randn(2, 3, 16, 16)
    stem = model.stem.base_layer(x)
    tiled = model.stem(x)
    torch.testing.assert_close(tiled, torch.cat([stem, stem, stem[:, :11]], 1))
    feats = torch.randn(2, 2 * 64 + 45)
    merged = (feats[:, :64] + feats[:, 64:128] + F.pad(feats[:, 128:], (0, 64 - 45))) / 3
    torch.testing.assert_close(model.fc(feats), model.fc.base_layer(merged))
    bn = model.layers[0].bn1
    assert [b.num_features for b in bn.bns] == [16, 16 + 11, 32, 32 + 11, 48, 48 + 11, 64]
    torch.testing.assert_close(bn.bns[3].weight, torch.cat([ref["layers.0.bn1.weight"]] * 2 + [ref["layers.0.bn1.weight"][:11]]))
    block = model.layers[1]  # a downsample block: the full branches are interleaved, the narrow chunk stays
    block.base_layer = nn.Identity()
    y = torch.arange(2 * 32 + 23, dtype=torch.float32).view(1, -1, 1, 1)
    out = block(y).flatten().tolist()
    assert out == [float(b * 32 + c) for c in range(32) for b in range(2)] + [float(64 + i) for i in range(23)]


def test_odd_bops_match_k_squared_macs_up_to_the_narrow_rounding():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=3).eval()
    x = torch.randn(1, 3, 16, 16)
    original = {r.name: r.macs for r in count_ops(model, x).rows}
    multiquant(model, MultiQuantConfig(bit_list=ODD))
    body = {n: m.base_layer for n, m in model.named_modules() if isinstance(m, MultiBranchConv)}
    half = math.sqrt(0.5)
    for bits in (3, 5, 7):
        set_bits(model, bits)
        rows = {r.name: r for r in count_ops(model, x).rows}
        total, target = 0, 0
        for name, conv in body.items():
            macs = original[name.replace(".base_layer", "")]
            m_in, m_out = narrow_channels(conv.in_channels, half), narrow_channels(conv.out_channels, half)
            narrow_macs = macs * m_in * m_out // (conv.in_channels * conv.out_channels)
            assert rows[name].bops == 2 * bits * (bits // 2 * macs + narrow_macs), name
            total, target = total + rows[name].bops, target + bits**2 * macs
        assert abs(total / target - 1) < 0.03, (bits, total / target)
    assert storage_bits(model)["bits_per_weight"] == 8  # the narrow branch shares a full branch's weights


def test_odd_bits_reject_grouped_convs_that_are_not_depthwise():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.body = nn.Conv2d(8, 8, 3, groups=2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.body(self.stem(x))).flatten(1))

    with pytest.raises(BadInputError, match=r"\[3\] need the narrow extra branch.*grouped: body"):
        multiquant(Grouped(), MultiQuantConfig(bit_list=(2, 3), stem="stem", groups=2, selection="prefix"))
    multiquant(Grouped(), MultiQuantConfig(bit_list=(2, 4), stem="stem", groups=2, selection="prefix"))


def test_odd_bits_run_on_mobilenet_depthwise_convs_and_train():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)
    multiquant(model, MultiQuantConfig(bit_list=(2, 3, 4), selection="prefix", groups=2))
    x = torch.randn(8, 3, 64, 64)  # not 1x1 at the end: train-mode BN over 2 values would pass no gradient
    init_bounds(model, x)
    for bits in (2, 3, 4):
        set_bits(model, bits)
        model(x).logsumexp(-1).sum().backward()
    depthwise = next(m for m in model.modules() if isinstance(m, MultiBranchConv) and m.base_layer.groups > 1)
    grad, m = depthwise.branch_weight.grad, narrow_channels(depthwise.base_layer.out_channels, math.sqrt(0.5))
    assert grad is not None and grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0  # 4 bits ran both branches
    model.zero_grad()
    set_bits(model, 3)
    model(x).logsumexp(-1).sum().backward()
    grad = depthwise.branch_weight.grad
    assert grad[1, :m].abs().sum() > 0 and grad[1, m:].abs().sum() == 0  # the depthwise narrow slice
