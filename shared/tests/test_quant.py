from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, config_to_dict
from slimkit.quant import (
    DoReFaActivationQuantizer,
    DoReFaWeightQuantizer,
    IntervalQuantizer,
    LSQQuantizer,
    QuantSpec,
    SignBinarizer,
    dequantize_affine,
    dorefa_activation,
    dorefa_weight,
    fake_quantize,
    fake_quantize_affine,
    granular_param_shape,
    granular_view,
    interval_codes,
    interval_quantize,
    lsq_fake_quant,
    lsq_grad_scale,
    minmax_qparams,
    quant_range,
    quantize_affine,
    sign_binarize,
)

D = torch.float64


def t(values: Any, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=D, requires_grad=grad)


def gr(x: torch.Tensor) -> torch.Tensor:
    assert x.grad is not None
    return x.grad


# --------------------------------------------------------------------------- torchao's formulas, written here
# independently of slimkit.quant (torchao is not installed): blocks as torchao's ``block_size``,
# quantize ``clamp(round(x * (1/scale)) + zp, qmin, qmax)``, dequantize ``(q - zp) * scale``,
# min-max qparams of MappingType.SYMMETRIC / ASYMMETRIC.


def _ao_view(x: torch.Tensor, block: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    view, pshape, reduce = [], [], []
    for size, b in zip(x.shape, block):
        if b == 1:
            view.append(size)
            pshape.append(size)
        elif b == size:
            reduce.append(len(view))
            view.append(size)
            pshape.append(1)
        else:
            view += [size // b, b]
            pshape += [size // b, 1]
            reduce.append(len(view) - 1)
    return view, pshape, reduce


def ao_qparams(
    x: torch.Tensor, block: tuple[int, ...], qmin: int, qmax: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    view, pshape, reduce = _ao_view(x, block)
    xv = x.reshape(view)
    lo = torch.amin(xv, dim=reduce, keepdim=True).clamp(max=0)
    hi = torch.amax(xv, dim=reduce, keepdim=True).clamp(min=0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = torch.max(-lo, hi) / (float(qmax - qmin) / 2)
        return scale.clamp(min=eps).reshape(pshape), torch.zeros(pshape, dtype=x.dtype)
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=eps)
    zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale.reshape(pshape), zp.reshape(pshape)


def ao_fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, block: tuple[int, ...]
) -> torch.Tensor:
    view, pshape, _ = _ao_view(x, block)
    xv, s, z = x.reshape(view), scale.reshape(pshape), zp.reshape(pshape)
    q = torch.clamp(torch.round(xv * (1.0 / s)) + z, qmin, qmax)
    return ((q - z) * s).reshape(x.shape)


# --------------------------------------------------------------------------- grid, spec, granularity


def test_quant_range() -> None:
    assert quant_range(4, signed=True) == (-8, 7)
    assert quant_range(4, signed=False) == (0, 15)
    assert quant_range(1, signed=True) == (-1, 0)
    assert quant_range(8, signed=False) == (0, 255)
    for bad in (0, 17, 2.0, True):
        with pytest.raises(BadInputError):
            quant_range(bad, True)  # type: ignore[arg-type]


def test_quant_spec_validates_and_round_trips_through_slimkit_io() -> None:
    spec = QuantSpec(bits=3, signed=False, symmetric=False, granularity="group", group_size=4)
    assert (spec.qmin, spec.qmax) == (0, 7)
    d = config_to_dict(spec)
    assert d["_type"] == "QuantSpec" and d["group_size"] == 4
    assert config_from_dict(QuantSpec, d) == spec
    with pytest.raises(BadInputError):
        config_from_dict(QuantSpec, {**d, "bits": "3"})
    for kwargs in (
        {"bits": 0},
        {"granularity": "row"},
        {"granularity": "group"},
        {"granularity": "channel", "group_size": 2},
        {"signed": 1},
    ):
        with pytest.raises(BadInputError):
            QuantSpec(**kwargs)  # type: ignore[arg-type]


def test_granular_views_and_param_shapes() -> None:
    w = torch.arange(4 * 2 * 3 * 3, dtype=D).reshape(4, 2, 3, 3)
    v = granular_view(w, "group", group_size=6)  # groups over I*kh*kw = 18 per output channel
    assert v.shape == (4, 3, 6) and torch.equal(v[1, 2], torch.arange(18 + 12, 18 + 18, dtype=D))
    assert granular_param_shape(w.shape, "group", group_size=6) == (4, 3, 1)
    assert granular_param_shape(w.shape, "channel", axis=0) == (4, 1, 1, 1)
    assert granular_param_shape((8, 3, 5, 5), "channel", axis=1) == (1, 3, 1, 1)
    assert granular_param_shape((8, 3), "tensor") == ()
    assert granular_param_shape((12,), "group", group_size=4) == (1, 3, 1)
    with pytest.raises(BadInputError, match="does not divide"):
        granular_view(w, "group", group_size=7)
    with pytest.raises(BadInputError, match="out of range"):
        granular_view(w, "channel", axis=4)


# --------------------------------------------------------------------------- affine fake-quant == torchao


@pytest.mark.parametrize(("signed", "symmetric"), [(True, True), (True, False), (False, False)])
def test_fake_quantize_matches_torchao_formula(signed: bool, symmetric: bool) -> None:
    # (torchao's symmetric mapping is for signed grids; unsigned grids go with a zero point)
    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.randn(6, 16, generator=g), QuantSpec(4, signed, symmetric), (6, 16)),
        (torch.randn(6, 16, generator=g), QuantSpec(4, signed, symmetric, "channel", axis=0), (1, 16)),
        (torch.randn(6, 16, generator=g), QuantSpec(3, signed, symmetric, "group", group_size=4), (1, 4)),
        (torch.randn(2, 3, 8, generator=g), QuantSpec(5, signed, symmetric, "group", group_size=4), (1, 1, 4)),
    ]
    for x, spec, block in cases:
        scale, zp = ao_qparams(x, block, spec.qmin, spec.qmax, symmetric)
        expected = ao_fake_quant(x, scale, zp, spec.qmin, spec.qmax, block)
        assert torch.equal(fake_quantize(x, spec), expected), (spec, block)
        # same qparams as torchao's min-max (values; our shape is the granular one)
        s2, z2 = minmax_qparams(x, spec)
        assert torch.equal(s2.flatten(), scale.flatten()) and torch.equal(z2.flatten(), zp.flatten())
        # integer codes and dequantization agree with the fake-quant
        q = quantize_affine(spec.view(x), s2, z2, spec.qmin, spec.qmax)
        assert q.dtype == torch.int32 and int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
        assert torch.equal(dequantize_affine(q, s2, z2).reshape(x.shape), expected)


def test_fake_quantize_affine_matches_torch_builtin_forward_and_ste_mask() -> None:
    x = (torch.randn(200, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    out = fake_quantize_affine(x, torch.tensor(0.21), torch.tensor(3.0), -8, 7)
    ref = torch.fake_quantize_per_tensor_affine(ref_x, 0.21, 3, -8, 7)
    assert torch.equal(out, ref)
    (out * torch.arange(200.0)).sum().backward()
    (ref * torch.arange(200.0)).sum().backward()
    assert torch.equal(gr(x), gr(ref_x))
    assert 0 < int((gr(x) == 0).sum()) < 200  # some clipped, some passed

    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(2))
    scale = torch.tensor([0.1, 0.2, 0.05, 0.3, 0.15])
    zp = torch.tensor([0, 1, -2, 3, 0], dtype=torch.int32)
    spec = QuantSpec(4, symmetric=False, granularity="channel", axis=0)
    got = fake_quantize(w, spec, scale.view(5, 1), zp.view(5, 1).float())
    assert torch.equal(got, torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -8, 7))


# --------------------------------------------------------------------------- LSQ / LSQ+


def test_lsq_forward_and_gradients_by_hand() -> None:
    # step 0.5, signed 3 bits: qmin = -4, qmax = 3; a = x / 0.5
    x = t([-3.0, -1.1, -0.2, 0.0, 0.3, 0.76, 1.4, 2.0], grad=True)
    s = torch.tensor(0.5, dtype=D, requires_grad=True)
    g = lsq_grad_scale(8, 3)
    assert g == 1 / math.sqrt(24)
    y = lsq_fake_quant(x, s, -4, 3, grad_scale=g)
    # a = [-6, -2.2, -0.4, 0, 0.6, 1.52, 2.8, 4] -> clip [-4, 3] -> round -> * 0.5
    assert torch.equal(y.detach(), t([-2.0, -1.0, 0.0, 0.0, 0.5, 1.0, 1.5, 1.5]))
    up = torch.arange(1.0, 9.0, dtype=D)
    (y * up).sum().backward()
    # dy/dx = 1 strictly inside (-4 < a < 3), 0 at a = -6 and a = 4
    assert torch.equal(gr(x), up * t([0, 1, 1, 1, 1, 1, 1, 0]))
    # dy/ds = qmin below, round(a) - a inside, qmax above; times g
    local = [-4, 0.2, 0.4, 0.0, 0.4, 0.48, 0.2, 3]
    assert s.grad is not None
    assert math.isclose(float(gr(s)), g * sum(u * v for u, v in zip(up.tolist(), local)), rel_tol=1e-12)
    assert math.isclose(float(gr(s)), 27.88 / math.sqrt(24), rel_tol=1e-12)


def test_lsq_plus_offset_by_hand() -> None:
    # unsigned 2 bits [0, 3], step 0.5, offset 0.25: a = (x - 0.25) / 0.5 = [-0.5, 0, 0.7, 1.5, 4.5]
    x = t([0.0, 0.25, 0.6, 1.0, 2.5], grad=True)
    s = torch.tensor(0.5, dtype=D, requires_grad=True)
    beta = torch.tensor(0.25, dtype=D, requires_grad=True)
    y = lsq_fake_quant(x, s, 0, 3, grad_scale=1.0, offset=beta)
    assert torch.equal(y.detach(), t([0.25, 0.25, 0.75, 1.25, 1.75]))
    up = t([1, 2, 3, 4, 5])
    (y * up).sum().backward()
    assert torch.equal(gr(x), up * t([0, 0, 1, 1, 0]))  # a = 0 sits on qmin: outside
    assert math.isclose(float(gr(s)), 3 * 0.3 + 4 * 0.5 + 5 * 3, rel_tol=1e-12)  # qmin = 0 below
    assert float(gr(beta)) == 1 + 2 + 5  # d/dbeta = 1 outside, 0 inside


def test_lsq_matches_torchao_where_the_formulas_coincide() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, generator=g, dtype=D) * 3
    # symmetric: LSQ == torchao with zero_point 0, bit for bit (per tensor and per channel)
    s = torch.tensor(0.37, dtype=D)
    assert torch.equal(lsq_fake_quant(x, s, -8, 7), ao_fake_quant(x, s, torch.zeros(()), -8, 7, (4, 32)))
    sc = torch.tensor([0.2, 0.31, 0.5, 0.77], dtype=D).view(4, 1)
    assert torch.equal(lsq_fake_quant(x, sc, -8, 7), ao_fake_quant(x, sc, torch.zeros(4, 1), -8, 7, (1, 32)))
    # LSQ+ offset beta = -zero_point * step: the same grid as torchao's integer zero point
    # (equal away from exact .5 ties, where round(a + zp) and round(a) + zp may differ)
    zp = torch.tensor(5.0, dtype=D)
    lsqp = lsq_fake_quant(x, s, 0, 15, offset=-zp * s)
    ao = ao_fake_quant(x, s, zp, 0, 15, (4, 32))
    assert torch.allclose(lsqp, ao, rtol=0, atol=1e-12)


def test_lsq_quantizer_init_grad_scale_and_positive_step() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4), dtype=D)
    q = LSQQuantizer(QuantSpec(4)).double()
    y = q(x)  # first call initializes: step = 2 * mean|x| / sqrt(Q_P)
    assert bool(q.initialized)
    assert math.isclose(q.step.item(), 2 * float(x.abs().mean()) / math.sqrt(7), rel_tol=1e-12)
    assert q.gradient_scale(x) == 1 / math.sqrt(96 * 7)
    y.sum().backward()
    s_ref = q.step.detach().clone().requires_grad_()
    lsq_fake_quant(x, s_ref, -8, 7, grad_scale=1.0).sum().backward()
    assert q.step.grad is not None and s_ref.grad is not None
    assert math.isclose(gr(q.step).item(), float(gr(s_ref)) / math.sqrt(96 * 7), rel_tol=1e-12)
    # per_sample: N leaves out the batch (LSQ's N_F for activations)
    assert LSQQuantizer(QuantSpec(4), per_sample=True).gradient_scale(x) == 1 / math.sqrt(48 * 7)
    assert LSQQuantizer(QuantSpec(4), grad_scale=1.0).gradient_scale(x) == 1.0
    # a step pushed negative is used as |step| and its gradient mirrors
    step = q.step.item()
    with torch.no_grad():
        q.step.fill_(-step)
    q.step.grad = None
    y_neg = q(x)
    assert torch.equal(y_neg, y)
    y_neg.sum().backward()
    assert math.isclose(gr(q.step).item(), -float(gr(s_ref)) / math.sqrt(96 * 7), rel_tol=1e-12)
    with torch.no_grad():
        q.step.zero_()
    assert q.positive_step().item() == q.eps


def test_lsq_quantizer_per_channel_group_and_inits() -> None:
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(5), dtype=D)
    qc = LSQQuantizer(QuantSpec(3, granularity="channel", axis=0), shape=w.shape).double()
    qc.init_from(w)
    assert qc.step.shape == (3, 1)
    assert torch.allclose(qc.step, 2 * w.abs().mean(dim=1, keepdim=True) / math.sqrt(3), rtol=1e-12)
    qc(w).sum().backward()
    assert qc.gradient_scale(w) == 1 / math.sqrt(8 * 3)  # N = elements per channel
    qg = LSQQuantizer(QuantSpec(3, granularity="group", group_size=4), shape=w.shape).double()
    qg.init_from(w)
    assert qg.step.shape == (3, 2, 1) and qg.gradient_scale(qg.spec.view(w)) == 1 / math.sqrt(4 * 3)
    assert torch.allclose(qg.step.flatten(), 2 * w.reshape(6, 4).abs().mean(dim=1) / math.sqrt(3), rtol=1e-12)
    # LSQ+ min-max init for an offset: step = (max - min) / (qmax - qmin), offset = min
    x = torch.rand(64, dtype=D) * 3 - 0.5
    qa = LSQQuantizer(QuantSpec(4, signed=False, symmetric=False)).double()
    qa.init_from(x)
    assert qa.offset is not None and qa.init == "minmax"
    assert math.isclose(qa.step.item(), float(x.max() - x.min()) / 15, rel_tol=1e-12)
    assert qa.offset.item() == float(x.min())
    fq = qa(x).detach()
    assert float(fq.min()) == float(x.min()) and math.isclose(float(fq.max()), float(x.max()), rel_tol=1e-12)
    # LSQ+ weight init: max(|mu - 3 sd|, |mu + 3 sd|) / 2^(b-1)
    qs = LSQQuantizer(QuantSpec(4), init="sigma").double()
    qs.init_from(w)
    mu, sd = float(w.mean()), float(w.std())
    assert math.isclose(qs.step.item(), max(abs(mu - 3 * sd), abs(mu + 3 * sd)) / 8, rel_tol=1e-12)


def test_lsq_quantizer_int_repr_state_dict_and_errors() -> None:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(6))
    q = LSQQuantizer(QuantSpec(4, granularity="channel"), shape=x.shape)
    y = q(x)
    codes = q.int_repr(x)
    assert codes.dtype == torch.int32 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    assert torch.allclose(codes.float() * q.positive_step().detach(), y.detach(), rtol=0, atol=1e-6)
    q2 = LSQQuantizer(QuantSpec(4, granularity="channel"), shape=x.shape)
    q2.load_state_dict(q.state_dict())
    assert bool(q2.initialized) and torch.equal(q2(x), y)
    with pytest.raises(BadInputError, match="Q_P"):
        LSQQuantizer(QuantSpec(1, signed=True))
    with pytest.raises(BadInputError, match="needs the shape"):
        LSQQuantizer(QuantSpec(4, granularity="channel"))
    with pytest.raises(BadInputError, match="init"):
        LSQQuantizer(QuantSpec(4), init="mse")
    assert "bits=4" in repr(q)


# --------------------------------------------------------------------------- learned interval (MultiQuant)


def test_interval_activation_values_and_gradients_by_hand() -> None:
    x = t([-1.0, 0.4, 1.6, 2.6, 4.0], grad=True)
    lo = torch.tensor(0.0, dtype=D, requires_grad=True)
    hi = torch.tensor(3.0, dtype=D, requires_grad=True)
    y = interval_quantize(x, lo, hi, bits=2)
    # t = clip(x / 3, 0, 1); round(3 t) / 3
    assert torch.allclose(y.detach(), t([0.0, 0.0, 2 / 3, 1.0, 1.0]), rtol=0, atol=1e-15)
    y.sum().backward()
    inside = [0.4, 1.6, 2.6]  # clipped elements pass no gradient to x, lower or upper
    assert torch.allclose(gr(x), t([0, 1 / 3, 1 / 3, 1 / 3, 0]), rtol=0, atol=1e-15)
    assert math.isclose(float(gr(lo)), sum(v - 3 for v in inside) / 9, rel_tol=1e-12)  # (x - u) / (u - l)^2
    assert math.isclose(float(gr(hi)), -sum(v - 0 for v in inside) / 9, rel_tol=1e-12)  # -(x - l) / (u - l)^2


def test_interval_weight_levels_and_init() -> None:
    w = t([-2.0, -0.5, 0.1, 0.9], grad=True)
    y = interval_quantize(w, -1.0, 1.0, bits=2, mode="weight")
    assert torch.allclose(y.detach(), t([-1.0, -1 / 3, 1 / 3, 1.0]), rtol=0, atol=1e-15)
    y.sum().backward()
    assert torch.equal(gr(w), t([0, 1, 1, 1]))  # 2 / (u - l) = 1 inside
    data = torch.randn(4, 9, generator=torch.Generator().manual_seed(7), dtype=D)
    qw = IntervalQuantizer(2, mode="weight").double()
    qw.init_from(data)
    assert math.isclose(qw.upper.item(), 3 * float(data.std()), rel_tol=1e-12) and qw.lower.item() == -qw.upper.item()
    out = qw(data)
    assert set(torch.round(out * 3).unique().tolist()) <= {-3.0, -1.0, 1.0, 3.0}
    qa = IntervalQuantizer(3, mode="activation").double()
    act = data.relu()
    qa(act)  # first call initializes
    assert math.isclose(qa.upper.item(), 3 * float(act.std()) / math.sqrt(1 - 2 / math.pi), rel_tol=1e-12)
    assert qa.lower.item() == float(act.min())
    qc = IntervalQuantizer(2, mode="weight", shape=data.shape, granularity="channel").double()
    qc.init_from(data)
    assert torch.allclose(qc.upper.flatten(), 3 * data.std(dim=1), rtol=1e-12)
    with pytest.raises(BadInputError):
        IntervalQuantizer(2, mode="both")


# --------------------------------------------------------------------------- DoReFa


def test_dorefa_activation_by_hand() -> None:
    x = t([-0.5, 0.1, 0.2, 0.9, 1.5], grad=True)
    y = dorefa_activation(x, 2)  # round(3 * clip(x, 0, 1)) / 3
    assert torch.allclose(y.detach(), t([0, 0, 1 / 3, 1, 1]), rtol=0, atol=1e-15)
    y.sum().backward()
    assert torch.equal(gr(x), t([0, 1, 1, 1, 0]))
    assert dorefa_activation(x, 32) is x
    assert torch.equal(DoReFaActivationQuantizer(2)(x), y)


def test_dorefa_weight_by_hand() -> None:
    w = t([-1.0, -0.2, 0.3, 2.0], grad=True)
    # tanh / (2 max|tanh|) + 1/2 = [0.105, 0.398, 0.651, 1.0]; x3 = [0.31, 1.19, 1.95, 3] -> [0, 1, 2, 3] / 3
    y = dorefa_weight(w, 2)
    assert torch.allclose(y.detach(), t([-1.0, -1 / 3, 1 / 3, 1.0]), rtol=0, atol=1e-15)
    # gradient: autograd through tanh and max|tanh| with a straight-through round
    y.sum().backward()
    w2 = w.detach().clone().requires_grad_()
    th = torch.tanh(w2)
    (2 * (th / (2 * th.abs().max()) + 0.5)).sum().backward()  # the same function without the round
    assert torch.allclose(gr(w), gr(w2), rtol=1e-12)
    mean_abs = float(w.detach().abs().mean())
    assert torch.allclose(dorefa_weight(w, 2, scale=True).detach(), y.detach() * mean_abs, rtol=1e-12)
    # 1 bit: sign(w) * mean|w|, sign(0) = +1, identity gradient
    b = t([-0.5, 0.0, 1.5], grad=True)
    yb = DoReFaWeightQuantizer(1)(b)
    assert torch.allclose(yb.detach(), t([-2 / 3, 2 / 3, 2 / 3]), rtol=1e-12)
    (yb * t([1, 2, 3])).sum().backward()
    assert torch.equal(gr(b), t([1, 2, 3]))
    assert dorefa_weight(w, 32) is w
    with pytest.raises(BadInputError):
        dorefa_weight(w, 20)


# --------------------------------------------------------------------------- sign binarizers


@pytest.mark.parametrize(
    ("ste", "grad"),
    [
        ("plain", [1, 1, 1, 1, 1, 1, 1]),
        ("clipped", [0, 1, 1, 1, 1, 1, 0]),  # 1{|x| <= 1}
        ("approx_sign", [0, 0, 1, 2, 1, 0, 0]),  # 2 - 2|x| on [-1, 1]
    ],
)
def test_sign_binarize_forward_and_stes(ste: str, grad: list[float]) -> None:
    x = t([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], grad=True)
    y = sign_binarize(x, ste)
    assert torch.equal(y.detach(), t([-1, -1, -1, 1, 1, 1, 1]))  # sign(0) = +1
    y.sum().backward()
    assert torch.equal(gr(x), t(grad))
    approx = t([-0.75, -0.25, 0.25, 0.75], grad=True)
    sign_binarize(approx, "approx_sign").sum().backward()
    if ste == "approx_sign":  # 2 + 2x below 0, 2 - 2x above
        assert torch.equal(gr(approx), t([0.5, 1.5, 1.5, 0.5]))


def test_sign_binarizer_scales() -> None:
    w = t([[1.0, -2.0, 3.0], [0.0, -0.5, 0.5]], grad=True)
    y = SignBinarizer("clipped", scale="channel")(w)
    assert torch.allclose(y.detach(), t([[2, -2, 2], [1 / 3, -1 / 3, 1 / 3]]), rtol=1e-12)
    y.sum().backward()  # alpha detached: the gradient is the clipped STE times alpha
    assert torch.allclose(gr(w), t([[2, 0, 0], [1 / 3, 1 / 3, 1 / 3]]), rtol=1e-12)
    assert torch.allclose(SignBinarizer(scale="tensor")(w).detach(), t([[1, -1, 1], [1, -1, 1]]) * 7 / 6, rtol=1e-12)
    assert torch.equal(SignBinarizer()(w).detach(), t([[1, -1, 1], [1, -1, 1]]))
    v = t([1.5, -2.0, 0.0])  # 1-d, per channel: every element is its own channel, alpha = |x|
    assert torch.equal(SignBinarizer(scale="channel")(v), t([1.5, -2.0, 0.0]))
    with pytest.raises(BadInputError):
        SignBinarizer("tanh")
    with pytest.raises(BadInputError):
        sign_binarize(w, "clip")


def test_interval_codes_are_the_levels_interval_quantize_rounds_to() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, generator=g) * 2
    lower, upper = torch.tensor([[-1.0], [-0.5], [0.0], [0.3]]), torch.tensor([[1.0], [0.5], [0.2], [0.3]])
    for bits in (1, 2, 4):
        codes = interval_codes(x, lower, upper, bits)
        levels = 2**bits - 1
        assert codes.dtype == torch.int64 and int(codes.min()) >= 0 and int(codes.max()) <= levels
        r = codes.float() / levels  # the float32 arithmetic interval_quantize does after rounding
        assert torch.equal(r, interval_quantize(x, lower, upper, bits))
        assert torch.equal(2 * (r - 0.5), interval_quantize(x, lower, upper, bits, "weight"))
