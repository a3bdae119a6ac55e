"""arbitrary_quant.ops: custom ops (CPU body = reference, opcheck), CPU dispatch, autograd, checks, CUDA paths."""

from __future__ import annotations

import pytest
import torch

from arbitrary_quant import ops
from arbitrary_quant import reference as R
from slimkit.errors import BadInputError
from slimkit.packing import pack_bits, pack_signs


def _packed(n: int, k: int, bits: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g)
    return codes, pack_bits(codes, bits), torch.rand(n, generator=g) + 0.1, torch.rand(n, generator=g) * (1 << bits)


# --------------------------------------------------------------------------- CPU dispatch == reference


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packed_matmul_cpu_is_reference(bits: int) -> None:
    codes, w, scale, zero = _packed(5, 37, bits)
    x = torch.randn(2, 3, 37)
    y = ops.packed_matmul(x, w, scale, zero, bits)
    assert y.shape == (2, 3, 5)
    assert torch.equal(y.reshape(6, 5), R.packed_matmul_reference(x.reshape(6, 37), w, scale, zero, bits))
    torch.testing.assert_close(y, x @ ((codes.float() - zero[:, None]) * scale[:, None]).t())
    assert torch.equal(torch.ops.arbitrary_quant.packed_matmul(x[0], w, scale, zero, bits, False), y[0])
    signed = pack_bits(codes - (1 << (bits - 1)), bits, signed=True)
    got = ops.packed_matmul(x[0], signed, scale, None, bits, signed=True)
    torch.testing.assert_close(got, x[0] @ ((codes.float() - (1 << (bits - 1))) * scale[:, None]).t())


def test_binary_ops_cpu_are_reference() -> None:
    torch.manual_seed(1)
    k = 45
    a, b = torch.randn(3, k), torch.randn(4, k)
    pa, pb = pack_signs(a), pack_signs(b)
    got = ops.binary_matmul(pa, pb, k)
    assert torch.equal(got, R.binary_matmul_reference(pa, pb, k))
    assert torch.equal(got, (torch.where(a >= 0, 1, -1) @ torch.where(b >= 0, 1, -1).t()).int())
    assert torch.equal(torch.ops.arbitrary_quant.binary_matmul(pa, pb, k), got)
    alpha = torch.rand(4)
    x = torch.randn(2, 3, k, requires_grad=True)
    y = ops.binary_linear(x, pb, alpha, k)
    assert y.shape == (2, 3, 4) and not y.requires_grad  # inference only
    assert torch.equal(y.reshape(6, 4), R.binary_linear_reference(x.reshape(6, k), pb, alpha, k))
    x0 = x.detach()[0]
    assert torch.equal(
        torch.ops.arbitrary_quant.binary_linear(x0, pb, None, k), R.binary_linear_reference(x0, pb, None, k)
    )


@pytest.mark.parametrize("post_relu", [True, False])
def test_dfsq_cpu_is_reference_with_ste_gradient(post_relu: bool) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    pts = R.dfsq_universal_set(2)
    y = ops.dfsq_quantize(x, pts, post_relu)
    assert torch.equal(y, R.dfsq_quantize_reference(x, pts, post_relu))
    y.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones_like(x))
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.ops.arbitrary_quant.dfsq_quantize(x2, pts, post_relu)
    assert torch.equal(y2, y)
    (y2 * 3).sum().backward()
    assert x2.grad is not None and torch.equal(x2.grad, torch.full_like(x2, 3.0))


# --------------------------------------------------------------------------- custom ops: opcheck, autograd


def test_opcheck_custom_ops() -> None:
    torch.manual_seed(3)
    _, w, scale, zero = _packed(5, 21, 4)
    x = torch.randn(3, 21)
    torch.library.opcheck(torch.ops.arbitrary_quant.packed_matmul.default, (x, w, scale, zero, 4, False))
    torch.library.opcheck(torch.ops.arbitrary_quant.packed_matmul.default, (x, w, scale, None, 4, False))
    pa, pb = pack_signs(torch.randn(3, 40)), pack_signs(torch.randn(5, 40))
    torch.library.opcheck(torch.ops.arbitrary_quant.binary_matmul.default, (pa, pb, 40))
    torch.library.opcheck(torch.ops.arbitrary_quant.binary_linear.default, (torch.randn(3, 40), pb, torch.rand(5), 40))
    xs = torch.randn(2, 3, 4, 4)
    pts = torch.sort(torch.rand(3, 8) * 2 - 1, dim=1).values
    torch.library.opcheck(torch.ops.arbitrary_quant.dfsq_quantize.default, (xs, pts, False))
    torch.library.opcheck(torch.ops.arbitrary_quant.dfsq_quantize.default, (xs.clone().requires_grad_(True), pts, True))


@pytest.mark.parametrize("with_zero", [True, False])
def test_packed_matmul_op_gradients(with_zero: bool) -> None:
    """The op's analytic backward (dx, dscale, dzero) passes gradcheck and equals the reference's autograd."""
    torch.manual_seed(4)
    _, w, scale, zero = _packed(4, 19, 2)
    x = torch.randn(3, 19, dtype=torch.float64, requires_grad=True)
    s = scale.double().requires_grad_(True)
    z = zero.double().requires_grad_(True) if with_zero else None
    args = (x, s, z) if z is not None else (x, s)

    def op(*a: torch.Tensor) -> torch.Tensor:
        return torch.ops.arbitrary_quant.packed_matmul(a[0], w, a[1], a[2] if len(a) > 2 else None, 2, False)

    assert torch.autograd.gradcheck(op, args)
    g = torch.randn(3, 4, dtype=torch.float64)
    got = torch.autograd.grad(op(*args), args, g)
    ref = torch.autograd.grad(R.packed_matmul_reference(x, w, s, z, 2), args, g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_fake_tensor_shapes() -> None:
    """register_fake: shapes/dtypes under torch.compile-style tracing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, w, scale, _ = _packed(5, 21, 4)
    x, signs = torch.randn(3, 21, dtype=torch.float16), pack_signs(torch.randn(3, 40))
    mode = FakeTensorMode()
    xf, wf, sf, pa = (mode.from_tensor(t) for t in (x, w, scale, signs))
    with mode:
        y = torch.ops.arbitrary_quant.packed_matmul(xf, wf, sf, None, 4, False)
        assert y.shape == (3, 5) and y.dtype == torch.float16
        assert torch.ops.arbitrary_quant.binary_matmul(pa, pa, 40).dtype == torch.int32


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_bad_input_error() -> None:
    _, w, scale, zero = _packed(5, 21, 4)
    x = torch.randn(3, 21)
    with pytest.raises(BadInputError, match="bits"):
        ops.packed_matmul(x, w, scale, zero, 9)
    with pytest.raises(BadInputError, match="words per row"):
        ops.packed_matmul(torch.randn(3, 30), w, scale, zero, 4)
    with pytest.raises(BadInputError, match="scale"):
        ops.packed_matmul(x, w, scale[:3], zero, 4)
    with pytest.raises(BadInputError, match="int32"):
        ops.packed_matmul(x, w.long(), scale, zero, 4)
    with pytest.raises(BadInputError, match="floating"):
        ops.packed_matmul(x.int(), w, scale, zero, 4)
    pa = pack_signs(torch.randn(3, 40))
    with pytest.raises(BadInputError, match="sign bits"):
        ops.binary_matmul(pa, pa, 70)
    with pytest.raises(BadInputError, match="K must be"):
        ops.binary_matmul(pa, pa, -1)
    with pytest.raises(BadInputError, match="alpha"):
        ops.binary_linear(torch.randn(2, 40), pa, torch.ones(4), 40)
    with pytest.raises(BadInputError, match=r"\[N, C, H, W\]"):
        ops.dfsq_quantize(torch.randn(3, 4), torch.zeros(4), True)
    with pytest.raises(BadInputError, match="points"):
        ops.dfsq_quantize(torch.randn(1, 3, 2, 2), torch.zeros(2, 4), True)


# --------------------------------------------------------------------------- CUDA (real Triton kernels)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_cuda_packed_matmul_matches_reference(bits: int, dtype: torch.dtype) -> None:
    _, w, scale, zero = _packed(300, 1000, bits, seed=bits)
    x = torch.randn(77, 1000).to(dtype)
    ref = R.packed_matmul_reference(x, w, scale, zero, bits)
    got = ops.packed_matmul(x.cuda(), w.cuda(), scale.cuda(), zero.cuda(), bits).cpu()
    # fp32: tf32 is not used (input_precision="ieee"); fp16/bf16: one output ulp
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    mag = float(ref.float().abs().max())
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * mag)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("k", [1, 33, 1000, 4096])
def test_cuda_binary_ops_match_reference(k: int) -> None:
    torch.manual_seed(k)
    a, b = torch.randn(65, k), torch.randn(130, k)
    pa, pb = pack_signs(a), pack_signs(b)
    ref = R.binary_matmul_reference(pa, pb, k)
    assert torch.equal(ops.binary_matmul(pa.cuda(), pb.cuda(), k).cpu(), ref)
    alpha = torch.rand(130)
    for dtype in (torch.float32, torch.float16):
        got = ops.binary_linear(a.to(dtype).cuda(), pb.cuda(), alpha.cuda(), k).cpu()
        assert torch.equal(got, R.binary_linear_reference(a.to(dtype), pb, alpha, k))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_dfsq_matches_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    u = R.dfsq_universal_set(4)
    pts = u[torch.sort(torch.randint(0, len(u), (16, 16)), dim=1).values]
    x = (torch.randn(4, 16, 48, 40) * 2).to(dtype)
    xr = x.relu()
    # post-ReLU: bit for bit (no mean; IEEE division, no FMA)
    assert torch.equal(ops.dfsq_quantize(xr.cuda(), pts.cuda(), True).cpu(), R.dfsq_quantize_reference(xr, pts, True))
    # centred: dyadic data with an exact mean is bit for bit too; random data within a few ulps
    xd = (torch.randint(-64, 65, (2, 16, 32, 32)) / 32.0).to(dtype)
    assert torch.equal(ops.dfsq_quantize(xd.cuda(), pts.cuda(), False).cpu(), R.dfsq_quantize_reference(xd, pts, False))
    got = ops.dfsq_quantize(x.cuda(), pts.cuda(), False).cpu().float()
    ref = R.dfsq_quantize_reference(x, pts, False).float()
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    close = torch.isclose(got, ref, rtol=tol, atol=tol * float(x.float().abs().max()))
    assert float(close.float().mean()) > 0.9999  # a value within ulps of a midpoint may round the other way
    xg = x.cuda().requires_grad_(True)
    ops.dfsq_quantize(xg, pts.cuda(), False).sum().backward()
    assert xg.grad is not None and bool((xg.grad == 1).all())
