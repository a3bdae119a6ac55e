"""SR-STE wrappers and the fixed-mask / transposable baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nm_sparse
from nm_sparse import ASPLayer, SRSTELayer, TransposableLayer, UnstructuredLayer, masks
from nm_sparse.config import TransposableConfig
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


# --------------------------------------------------------------------------- second round: baselines


def test_asp_flat_layout_mask_is_a_bool_buffer_and_forward_adds_bias() -> None:
    base = nn.Conv2d(4, 4, 3, bias=True)
    original = base.weight.detach().clone()
    layer = ASPLayer(base, NMPattern(2, 4), layout="flat")
    assert layer.layout == "flat"
    expected = masks.weight_nm_mask(original, 2, 4, "flat")
    assert not torch.equal(expected, masks.weight_nm_mask(original, 2, 4, "cin"))  # the layouts differ here
    assert layer.mask.dtype == torch.bool and torch.equal(layer.mask, expected)
    assert torch.equal(layer.state_dict()["mask"], expected)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, original * expected, base.bias))


def test_asp_linear_forward_uses_the_bias() -> None:
    base = nn.Linear(8, 4)
    with torch.no_grad():
        base.bias.copy_(torch.tensor([1.0, -2.0, 3.0, 4.0]))
    layer = ASPLayer(base, NMPattern(2, 4))
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), F.linear(x, base.weight * layer.mask, base.bias))


def test_transposable_default_decay_is_srste_2e_4() -> None:
    base = nn.Linear(8, 8, bias=False)
    layer = TransposableLayer(base, NMPattern(2, 4))
    mask = layer.forward_mask()
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    dense = torch.ones(3, 8).t() @ x  # d sum / d (W ⊙ mask), straight through to W
    assert base.weight.grad is not None
    torch.testing.assert_close(base.weight.grad, dense + 2e-4 * (~mask).float() * base.weight.detach())


def test_transposable_flat_layout_on_conv() -> None:
    base = nn.Conv2d(4, 4, 3)
    layer = TransposableLayer(base, NMPattern(2, 4), layout="flat")
    w = base.weight.detach()
    gemm = masks.transposable_mask_reference(masks.to_gemm_matrix(w, "flat"), 2, 4)
    expected = masks.from_gemm_matrix(gemm, w.shape, "flat")
    cin = masks.from_gemm_matrix(
        masks.transposable_mask_reference(masks.to_gemm_matrix(w, "cin"), 2, 4), w.shape, "cin"
    )
    assert not torch.equal(expected, cin)  # the layouts differ here
    assert torch.equal(layer.forward_mask(), expected)
    assert bool((expected.reshape(4, 9, 4).sum(-1) == 2).all())  # N:M along each flattened filter
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, w * expected, base.bias))


class _Three(nn.Module):
    def __init__(self, ok_in: int = 8) -> None:
        super().__init__()
        self.ok = nn.Linear(ok_in, ok_in)
        self.odd_out = nn.Linear(ok_in, 6)
        self.odd_in = nn.Linear(6, ok_in)


@pytest.mark.parametrize(
    ("pattern", "ok_in", "expected"),
    [
        (
            "2:4",
            8,
            {
                "odd_out": "output channels 6 not divisible by m=4 (transposable masks the outputs too)",
                "odd_in": "input features 6 not divisible by m=4",
            },
        ),
        (
            "2:8",
            8,
            {
                "ok": "transposable masks need m <= 4, got m=8",
                "odd_out": "output channels 6 not divisible by m=8 (transposable masks the outputs too)",
                "odd_in": "input features 6 not divisible by m=8",
            },
        ),
        (
            "2:5",
            10,
            {
                "ok": "transposable masks need m <= 4, got m=5",
                "odd_out": "output channels 6 not divisible by m=5 (transposable masks the outputs too)",
                "odd_in": "input features 6 not divisible by m=5",
            },
        ),
    ],
)
def test_transposable_refusal_reasons(pattern: str, ok_in: int, expected: dict[str, str]) -> None:
    model = _Three(ok_in)
    report = nm_sparse.sparsify(
        model, TransposableConfig(pattern=pattern, keep_first_dense=False, keep_last_dense=False)
    )
    assert {s.name: s.reason for s in report.skipped} == expected
    assert report.names == (["ok"] if "ok" not in expected else [])


def test_srste_default_decay_is_2e_4() -> None:
    layer = SRSTELayer(nn.Linear(8, 4), NMPattern(2, 4))
    assert layer.extra_repr() == "method=srste, pattern=2:4, layout=cin, decay=0.0002"
