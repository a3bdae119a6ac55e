"""Bi-Mask: mask relations, exact gradients (Linear and conv), permutation search."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nm_sparse import BiMaskLayer
from nm_sparse.pattern import NMPattern

DECAY = 0.05


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (2, 8)])
def test_backward_mask_subset_and_nm_along_outputs(n: int, m: int) -> None:
    layer = BiMaskLayer(nn.Linear(3 * m, 2 * m), NMPattern(n, m), candidates=5)
    fwd, bwd = layer.forward_mask(), layer.backward_mask()
    assert bool((bwd <= fwd).all())  # M_b ⊆ M_f
    permuted = bwd[layer.perm]  # rows in the searched order
    per_group = permuted.reshape(2, m, 3 * m).sum(1)
    assert bool((per_group <= n).all())
    # exactly min(n, forward-kept) survive in every group: nothing else is dropped
    kept = fwd[layer.perm].reshape(2, m, 3 * m).sum(1)
    assert torch.equal(per_group, kept.clamp(max=n))


def test_linear_gradients_match_manual() -> None:
    base = nn.Linear(16, 8)
    layer = BiMaskLayer(base, NMPattern(2, 4), decay=DECAY)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = layer(x)
    w = base.weight.detach()
    fwd, bwd = layer.forward_mask(), layer.backward_mask()
    torch.testing.assert_close(out, F.linear(x, w * fwd, base.bias))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert x.grad is not None and base.weight.grad is not None and base.bias.grad is not None
    torch.testing.assert_close(x.grad, grad_out @ (w * bwd))  # sparse input gradient
    dense_dw = grad_out.reshape(-1, 8).t() @ x.detach().reshape(-1, 16)
    torch.testing.assert_close(base.weight.grad, dense_dw + DECAY * (~fwd).float() * w)  # dense dW
    torch.testing.assert_close(base.bias.grad, grad_out.reshape(-1, 8).sum(0))
    assert not torch.allclose(x.grad, grad_out @ (w * fwd))  # the backward mask matters


@pytest.mark.parametrize(
    ("dims", "kwargs"),
    [
        (2, dict(stride=1, padding=1)),
        (2, dict(stride=2, padding=2, dilation=2)),
        (2, dict(stride=1, padding=1, padding_mode="reflect")),
        (2, dict(stride=1, padding="same")),
        (1, dict(stride=2, padding=1)),
    ],
)
@pytest.mark.parametrize("layout", ["cin", "flat"])
def test_conv_gradients_match_autograd(dims: int, kwargs: dict, layout: str) -> None:
    conv_cls = nn.Conv2d if dims == 2 else nn.Conv1d
    base = conv_cls(8, 8, 3, bias=True, **kwargs)
    layer = BiMaskLayer(base, NMPattern(2, 4), layout=layout, decay=DECAY)
    shape = (2, 8, 7, 6) if dims == 2 else (2, 8, 9)
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    w = base.weight.detach()
    fwd, bwd = layer.forward_mask(), layer.backward_mask()
    # references with plain autograd: output with M_f, dX with M_b, dW dense
    x_ref = x.detach().clone().requires_grad_(True)
    w_b = w * bwd
    out_b = base._conv_forward(x_ref, w_b, base.bias.detach())
    out_b.backward(grad_out)
    w_ref = w.clone().requires_grad_(True)
    base._conv_forward(x.detach(), w_ref, None).backward(grad_out)
    torch.testing.assert_close(out, base._conv_forward(x.detach(), w * fwd, base.bias.detach()))
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    assert w_ref.grad is not None and base.weight.grad is not None
    torch.testing.assert_close(base.weight.grad, w_ref.grad + DECAY * (~fwd).float() * w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(base.bias.grad, grad_out.sum(dim=[d for d in range(grad_out.dim()) if d != 1]))


def _clustered_weight() -> torch.Tensor:
    """Rows 0-3 and 4-7 share their kept columns: identity order groups them badly."""
    w = torch.full((8, 16), 0.01)
    w[:4, 0::4] = 1.0
    w[:4, 1::4] = 1.0
    w[4:, 2::4] = 1.0
    w[4:, 3::4] = 1.0
    return w


def test_permutation_search_beats_identity() -> None:
    w = _clustered_weight()
    base = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        base.weight.copy_(w)
    layer = BiMaskLayer(base, NMPattern(2, 4), candidates=20, seed=1)
    identity = float(layer.score(torch.arange(8)[None])[0])
    # 64 forward-kept weights; in identity order every kept column holds 4 in one group -> 2 survive
    assert identity == 32.0
    assert float(layer.perm_score) > identity
    best = layer.score(torch.tensor([[0, 1, 4, 5, 2, 3, 6, 7]]))
    assert float(best[0]) == 64.0 and float(layer.perm_score) <= 64.0
    assert float(layer.perm_score) == float(layer.score(layer.perm[None])[0])
    eligible = BiMaskLayer(base, NMPattern(2, 4), candidates=20, scorer="eligible", seed=1)
    assert float(eligible.score(torch.arange(8)[None])[0]) < float(eligible.perm_score)


def test_refresh_every_interval_steps_and_keep_current() -> None:
    base = nn.Linear(16, 8)
    layer = BiMaskLayer(base, NMPattern(2, 4), candidates=3, interval=3, keep_current=True)
    scores = [float(layer.perm_score)]
    perms = [layer.perm.clone()]
    for _ in range(6):
        layer.on_step()
        scores.append(float(layer.perm_score))
        perms.append(layer.perm.clone())
    assert int(layer.step_count) == 6
    assert torch.equal(perms[1], perms[0]) and torch.equal(perms[2], perms[0])  # no search at steps 1, 2
    assert scores[3] >= scores[2] and scores[6] >= scores[5]  # keep_current: never worse


def test_forward_refresh_mode_counts_training_forwards() -> None:
    layer = BiMaskLayer(nn.Linear(8, 8), NMPattern(2, 4), interval=2, refresh="forward")
    x = torch.randn(2, 8)
    for _ in range(3):
        layer(x)
    assert int(layer.step_count) == 3
    layer.eval()
    layer(x)
    assert int(layer.step_count) == 3


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_autocast_bfloat16_backward(kind: str) -> None:
    base: nn.Module = nn.Linear(16, 8) if kind == "linear" else nn.Conv2d(8, 8, 3, padding=1)
    layer = BiMaskLayer(base, NMPattern(2, 4))
    x = torch.randn(2, 16, requires_grad=True) if kind == "linear" else torch.randn(2, 8, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert base.weight.grad is not None and base.weight.grad.dtype == torch.float32


def test_inference_path_uses_forward_mask_only() -> None:
    base = nn.Linear(16, 8)
    layer = BiMaskLayer(base, NMPattern(2, 4))
    x = torch.randn(3, 16)
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, F.linear(x, base.weight * layer.forward_mask(), base.bias))
