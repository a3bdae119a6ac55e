from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from slimkit.errors import BadInputError
from slimkit.surgery import (
    REASON_EXCLUDED,
    REASON_KEEP_FIRST,
    REASON_KEEP_LAST,
    REASON_NOT_INCLUDED,
    explain_selection,
    find_conv_bn_pairs,
    fold_batchnorm,
    get_module,
    select_modules,
    set_module,
)
from slimkit.wrappers import WrapperModule


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(self.bn1(self.conv1(x))).mean((2, 3))
        for block in self.blocks:
            x = block(x)
        return self.fc(x)


class _OddOrder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm_a = nn.BatchNorm2d(8)
        self.stem = nn.Conv2d(4, 8, 1)
        self.mixer = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm_a(self.mixer(self.stem(x))))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        if float(x.mean()) > 100:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.bn2(self.conv2(x))


LAYERS = (nn.Linear, nn.Conv2d)


def test_get_and_set_module_by_dotted_name_and_index() -> None:
    model = _Net()
    assert get_module(model, "") is model
    assert get_module(model, "body.0") is model.body[0]
    new = nn.Linear(4, 4)
    old = model.blocks[1]
    assert set_module(model, "blocks.1", new) is old and model.blocks[1] is new
    ident = nn.Identity()
    old_bn = model.body[1]
    assert set_module(model, "body.1", ident) is old_bn and model.body[1] is ident
    with pytest.raises(BadInputError, match=r"no submodule 'body\.9'"):
        set_module(model, "body.9", ident)
    with pytest.raises(BadInputError):
        get_module(model, "nope.x")
    with pytest.raises(BadInputError):
        set_module(model, "", ident)


def test_select_modules_globs_and_edges() -> None:
    model = _Net()
    names = [n for n, _ in select_modules(model, LAYERS)]
    assert names == ["conv1", "body.0", "blocks.0", "blocks.1", "fc"]
    assert [n for n, _ in select_modules(model, LAYERS, include=["blocks.*"])] == ["blocks.0", "blocks.1"]
    assert [n for n, _ in select_modules(model, LAYERS, exclude=["b*"])] == ["conv1", "fc"]
    kept = select_modules(model, LAYERS, keep_first=True, keep_last=True)
    assert [n for n, _ in kept] == ["body.0", "blocks.0", "blocks.1"]
    assert kept[0][1] is model.body[0]


def test_keep_first_last_overridden_only_by_exact_include() -> None:
    model = _Net()
    exact = select_modules(model, LAYERS, include=["conv1", "fc", "body.0"], keep_first=True, keep_last=True)
    assert [n for n, _ in exact] == ["conv1", "body.0", "fc"]
    glob = select_modules(model, LAYERS, include=["conv*", "f?"], keep_first=True, keep_last=True)
    assert [n for n, _ in glob] == []


def test_keep_first_with_types_mirrors_first_conv_last_linear() -> None:
    class LinearFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(2, 2)
            self.conv = nn.Conv2d(2, 2, 1)
            self.head = nn.Linear(2, 2)
            self.post = nn.Conv2d(2, 2, 1)

    model = LinearFirst()
    reasons = {n: r for n, _, r in explain_selection(model, LAYERS, keep_first=(nn.Conv2d,), keep_last=(nn.Linear,))}
    assert reasons == {"embed": None, "conv": REASON_KEEP_FIRST, "head": REASON_KEEP_LAST, "post": None}
    reasons = {n: r for n, _, r in explain_selection(model, LAYERS, keep_first=True, keep_last=True)}
    assert reasons == {"embed": REASON_KEEP_FIRST, "conv": None, "head": None, "post": REASON_KEEP_LAST}


def test_explain_selection_reasons_in_order() -> None:
    model = _Net()
    got = {n: r for n, _, r in explain_selection(model, LAYERS, include=["*"], exclude=["blocks.0"], keep_first=True)}
    assert got == {"conv1": REASON_KEEP_FIRST, "body.0": None, "blocks.0": REASON_EXCLUDED, "blocks.1": None, "fc": None}
    got = {n: r for n, _, r in explain_selection(model, LAYERS, include=["fc"], exclude=["fc"])}
    assert got["fc"] == REASON_EXCLUDED and got["conv1"] == REASON_NOT_INCLUDED


def test_exact_include_must_exist() -> None:
    with pytest.raises(BadInputError, match="include names no Linear/Conv2d layer: bn1, nope"):
        select_modules(_Net(), LAYERS, include=["nope", "bn1", "fc*"])


def test_pairing_by_fx_ignores_registration_order() -> None:
    pairs, how = find_conv_bn_pairs(_OddOrder())
    assert how == "fx" and pairs == {"mixer": "norm_a"}
    pairs, how = find_conv_bn_pairs(_OddOrder(), "names")
    assert how == "names" and pairs == {}


def test_pairing_falls_back_to_names() -> None:
    pairs, how = find_conv_bn_pairs(_Untraceable())
    assert how == "names" and pairs == {"conv2": "bn2"}
    with pytest.raises(BadInputError, match=r"torch.fx could not trace the model \(.*\); use 'names'"):
        find_conv_bn_pairs(_Untraceable(), "fx")
    with pytest.raises(BadInputError):
        find_conv_bn_pairs(_Untraceable(), "bogus")


def test_pairing_sequential_indices_and_wrappers() -> None:
    model = _Net()
    assert find_conv_bn_pairs(model) == ({"conv1": "bn1", "body.0": "body.1"}, "fx")
    assert find_conv_bn_pairs(model, "names") == ({"conv1": "bn1", "body.0": "body.1"}, "names")

    class Wrap(WrapperModule):
        pass

    class OwnsBN(WrapperModule):
        pairs_with_bn = False

    set_module(model, "conv1", Wrap(model.conv1))
    set_module(model, "body.0", OwnsBN(model.body[0]))
    assert find_conv_bn_pairs(model) == ({"conv1": "bn1"}, "fx")
    assert find_conv_bn_pairs(model, "names") == ({"conv1": "bn1"}, "names")


def _bn(channels: int, seed: int, affine: bool = True) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, affine=affine)
    bn.running_mean = torch.randn(channels, generator=g)
    bn.running_var = torch.rand(channels, generator=g) + 0.5
    if affine:
        bn.weight.data = torch.randn(channels, generator=g)
        bn.bias.data = torch.randn(channels, generator=g)
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_conv_matches_and_keeps_zeros(bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
    conv.weight.data[:, :, 0, 0] = 0.0
    bn = _bn(4, 1)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = bn(conv(x))
    out = fold_batchnorm(conv, bn)
    assert out is conv and conv.bias is not None
    assert torch.all(conv.weight[:, :, 0, 0] == 0)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert not conv.weight.requires_grad or conv.weight.grad is None


def test_fold_batchnorm_exact_formula_and_linear() -> None:
    lin = nn.Linear(2, 2)
    lin.weight.data = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    lin.bias.data = torch.tensor([1.0, -1.0])
    bn = nn.BatchNorm1d(2).eval()
    bn.running_mean = torch.tensor([1.0, 2.0])
    bn.running_var = torch.tensor([4.0 - bn.eps, 1.0 - bn.eps])
    bn.weight.data = torch.tensor([2.0, 3.0])
    bn.bias.data = torch.tensor([0.5, 0.0])
    fold_batchnorm(lin, bn)  # scale = [1, 3], shift = [0.5 - 1, 0 - 6] = [-0.5, -6]
    torch.testing.assert_close(lin.weight, torch.tensor([[1.0, 2.0], [9.0, 12.0]]))
    torch.testing.assert_close(lin.bias, torch.tensor([0.5, -9.0]))


def test_fold_batchnorm_refuses_mismatch_and_no_stats() -> None:
    with pytest.raises(BadInputError, match="does not follow"):
        fold_batchnorm(nn.Conv2d(1, 3, 1), _bn(4, 0))
    with pytest.raises(BadInputError, match="without running statistics"):
        fold_batchnorm(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(BadInputError):
        fold_batchnorm(nn.ReLU(), _bn(4, 0))
