"""SR-STE wrappers and the fixed-mask / transposable baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nm_sparse import ASPLayer, SRSTELayer, TransposableLayer, UnstructuredLayer, masks
from nm_sparse.pattern import NMPattern


def _manual_grads(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
    """Gradient SR-STE should give: d loss / d (W⊙E) (dense STE) + decay·(1-E)⊙W."""
    w_tilde = (layer.weight.detach() * mask).requires_grad_(True)
    if isinstance(layer, nn.Linear):
        out = F.linear(x, w_tilde, layer.bias)
    else:
        out = layer._conv_forward(x, w_tilde, layer.bias)
    (out.square().sum()).backward()
    assert w_tilde.grad is not None
    return w_tilde.grad + decay * (~mask).float() * layer.weight.detach()


@pytest.mark.parametrize("layout", ["cin", "flat"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_srste_gradient_is_dense_plus_decay(kind: str, layout: str) -> None:
    if kind == "linear":
        base: nn.Module = nn.Linear(16, 8)
        x = torch.randn(5, 16)
    else:
        base = nn.Conv2d(8, 4, 3, padding=1)
        x = torch.randn(2, 8, 5, 5)
    decay = 0.05  # large enough to be visible against the data gradient
    layer = SRSTELayer(base, NMPattern(2, 4), layout, decay)
    mask = masks.weight_nm_mask(base.weight, 2, 4, layout)
    expected = _manual_grads(base, x, mask, decay)
    base.weight.grad = None
    layer(x).square().sum().backward()
    assert base.weight.grad is not None
    torch.testing.assert_close(base.weight.grad, expected, rtol=1e-5, atol=1e-6)
    # pruned weights get gradient although they do not take part in the forward (STE)
    assert bool((base.weight.grad[~mask] != 0).any())


def test_srste_forward_uses_current_mask() -> None:
    base = nn.Linear(8, 4)
    layer = SRSTELayer(base, NMPattern(2, 4))
    x = torch.randn(3, 8)
    mask = masks.nm_mask_reference(base.weight, 2, 4)
    torch.testing.assert_close(layer(x), F.linear(x, base.weight * mask, base.bias))
    with torch.no_grad():  # flip magnitudes: the mask follows the weights (dynamic)
        base.weight.copy_(torch.where(mask, 0.01 * base.weight.sign(), 10 * base.weight.sign()))
    new_mask = layer.forward_mask()
    assert torch.equal(new_mask, ~mask)


def test_wrapper_exposes_base_layer_attributes() -> None:
    base = nn.Linear(8, 4)
    layer = SRSTELayer(base, NMPattern(2, 4))
    assert layer.base_layer is base and layer.in_features == 8 and layer.weight is base.weight
    assert "srste" in repr(layer)


def test_srste_learns_sparse_teacher() -> None:
    teacher = torch.randn(4, 16) * masks.nm_mask_reference(torch.randn(4, 16), 2, 4)
    x = torch.randn(256, 16)
    y = x @ teacher.t()
    layer = SRSTELayer(nn.Linear(16, 4, bias=False), NMPattern(2, 4))
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss = F.mse_loss(layer(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.01 * first
    assert torch.equal(layer.forward_mask(), teacher != 0)


def test_asp_fixed_mask_prunes_once() -> None:
    base = nn.Conv2d(8, 4, 3)
    original = base.weight.detach().clone()
    layer = ASPLayer(base, NMPattern(2, 4))
    mask = masks.weight_nm_mask(original, 2, 4, "cin")
    assert torch.equal(layer.mask, mask)
    assert bool((base.weight[~mask] == 0).all())
    layer(torch.randn(2, 8, 5, 5)).sum().backward()
    assert base.weight.grad is not None and bool((base.weight.grad[~mask] == 0).all())
    with torch.no_grad():
        base.weight.add_(torch.randn_like(base.weight))
    assert torch.equal(layer.forward_mask(), mask)  # fixed until recompute_mask()
    layer.recompute_mask()
    assert torch.equal(layer.mask, masks.weight_nm_mask(base.weight, 2, 4, "cin"))


def test_unstructured_layer_sparsity() -> None:
    layer = UnstructuredLayer(nn.Linear(10, 6), NMPattern(1, 4))
    assert int(layer.mask.sum()) == 15


def test_transposable_layer_both_directions() -> None:
    base = nn.Linear(8, 8)
    layer = TransposableLayer(base, NMPattern(2, 4))
    mask = layer.forward_mask()
    assert bool((mask.reshape(8, 2, 4).sum(-1) == 2).all())
    assert bool((mask.t().reshape(8, 2, 4).sum(-1) == 2).all())
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), F.linear(x, base.weight * mask, base.bias))
    conv = TransposableLayer(nn.Conv2d(8, 4, 3), NMPattern(2, 4))
    cm = conv.forward_mask()
    assert bool((cm.permute(0, 2, 3, 1).reshape(4, 3, 3, 2, 4).sum(-1) == 2).all())  # along C_in
    assert bool((cm.sum(0) == 2).all())  # down the 4 output channels at every (C_in, kh, kw)
