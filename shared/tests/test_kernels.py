from __future__ import annotations

import pytest
import torch

from slimkit.kernels import (
    autotune_configs,
    interpret_mode,
    l2_normalize_rows,
    l2_normalize_rows_reference,
    l2_normalize_rows_triton,
    use_triton,
)


def test_reference_rows_have_unit_norm() -> None:
    x = torch.randn(5, 7)
    x[2] = 0.0
    y = l2_normalize_rows_reference(x)
    norms = y.norm(dim=-1)
    assert torch.allclose(norms[[0, 1, 3, 4]], torch.ones(4), atol=1e-6) and norms[2] == 0


def test_custom_op_cpu_path_is_reference_and_differentiable() -> None:
    x = torch.randn(3, 4, 9, requires_grad=True)
    y = l2_normalize_rows(x)
    torch.testing.assert_close(y, l2_normalize_rows_reference(x))
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    torch.library.opcheck(torch.ops.slimkit.l2_normalize_rows.default, (torch.randn(2, 5), 1e-6))


def test_autotune_configs_cut_under_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert autotune_configs([1, 2, 3]) == [1]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert autotune_configs([1, 2, 3]) == [1, 2, 3]


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 7, 33)])
def test_triton_matches_reference(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if not interpret_mode():
        pytest.skip("run with TRITON_INTERPRET=1")
    x = torch.randn(*shape).to(dtype)
    assert use_triton(x)
    out = l2_normalize_rows_triton(x)
    tol = 1e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(out, l2_normalize_rows_reference(x), rtol=tol, atol=tol)


@pytest.mark.gpu
def test_cuda_op_uses_triton_and_matches() -> None:
    x = torch.randn(4096, 768, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(l2_normalize_rows(x), l2_normalize_rows_reference(x), rtol=2e-3, atol=2e-3)
