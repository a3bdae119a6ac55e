"""Any-Precision and per-bit LSQ: the quantizers' values, the per-bit switch, the recursive loss, BOPs, undo, training."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from arbitrary_quant.baselines import (
    AnyPrecisionLayer,
    LSQLayer,
    PerBitBatchNorm,
    any_precision,
    any_precision_weight,
    apply_any_precision,
    apply_lsq,
    init_lsq,
    lsq_quantize,
    recursive_distillation,
    recursive_loss,
)
from arbitrary_quant.config import AnyPrecisionConfig, LSQConfig
from arbitrary_quant.multiquant import current_bits, multiquant, set_bits
from arbitrary_quant.registry import REGISTRY
from arbitrary_quant.training import AllBitsForward
from slimkit.data import digits
from slimkit.errors import BadInputError
from slimkit.evaluate import top1
from slimkit.io import config_to_dict
from slimkit.opcount import count_ops
from slimkit.quant import dorefa_activation, dorefa_weight
from slimkit.train import TrainConfig, train
from slimkit.wrappers import WrapperModule, unwrap_modules
from slimkit.zoo import SmallResNet

# the module, not the functions it exports
bl = importlib.import_module("arbitrary_quant.baselines")


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so copies and undo are really checked."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _small(in_chans: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=in_chans)
    _randomize_bn(model)
    return model


def _layers(model: nn.Module, cls: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


# --------------------------------------------------------------------------- Any-Precision


def test_dorefa_values_match_the_formula_on_hand_made_tensors():
    w = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    # tanh / (2 max|tanh|) + 1/2 = [0, .268, .5, .732, 1]; x3 = [0, .80, 1.5, 2.20, 3] -> [0, 1, 2, 2, 3] (half to even)
    expected = torch.tensor([-1.0, -1 / 3, 1 / 3, 1 / 3, 1.0]) * 1.4  # E = mean|w| = 7 / 5
    torch.testing.assert_close(any_precision_weight(w, 2), expected)
    # 1 bit, the official formula: round(unit) in {0, 1}, 0.5 rounds to 0 (DoReFa's sign(0) = +1 would differ)
    torch.testing.assert_close(any_precision_weight(w, 1), torch.tensor([-1.4, -1.4, -1.4, 1.4, 1.4]))
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(8, 4, 3, 3, generator=gen)
    for bits in range(2, 9):  # slimkit's DoReFa with Any-Precision's scale, bit for bit
        assert torch.equal(any_precision_weight(r, bits), dorefa_weight(r, bits, scale=True))
    # E is detached: the gradient flows through tanh and the max only
    wr = w.clone().requires_grad_(True)
    any_precision_weight(wr, 2).sum().backward()
    assert wr.grad is not None and torch.isfinite(wr.grad).all()
    x = torch.tensor([-0.5, 0.1, 0.2, 0.5, 0.9, 1.7], requires_grad=True)
    # clip -> [0, .1, .2, .5, .9, 1]; x3 -> [0, .3, .6, 1.5, 2.7, 3] -> [0, 0, 1, 2, 3, 3]
    out = dorefa_activation(x, 2)
    assert torch.equal(out, torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0]) / 3)
    out.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # STE inside [0, 1]


def test_layer_forward_is_dorefa_inputs_times_dorefa_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    layer = AnyPrecisionLayer(conv, (2, 4, 8))
    x = torch.randn(2, 4, 8, 8) * 0.7 + 0.3
    for bits in (2, 4, 8):
        layer.set_bits(bits)
        ref = F.conv2d(dorefa_activation(x, bits), any_precision_weight(conv.weight, bits), conv.bias, 2, 1)
        assert torch.equal(layer(x), ref)
    linear = AnyPrecisionLayer(nn.Linear(5, 3), (4,))
    xl = torch.rand(2, 5)
    assert torch.equal(
        linear(xl),
        F.linear(dorefa_activation(xl, 4), any_precision_weight(linear.base_layer.weight, 4), linear.base_layer.bias),
    )


def test_conversion_report_on_a_torchvision_resnet():
    model = torchvision.models.resnet18(num_classes=10)
    report = apply_any_precision(model, AnyPrecisionConfig())
    convs = [n for n, m in torchvision.models.resnet18().named_modules() if isinstance(m, nn.Conv2d)]
    assert (report.stem, report.head) == ("maxpool", "fc") and report.layers == convs[1:]
    assert len(report.batchnorms) == 19 and report.skipped == []
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.bn1, nn.BatchNorm2d)  # stem stays FP and shared
    assert isinstance(model.fc, nn.Linear) and isinstance(model.layer1[0].bn1, PerBitBatchNorm)
    assert [bn.num_features for bn in model.layer1[0].bn1.bns] == [64] * 4  # original widths, one per bit-width
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(BadInputError, match="already quantized"):
        apply_any_precision(model, AnyPrecisionConfig())
    official = torchvision.models.resnet18(num_classes=10)
    report = apply_any_precision(official, AnyPrecisionConfig(exclude=["*downsample*"]))
    assert [n for n, _ in report.skipped] == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert isinstance(official.layer2[0].downsample[0], nn.Conv2d)


def test_weights_take_at_most_2_to_the_k_values_and_inputs_sit_on_the_k_bit_grid(monkeypatch):
    model = any_precision(_small().eval(), AnyPrecisionConfig(bit_list=(1, 2, 3, 4, 8)))
    seen: list[torch.Tensor] = []
    real = bl.F.conv2d

    def spy(x, w, *args):
        seen.append(x.detach())
        return real(x, w, *args)

    monkeypatch.setattr(bl.F, "conv2d", spy)
    x = torch.randn(4, 3, 16, 16)
    for bits in (1, 2, 3, 4, 8):
        set_bits(model, bits)
        levels = 2**bits - 1
        for layer in _layers(model, AnyPrecisionLayer):
            w = layer.quantized_weight().detach()
            e = layer.latent_weight.detach().abs().mean()
            assert w.unique().numel() <= 2**bits
            grid = (w / e + 1) / 2 * levels  # integer codes 0..2^k - 1
            torch.testing.assert_close(grid, grid.round(), atol=1e-4, rtol=0)
        seen.clear()
        with torch.no_grad():
            model(x)
        assert len(seen) == 1 + 5  # F.conv2d is patched for every caller: the FP stem conv, then the body's 5
        for inputs in seen[1:]:
            assert inputs.min() >= 0 and inputs.max() <= 1
            torch.testing.assert_close(inputs * levels, (inputs * levels).round(), atol=1e-5, rtol=0)


def test_batchnorm_is_per_bit_width_and_set_bits_switches_every_wrapper():
    model = _small().train()
    stem_bn = copy.deepcopy(model.stem[1].state_dict())
    any_precision(model, AnyPrecisionConfig())
    assert current_bits(model) == 8
    bn = model.layers[0].bn1
    before = [copy.deepcopy(b.state_dict()) for b in bn.bns]
    set_bits(model, 4)
    assert current_bits(model) == 4 and all(m.bits == 4 for m in _layers(model, bl.Switchable))
    model(torch.randn(8, 3, 16, 16))  # training mode: only the 4-bit BatchNorms' statistics move
    for bits, b, old in zip(bn.bit_list, bn.bns, before):
        moved = not torch.equal(b.running_mean, old["running_mean"])
        assert moved == (bits == 4)
        assert int(b.num_batches_tracked) == int(old["num_batches_tracked"]) + (bits == 4)
    assert not torch.equal(model.stem[1].running_mean, stem_bn["running_mean"])  # the shared stem BN moves
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    outs = {}
    for bits in (2, 4, 8):
        set_bits(model, bits)
        outs[bits] = model(x)
    assert not torch.equal(outs[2], outs[8]) and not torch.equal(outs[4], outs[8])
    with pytest.raises(BadInputError, match=r"3 bits is not in the trained bit_list \[2, 4, 6, 8\]"):
        set_bits(model, 3)
    stacked = AllBitsForward(model, (2, 4, 8))(x)
    assert stacked.shape == (3, 2, 10) and current_bits(model) == 8
    assert torch.equal(stacked[2], outs[2]) and torch.equal(stacked[0], outs[8])


def test_recursive_loss_equals_its_hand_computation():
    z = torch.tensor(
        [
            [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]],  # 8 bits
            [[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]],  # 4 bits
            [[0.0, 0.0, 1.0], [1.0, 0.0, -1.0]],  # 2 bits
        ],
        requires_grad=True,
    )
    y = torch.tensor([0, 1])

    def soft_ce(student, teacher):  # -sum_c softmax(teacher)_c log softmax(student)_c, batch mean
        p = torch.exp(teacher) / torch.exp(teacher).sum(-1, keepdim=True)
        logq = student - torch.log(torch.exp(student).sum(-1, keepdim=True))
        return float(-(p * logq).sum(-1).mean())

    zd = z.detach()
    ce = float(-(zd[0, 0, 0] - torch.logsumexp(zd[0, 0], 0) + zd[0, 1, 1] - torch.logsumexp(zd[0, 1], 0)) / 2)
    expected = {"loss_8bit": ce, "loss_4bit": soft_ce(zd[1], zd[0]), "loss_2bit": soft_ce(zd[2], zd[1])}
    total, metrics = recursive_distillation(z, y, (8, 4, 2))
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6)
    assert float(total.detach()) == pytest.approx(sum(expected.values()), rel=1e-6)
    # every teacher is detached: the 8-bit logits get the label CE's gradient only, the 4-bit ones only their own term's
    total.backward()
    grad = z.grad
    assert grad is not None
    torch.testing.assert_close(grad[0], (torch.softmax(z[0], -1) - F.one_hot(y, 3)).detach() / 2)
    torch.testing.assert_close(grad[1], (torch.softmax(z[1], -1) - torch.softmax(z[0], -1)).detach() / 2)

    class Stacked(nn.Module):  # what AllBitsForward returns, on fixed logits
        bit_list = (8, 4, 2)

        def forward(self, x):
            return z.detach()

    loss, again = recursive_loss()(Stacked(), (torch.zeros(2), y))
    assert again == metrics and float(loss) == pytest.approx(float(total.detach()))
    with pytest.raises(BadInputError, match="AllBitsForward"):
        recursive_loss()(nn.Identity(), (torch.zeros(2), y))
    with pytest.raises(BadInputError, match=r"expected logits \[2, batch, classes\]"):
        recursive_distillation(z, y, (8, 4))
    with pytest.raises(BadInputError, match="largest first"):
        recursive_distillation(z, y, (2, 4, 8))


def test_bops_are_k_squared_macs_for_any_precision():
    model = _small().eval()
    x = torch.randn(1, 3, 16, 16)
    original = {r.name: r.macs for r in count_ops(model, x).rows}
    any_precision(model, AnyPrecisionConfig())
    body = {n for n, m in model.named_modules() if isinstance(m, AnyPrecisionLayer)}
    assert len(body) == 5
    for bits in (2, 4, 6, 8):
        set_bits(model, bits)
        rows = {r.name: r for r in count_ops(model, x).rows}
        for name in body:
            assert (rows[name].w_bits, rows[name].a_bits) == (bits, bits)
            assert rows[name].macs == original[name] and rows[name].bops == bits**2 * original[name]
        assert rows["stem.0"].fp_flops == original["stem.0"] and rows["stem.0"].bops == 0
        assert rows["fc"].fp_flops == original["fc"] and rows["fc"].bops == 0


# --------------------------------------------------------------------------- LSQ


def test_lsq_weights_per_channel_take_at_most_2_to_the_b_levels_and_codes_times_step_are_exact():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    report = apply_lsq(model, LSQConfig(w_bits=3, a_bits=4))
    assert report.skipped == [("conv1", "first kept dense"), ("fc", "last kept dense")] and len(report.layers) == 19
    for layer in _layers(model, LSQLayer):
        w = layer.quantized_weight().detach()
        codes, step = layer.int_weight()
        assert codes.dtype == torch.int8 and codes.shape == w.shape
        assert step.shape == (w.shape[0], 1, 1, 1) and (step > 0).all()
        assert codes.min() >= -4 and codes.max() <= 3
        assert torch.equal(codes.float() * step, w)
        levels = (w.flatten(1).sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1  # distinct values per channel
        assert levels.max() <= 2**3 and step.unique().numel() > 1  # the steps are per channel
    per_layer = lsq_quantize(_small(), LSQConfig(w_bits=2, per_channel=False, weight_init="sigma"))
    for layer in _layers(per_layer, LSQLayer):
        codes, step = layer.int_weight()
        assert step.shape == () and torch.equal(codes.float() * step, layer.quantized_weight())
        assert layer.quantized_weight().unique().numel() <= 4
        sd = layer.latent_weight.detach()
        mu, sigma = sd.mean(), sd.std()
        assert float(step) == pytest.approx(float(torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2))
    plain = copy.deepcopy(per_layer)
    unwrap_modules(plain, plain=True)  # deployment copy: the quantized weights in plain layers
    assert torch.equal(plain.layers[0].conv1.weight, per_layer.layers[0].conv1.quantized_weight())


def test_lsq_input_init_unsigned_for_non_negative_inputs_offset_otherwise(monkeypatch):
    torch.manual_seed(0)
    config = LSQConfig(w_bits=4, a_bits=3)
    pos, neg = (LSQLayer(nn.Conv2d(4, 4, 3), config.w_bits, config.a_bits) for _ in range(2))
    x = torch.randn(8, 4, 6, 6)
    seen: list[torch.Tensor] = []
    real = bl.F.conv2d

    def spy(inputs, w, *args):
        seen.append(inputs.detach())
        return real(inputs, w, *args)

    monkeypatch.setattr(bl.F, "conv2d", spy)
    pos(x.relu())
    neg(x)
    q_p = 7
    a = pos.act_quant
    assert a.init == "lsq" and a.offset.item() == 0.0
    assert a.step.item() == pytest.approx(float(2 * x.relu().mean() / math.sqrt(q_p)))
    b = neg.act_quant
    assert b.init == "minmax" and b.offset.item() == pytest.approx(float(x.min()))
    assert b.step.item() == pytest.approx(float((x.max() - x.min()) / q_p))
    for inputs, quant in zip(seen, (a, b)):  # the conv sees offset + step * {0..7}
        codes = (inputs - quant.offset.detach()) / quant.positive_step().detach()
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
        assert codes.round().unique().numel() <= 8 and codes.min() > -1e-4 and codes.max() < q_p + 1e-4
    # parameters exist before the first batch (an optimizer built first sees them); init_lsq fills them
    model = lsq_quantize(_small())
    names = {n for n, _ in model.named_parameters()}
    assert "layers.0.conv1.act_quant.offset" in names and "layers.0.conv1.weight_quant.step" in names
    model.train()
    init_lsq(model, torch.randn(4, 3, 16, 16))
    assert model.training and all(bool(m.act_quant.initialized) for m in _layers(model, LSQLayer))
    with pytest.raises(BadInputError, match="no LSQ layers"):
        init_lsq(_small(), torch.randn(1, 3, 16, 16))


def test_lsq_ops_are_counted_at_w_bits_and_a_bits():
    model = _small().eval()
    x = torch.randn(1, 3, 16, 16)
    original = {r.name: r.macs for r in count_ops(model, x).rows}
    lsq_quantize(model, LSQConfig(w_bits=2, a_bits=4))
    rows = {r.name: r for r in count_ops(model, x).rows}
    body = [n for n, m in model.named_modules() if isinstance(m, LSQLayer)]
    assert body == ["layers.0.conv1", "layers.0.conv2", "layers.1.conv1", "layers.1.conv2", "layers.1.shortcut.0"]
    for name in body:
        assert (rows[name].w_bits, rows[name].a_bits) == (2, 4) and rows[name].bops == 8 * original[name]
    assert rows["stem.0"].bops == 0 and rows["fc"].bops == 0


# --------------------------------------------------------------------------- both


def test_configs_round_trip_and_validate():
    ap = AnyPrecisionConfig(bit_list=[8, 2, 4], include="layers*", exclude="*shortcut*", stem="stem")
    assert ap.bit_list == (2, 4, 8) and ap.include == ["layers*"] and ap.exclude == ["*shortcut*"]
    lsq = LSQConfig(w_bits=3, a_bits=5, per_channel=False, weight_init="sigma", exclude=["fc"])
    for config in (ap, lsq, AnyPrecisionConfig(), LSQConfig()):
        again = REGISTRY.config_from_dict(config_to_dict(config))
        assert again == config and type(again) is type(config)
    assert REGISTRY.handler(ap) is apply_any_precision and REGISTRY.handler(lsq) is apply_lsq
    for cls, kwargs, message in [
        (AnyPrecisionConfig, {"bit_list": ()}, "bit_list is empty"),
        (AnyPrecisionConfig, {"bit_list": (2, 9)}, "bit-widths 1..8"),
        (LSQConfig, {"w_bits": 1}, "w_bits must be 2..8"),
        (LSQConfig, {"a_bits": True}, "a_bits must be 2..8"),
        (LSQConfig, {"per_channel": "yes"}, "per_channel must be true or false"),
        (LSQConfig, {"weight_init": "mse"}, "weight_init must be one of lsq, sigma"),
    ]:
        with pytest.raises(BadInputError, match=message):
            cls(**kwargs)


@pytest.mark.parametrize("method", ["any_precision", "lsq"])
@pytest.mark.parametrize("arch", ["small_resnet", "tv_resnet18"])
def test_undo_is_exact_and_the_wrapped_originals_untouched_by_training(method, arch):
    torch.manual_seed(0)
    model = _small() if arch == "small_resnet" else torchvision.models.resnet18(num_classes=10)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    before, state = model(x), copy.deepcopy(model.state_dict())
    convert = any_precision if method == "any_precision" else lsq_quantize
    convert(model)
    for bits in (8, 2) if method == "any_precision" else (None,):
        if bits is not None:
            set_bits(model, bits)
        model(x).sum().backward()  # eval mode: no statistics move
    assert unwrap_modules(model) > 0 and not any(isinstance(m, WrapperModule) for m in model.modules())
    assert torch.equal(model(x), before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # a training step moves the trained copies (and the FP stem / head), never the wrapped originals
    convert(model).train()
    wrappers = [m for m in model.modules() if isinstance(m, (AnyPrecisionLayer, PerBitBatchNorm, LSQLayer))]
    originals = [copy.deepcopy(m.base_layer.state_dict()) for m in wrappers]
    latent = [m.latent_weight.detach().clone() for m in wrappers if not isinstance(m, PerBitBatchNorm)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).logsumexp(-1).sum().backward()
    opt.step()
    for m, old in zip(wrappers, originals):
        assert all(torch.equal(v, m.base_layer.state_dict()[k]) for k, v in old.items())
    moved = [m.latent_weight for m in wrappers if not isinstance(m, PerBitBatchNorm)]
    assert all(not torch.equal(a, b) for a, b in zip(latent, moved))


def test_bad_models_are_one_line_errors():
    with pytest.raises(BadInputError, match=r"pass AnyPrecisionConfig\(stem=\.\.\.\)"):
        any_precision(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2)))
    with pytest.raises(BadInputError, match=r"include names no Conv2d/Linear layer of the body: stem\.0"):
        any_precision(_small(), AnyPrecisionConfig(include=["stem.0"]))
    with pytest.raises(BadInputError, match="no Conv2d/Linear layer of the body"):
        any_precision(_small(), AnyPrecisionConfig(exclude=["layers*"]))
    reflect = _small()
    reflect.layers[0].conv1.padding_mode = "reflect"
    with pytest.raises(BadInputError, match=r"layers\.0\.conv1: padding_mode='reflect' is not supported"):
        lsq_quantize(reflect)
    assert not any(isinstance(m, LSQLayer) for m in reflect.modules())  # refused before any change
    with pytest.raises(BadInputError, match="no Conv2d/Linear layer is left"):
        lsq_quantize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2)))
    converted = multiquant(_small())
    with pytest.raises(BadInputError, match="already quantized"):
        lsq_quantize(converted)


def _mean(result, key: str, rows: slice) -> float:
    values = [row[key] for row in result.metrics[rows]]
    return sum(values) / len(values)


@pytest.mark.parametrize("method", ["any_precision", "lsq"])
def test_forty_training_steps_on_digits_lower_the_loss(method, tmp_path):
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_chans=1)
    data = digits("train")
    config = TrainConfig(
        output_dir=str(tmp_path), max_steps=40, batch_size=64, lr=3e-2, cpu=True, progress=False, log_every=1
    )
    if method == "any_precision":
        any_precision(model, AnyPrecisionConfig(bit_list=(2, 4, 8)))
        result = train(AllBitsForward(model, (2, 4, 8)), data, config, loss_fn=recursive_loss())
        keys = ["loss_8bit", "loss_4bit", "loss_2bit"]
    else:
        lsq_quantize(model, LSQConfig(w_bits=4, a_bits=4))
        init_lsq(model, data.tensors[0][:64])
        result = train(model, data, config)
        keys = ["loss"]
    assert result.steps == 40 and len(result.metrics) == 40
    first = {k: _mean(result, k, slice(0, 5)) for k in keys}
    last = {k: _mean(result, k, slice(-5, None)) for k in keys}
    assert last[keys[0]] < 0.25 * first[keys[0]], (first, last)  # the labels' CE: about 2.3 -> 0.2
    assert all(last[k] < first[k] for k in keys), (first, last)  # each lower bit-width follows its teacher
    val = digits("val")
    for bits in (8, 2) if method == "any_precision" else (None,):
        if bits is not None:
            set_bits(model, bits)
        assert top1(model, val) > 0.8  # measured: 0.91 (8 bits), 0.89 (2 bits), 0.92 (LSQ W4A4)
