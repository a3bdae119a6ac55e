from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from slimkit.wrappers import WrapperModule, unwrap_modules, wrapped_modules


class Halve(WrapperModule):
    """Test wrapper: the effective weight is half the base weight."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.base_layer.weight * 0.5, self.base_layer.bias)

    def to_plain(self) -> nn.Module:
        plain = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            plain.weight.mul_(0.5)
        return plain


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))


def test_wrapper_keeps_base_layer_and_forwards_attributes() -> None:
    base = nn.Linear(3, 4)
    wrapper = WrapperModule(base)
    assert wrapper.base_layer is base
    assert wrapper.in_features == 3 and wrapper.weight is base.weight
    x = torch.randn(2, 3)
    assert torch.equal(wrapper(x), base(x))
    assert wrapper.to_plain() is base
    assert list(wrapper.state_dict()) == ["base_layer.weight", "base_layer.bias"]
    with pytest.raises(AttributeError):
        _ = wrapper.nonexistent


def test_unwrap_restores_base_and_counts() -> None:
    model = _model()
    first, last = model[0], model[2][0]
    model[0] = Halve(first)
    model[2][0] = Halve(last)
    assert [n for n, _ in wrapped_modules(model)] == ["0", "2.0"]
    assert unwrap_modules(model) == 2
    assert model[0] is first and model[2][0] is last
    assert wrapped_modules(model) == [] and unwrap_modules(model) == 0


def test_unwrap_plain_carries_effective_weights() -> None:
    model = _model()
    x = torch.randn(5, 3)
    model[0] = Halve(model[0])
    expected = model(x)
    assert unwrap_modules(model, Halve, plain=True) == 1
    assert type(model[0]) is nn.Linear
    assert torch.equal(model(x), expected)


def test_unwrap_nested_and_filter_by_class() -> None:
    model = _model()
    inner = model[0]
    model[0] = WrapperModule(Halve(inner))
    assert [n for n, _ in wrapped_modules(model)] == ["0"]
    assert [n for n, _ in wrapped_modules(model, Halve)] == ["0.base_layer"]
    assert unwrap_modules(model) == 2 and model[0] is inner
    with pytest.raises(ValueError):
        unwrap_modules(WrapperModule(nn.Linear(1, 1)))
