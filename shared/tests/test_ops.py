from __future__ import annotations

import pytest
import torch

import slimkit.ops as ops
from slimkit.ops import l2_normalize_rows
from slimkit.reference import l2_normalize_rows_reference


def test_cpu_call_goes_to_reference_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def boom(*args: object) -> torch.Tensor:
        raise AssertionError("custom op called on the CPU path")

    monkeypatch.setattr(ops, "_l2_normalize_rows_op", boom)
    x = torch.randn(3, 4)
    assert torch.equal(l2_normalize_rows(x), l2_normalize_rows_reference(x))


def test_custom_op_cpu_body_is_reference_and_differentiable() -> None:
    x = torch.randn(3, 4, 9, requires_grad=True)
    y = torch.ops.slimkit.l2_normalize_rows(x, 1e-6)
    assert torch.equal(y, l2_normalize_rows_reference(x))
    y.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    l2_normalize_rows_reference(xr).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, xr.grad)  # type: ignore[arg-type]
    torch.library.opcheck(torch.ops.slimkit.l2_normalize_rows.default, (torch.randn(2, 5), 1e-6))


def test_public_function_is_differentiable_on_cpu() -> None:
    x = torch.randn(2, 6, requires_grad=True)
    l2_normalize_rows(x).sum().backward()
    # d/dx sum(x / |x|) = (1 - y * sum(y)) / |x| row by row, with y = x / |x|
    xd = x.detach()
    norm = xd.norm(dim=1, keepdim=True)
    y = xd / norm
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (1 - y * y.sum(dim=1, keepdim=True)) / norm, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_op_uses_triton_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []
    real = ops.l2_normalize_rows_triton

    def counted(x: torch.Tensor, eps: float) -> torch.Tensor:
        ran.append(1)
        return real(x, eps)

    monkeypatch.setattr(ops, "l2_normalize_rows_triton", counted)  # the reference alone must not pass this test
    x = torch.randn(4096, 768, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(l2_normalize_rows(x), l2_normalize_rows_reference(x), rtol=2e-3, atol=2e-3)
    assert ran == [1]
