from __future__ import annotations

import torch

from slimkit.ste import ceil_ste, clamp_ste, floor_ste, round_ste, sign_ste

X = [-1.5, -0.5, -0.2, 0.0, 0.5, 1.5, 2.7]


def _check(fn, expected: list[float]) -> None:  # type: ignore[no-untyped-def]
    x = torch.tensor(X, requires_grad=True)
    y = fn(x)
    assert torch.equal(y.detach(), torch.tensor(expected))
    (y * torch.arange(1.0, 8.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(1.0, 8.0))  # gradient passed through unchanged


def test_round_ste() -> None:
    _check(round_ste, [-2.0, -0.0, -0.0, 0.0, 0.0, 2.0, 3.0])


def test_ceil_ste() -> None:
    _check(ceil_ste, [-1.0, -0.0, -0.0, 0.0, 1.0, 2.0, 3.0])


def test_floor_ste() -> None:
    _check(floor_ste, [-2.0, -1.0, -1.0, 0.0, 0.0, 1.0, 2.0])


def test_sign_ste_zero_is_plus_one() -> None:
    _check(sign_ste, [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])


def test_clamp_ste_passes_gradient_where_torch_clamp_does_not() -> None:
    _check(lambda x: clamp_ste(x, -0.5, 1.0), [-0.5, -0.5, -0.2, 0.0, 0.5, 1.0, 1.0])
    x = torch.tensor(X, requires_grad=True)
    torch.clamp(x, -0.5, 1.0).sum().backward()
    assert x.grad is not None and torch.equal(x.grad[[0, 2, 3, 4, 5, 6]], torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_ste_preserves_dtype_and_ones_gradient() -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = round_ste(x)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
