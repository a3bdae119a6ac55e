"""qdetr.ops: custom ops (CPU body = reference, opcheck, fake shapes), CPU dispatch, argument checks, CUDA paths."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from qdetr import ops
from qdetr import reference as R
from slimkit.errors import BadInputError


def _cxcywh(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g) * 0.5 + 0.01], dim=1)


def _da_params(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gamma = torch.rand(d, generator=g) + 0.5
    beta = torch.randn(d, generator=g) * 0.1
    step = torch.rand(d, generator=g) * 0.3 + 0.1
    offset = torch.randn(d, generator=g) * 0.1
    return gamma, beta, step, offset


# --------------------------------------------------------------------------- CPU dispatch == reference


def test_match_score_cpu_is_reference_and_detached() -> None:
    s, t = _cxcywh(6, 0).requires_grad_(True), _cxcywh(4, 1)
    got = ops.match_score(s, t)
    ref = R.match_score_reference(s.detach(), t)
    assert torch.equal(got, ref) and not got.requires_grad
    assert torch.equal(ops.match_score(s, t, 1.0, 3.0), R.match_score_reference(s.detach(), t, 1.0, 3.0))
    assert torch.equal(torch.ops.qdetr.match_score(s.detach(), t, 2.0, 5.0), ref)
    assert ops.match_score(s.half(), t).dtype == torch.float32


def test_aligned_quantize_cpu_is_reference_and_detached() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 5, 16, generator=g).requires_grad_(True)
    gamma, beta, step, offset = _da_params(16, 3)
    got = ops.aligned_quantize(q, gamma, beta, step, offset, -8, 7)
    ref = R.aligned_quantize_reference(q.detach(), gamma, beta, step, offset, -8, 7)
    assert torch.equal(got, ref) and not got.requires_grad
    assert torch.equal(ops.aligned_quantize(q, gamma, beta, 0.25, 0.0, 0, 15, eps=1e-3, unbiased=True),
                       R.aligned_quantize_reference(q.detach(), gamma, beta, 0.25, 0.0, 0, 15, 1e-3, True))  # fmt: skip
    via_op = torch.ops.qdetr.aligned_quantize(q.detach(), gamma, beta, step, offset, -8, 7, 1e-5, False)
    assert torch.equal(via_op, ref)
    half = ops.aligned_quantize(q.detach().half(), gamma, beta, step, offset, -8, 7)
    assert half.dtype == torch.float16 and half.shape == q.shape


# --------------------------------------------------------------------------- custom ops: opcheck, fake shapes


def test_opcheck_custom_ops() -> None:
    s, t = _cxcywh(5, 4), _cxcywh(3, 5)
    torch.library.opcheck(torch.ops.qdetr.match_score.default, (s, t, 2.0, 5.0))
    torch.library.opcheck(torch.ops.qdetr.match_score.default, (s.half(), t, 1.0, 0.5))
    q = torch.randn(2, 3, 8)
    gamma, beta, step, offset = _da_params(8, 6)
    torch.library.opcheck(torch.ops.qdetr.aligned_quantize.default, (q, gamma, beta, step, offset, -8, 7, 1e-5, False))
    scalar = torch.tensor(0.5)
    torch.library.opcheck(
        torch.ops.qdetr.aligned_quantize.default, (q.half(), gamma, beta, scalar, scalar, 0, 3, 1e-5, True)
    )


def test_fake_tensor_shapes() -> None:
    """register_fake: shapes / dtypes under torch.compile-style tracing."""
    mode = FakeTensorMode()
    s, t = (mode.from_tensor(x) for x in (_cxcywh(5, 7).half(), _cxcywh(3, 8)))
    q = mode.from_tensor(torch.randn(2, 4, 8, dtype=torch.bfloat16))
    params = [mode.from_tensor(p) for p in _da_params(8, 9)]
    with mode:
        score = torch.ops.qdetr.match_score(s, t, 2.0, 5.0)
        assert score.shape == (5, 3) and score.dtype == torch.float32
        out = torch.ops.qdetr.aligned_quantize(q, *params, -8, 7, 1e-5, False)
        assert out.shape == (2, 4, 8) and out.dtype == torch.bfloat16


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_bad_input_error() -> None:
    s = _cxcywh(3, 0)
    with pytest.raises(BadInputError, match="student boxes"):
        ops.match_score(s[:, :3], s)
    with pytest.raises(BadInputError, match="teacher boxes"):
        ops.match_score(s, s.int())
    q = torch.randn(2, 8)
    gamma, beta, step, offset = _da_params(8, 1)
    with pytest.raises(BadInputError, match="gamma"):
        ops.aligned_quantize(q, gamma[:4], beta, step, offset, -8, 7)
    with pytest.raises(BadInputError, match="qmin"):
        ops.aligned_quantize(q, gamma, beta, step, offset, 7, -8)
    with pytest.raises(BadInputError, match="step"):
        ops.aligned_quantize(q, gamma, beta, torch.ones(2, 8), offset, -8, 7)


# --------------------------------------------------------------------------- CUDA (real Triton kernels)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_match_score_matches_reference(dtype: torch.dtype) -> None:
    s, t = _cxcywh(300, 10).to(dtype), _cxcywh(100, 11).to(dtype)
    s[0, 2:] = 0.0  # degenerate boxes on the GPU too
    t[1] = s[1]
    ref = R.match_score_reference(s, t)
    got = ops.match_score(s.cuda(), t.cuda())
    assert got.is_cuda and got.dtype == torch.float32
    assert torch.equal(got.cpu(), ref)  # IEEE division, no FMA: bit for bit
    # float64 is not a kernel dtype: the custom op falls back to the reference on the GPU
    wide = ops.match_score(s.double().cuda(), t.double().cuda())
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide.cpu(), R.match_score_reference(s.double(), t.double()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 256, 100])
def test_cuda_aligned_quantize_matches_reference(d: int, dtype: torch.dtype) -> None:
    gamma, beta, step, offset = _da_params(d, d)
    g = torch.Generator().manual_seed(12)
    # rows (v, -v) of multiples of 1/8: the mean is exactly 0 and every square and partial sum is exact in
    # float32 whatever the order, so the statistics agree and the outputs are bit for bit
    half = torch.randint(-32, 33, (8, 100, d // 2), generator=g) / 8.0
    dyadic = torch.cat([half, -half], dim=-1).to(dtype)
    if d % 2 == 0:
        got = ops.aligned_quantize(dyadic.cuda(), gamma.cuda(), beta.cuda(), step.cuda(), offset.cuda(), -8, 7)
        assert torch.equal(got.cpu(), R.aligned_quantize_reference(dyadic, gamma, beta, step, offset, -8, 7))
    q = (torch.randn(8, 100, d, generator=g) * 3 + 1).to(dtype)
    got = ops.aligned_quantize(q.cuda(), gamma.cuda(), beta.cuda(), step.cuda(), offset.cuda(), -8, 7).cpu()
    ref = R.aligned_quantize_reference(q, gamma, beta, step, offset, -8, 7)
    assert got.dtype == dtype
    diff = ((got.float() - ref.float()) / step).abs()
    # a code may move by one step where the summation order moves a value across a rounding boundary;
    # in fp16 / bf16 the output's own rounding adds up to an output ulp on top of that step
    assert float((diff > 0.5).float().mean()) < 1e-3
    tol = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 0.2}[dtype]
    assert float(diff.max()) <= 1.0 + tol
