from __future__ import annotations

import torch

from slimkit.reference import l2_normalize_rows_reference


def test_reference_rows_have_unit_norm() -> None:
    x = torch.randn(5, 7)
    x[2] = 0.0
    y = l2_normalize_rows_reference(x)
    norms = y.norm(dim=-1)
    assert torch.allclose(norms[[0, 1, 3, 4]], torch.ones(4), atol=1e-6) and norms[2] == 0


def test_reference_exact_values_and_dtype() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float16)
    y = l2_normalize_rows_reference(x)
    assert y.dtype == torch.float16
    assert torch.equal(y, torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=torch.float16))


def test_reference_eps_floors_the_norm() -> None:
    x = torch.tensor([[1e-3, 0.0]])
    assert torch.equal(l2_normalize_rows_reference(x, eps=1.0), x)


def test_reference_default_eps_is_1e_6() -> None:
    # a small row (norm 5e-3) still comes out with unit norm; below 1e-6 the norm is floored at 1e-6
    x = torch.tensor([[3e-3, 4e-3], [3e-7, 4e-7]])
    torch.testing.assert_close(l2_normalize_rows_reference(x), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
