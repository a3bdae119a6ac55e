"""qdetr.kernels: the Triton launchers (interpreter, CPU tensors) against the PyTorch references, plus an
ahead-of-time compile of both kernels for a real GPU target (no GPU needed).

Tolerances asserted, and why:

* ``match_score``: the kernel repeats the reference's float32 operations in the same order (IEEE
  division, no FMA), so the scores are equal bit for bit (``torch.equal``), from fp32 and fp16 boxes.
* ``aligned_quantize``: bit for bit when the row sums are exact (dyadic inputs); on random inputs
  the mean / variance may differ by a few ulps (summation order), which moves a code by one step
  only for a value within those ulps of a rounding boundary: at most a handful of elements, each
  exactly one step away. With these seeds there is none, and the test says so.

bfloat16 is checked only on a GPU (``test_ops.py``): the interpreter narrows float32 to bfloat16 by
truncation, where the GPU and PyTorch round to nearest even.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qdetr import kernels as K
from qdetr import reference as R
from slimkit.kernels import compile_ahead_of_time, interpret_mode, ptxas_missing

interp = pytest.mark.skipif(not interpret_mode(), reason="needs TRITON_INTERPRET=1 (set by the test runner)")
DTYPES = [torch.float32, torch.float16]


def _cxcywh(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g) * 0.5], dim=1)


def _da_params(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gamma = torch.rand(d, generator=g) + 0.5
    beta = torch.randn(d, generator=g) * 0.1
    step = torch.rand(d, generator=g) * 0.3 + 0.1
    offset = torch.randn(d, generator=g) * 0.1
    return gamma, beta, step, offset


# --------------------------------------------------------------------------- FQM pairing score


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "m"), [(1, 1), (5, 7), (37, 33)])
def test_match_score_triton_matches_reference(n: int, m: int, dtype: torch.dtype) -> None:
    """One pair, one ragged tile, and 2 x 2 tiles with ragged edges (37 and 33 > 32)."""
    s, t = _cxcywh(n, n).to(dtype), _cxcywh(m, 100 + m).to(dtype)
    got = K.match_score_triton(s, t, 2.0, 5.0)
    ref = R.match_score_reference(s, t)
    assert got.dtype == ref.dtype == torch.float32 and got.shape == (n, m)
    assert torch.equal(got, ref)


@pytest.mark.interpret
@interp
def test_match_score_triton_degenerate_boxes_and_weights() -> None:
    """Zero-size, collapsed and identical boxes, non-default weights (0.3 is inexact in float32)."""
    s, t = _cxcywh(6, 1), _cxcywh(4, 2)
    s[0, 2:] = 0.0  # a point
    s[1, 3] = 0.0  # a line
    t[0] = s[0]  # the same point
    t[1] = s[2]  # identical boxes: GIoU 1, L1 0
    t[2, 2] = -0.1  # negative width: an empty box
    got = K.match_score_triton(s, t, 0.3, 1.7)
    ref = R.match_score_reference(s, t, 0.3, 1.7)
    assert bool(torch.isfinite(got).all())
    assert torch.equal(got, ref)
    assert float(got[2, 1]) == pytest.approx(0.3)
    strided = K.match_score_triton(torch.cat([s, s], 1)[:, :4], t, 0.3, 1.7)  # non-contiguous input
    assert torch.equal(strided, ref)


@pytest.mark.interpret
@interp
def test_match_score_triton_empty() -> None:
    t = _cxcywh(3, 0)
    assert K.match_score_triton(torch.zeros(0, 4), t, 2.0, 5.0).shape == (0, 3)
    assert K.match_score_triton(t, torch.zeros(0, 4), 2.0, 5.0).shape == (3, 0)


# --------------------------------------------------------------------------- DA + LSQ+


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_aligned_quantize_triton_bit_exact_on_exact_sums(unbiased: bool, dtype: torch.dtype) -> None:
    """Dyadic inputs, D = 16: every sum is exact, so the statistics and the output are bit for bit."""
    g = torch.Generator().manual_seed(3)
    q = (torch.randint(-32, 33, (2, 3, 16), generator=g) / 16.0).to(dtype)
    q[1, 2] = 0.75  # constant row: the output is the quantized beta
    gamma, beta, step, offset = _da_params(16, 4)
    got = K.aligned_quantize_triton(q, gamma, beta, step, offset, -8, 7, 1e-5, unbiased)
    ref = R.aligned_quantize_reference(q, gamma, beta, step, offset, -8, 7, 1e-5, unbiased)
    assert got.dtype == dtype and got.shape == q.shape
    assert torch.equal(got, ref)


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 5, 24])
def test_aligned_quantize_triton_random_rows(d: int, dtype: torch.dtype) -> None:
    """Non-power-of-two rows (masked lanes), D = 1 (the row is its mean); per-feature and scalar params."""
    g = torch.Generator().manual_seed(d)
    q = (torch.randn(4, 3, d, generator=g) * 2 + 0.5).to(dtype)
    gamma, beta, step, offset = _da_params(d, d + 1)
    for st, off in ((step, offset), (0.25, -0.125)):
        got = K.aligned_quantize_triton(q, gamma, beta, st, off, 0, 15, 1e-5, False)
        ref = R.aligned_quantize_reference(q, gamma, beta, st, off, 0, 15)
        assert torch.equal(got, ref)  # see the module docstring: no value of these seeds sits on a boundary


@pytest.mark.interpret
@interp
def test_aligned_quantize_triton_ties_and_clamping() -> None:
    """Standardized values exactly on half-codes go to the even code; clamping happens before rounding."""
    # rows of +-1: mean 0, variance 1, and eps = 1e-30 vanishes next to it, so y = q * gamma exactly
    q = torch.tensor([[-1.0, 1.0, -1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    gamma = torch.tensor([0.5, 0.5, 1.5, 2.5])
    beta = torch.zeros(4)
    for (qmin, qmax), codes in (
        ((-8, 7), [[0.0, 0.0, -2.0, 2.0], [0.0, 0.0, 2.0, -2.0]]),
        ((-1, 1), [[0.0, 0.0, -1.0, 1.0], [0.0, 0.0, 1.0, -1.0]]),
    ):
        got = K.aligned_quantize_triton(q, gamma, beta, 1.0, 0.0, qmin, qmax, 1e-30, False)
        assert torch.equal(got, R.aligned_quantize_reference(q, gamma, beta, 1.0, 0.0, qmin, qmax, eps=1e-30))
        assert got.tolist() == codes


@pytest.mark.interpret
@interp
def test_aligned_quantize_triton_empty_and_bad_dtype() -> None:
    gamma, beta, step, offset = _da_params(8, 0)
    assert K.aligned_quantize_triton(torch.zeros(0, 8), gamma, beta, step, offset, -8, 7, 1e-5, False).shape == (0, 8)
    with pytest.raises(TypeError, match="unsupported dtype"):
        K.aligned_quantize_triton(torch.zeros(2, 8, dtype=torch.float64), gamma, beta, step, offset, -8, 7, 1e-5, False)
    with pytest.raises(TypeError, match="unsupported dtype"):
        K.match_score_triton(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4), 2.0, 5.0)


# --------------------------------------------------------------------------- ahead-of-time GPU compile

_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qdetr import kernels as K

target = GPUTarget("cuda", int(sys.argv[1]), 32)
jobs = []
for dt in ("fp32", "fp16"):
    sig = {"s_ptr": "*" + dt, "t_ptr": "*" + dt, "out_ptr": "*fp32", "N": "i32", "M": "i32", "stride_s": "i32",
           "stride_t": "i32", "stride_o": "i32", "mu_giou": "fp32", "mu_l1": "fp32"}
    jobs.append(("match", K._match_score_kernel(), sig, {"BLOCK_N": 32, "BLOCK_M": 32}, 4))
for dt, block in (("fp32", 32), ("bf16", 256)):
    sig = {"x_ptr": "*" + dt, "gamma_ptr": "*fp32", "beta_ptr": "*fp32", "step_ptr": "*fp32", "offset_ptr": "*fp32",
           "y_ptr": "*" + dt, "D": "i32", "d_float": "fp32", "den": "fp32", "eps": "fp32", "qmin": "fp32",
           "qmax": "fp32"}
    jobs.append(("aligned", K._aligned_quantize_kernel(), sig, {"BLOCK_D": block}, 1))
for name, fn, sig, consts, warps in jobs:
    full = {**sig, **{k: "constexpr" for k in consts}}
    compiled = triton.compile(ASTSource(fn=fn, signature=full, constexprs=consts), target=target,
                              options={"num_warps": warps, "enable_fp_fusion": False})
    assert "cubin" in compiled.asm
    ptx = compiled.asm["ptx"]
    # IEEE division (and square root) and no FMA contraction: what makes the kernels match the reference
    assert "div.rn.f32" in ptx and "div.full" not in ptx and "fma.rn.f32" not in ptx, name
    if name == "aligned":
        assert "sqrt.rn.f32" in ptx and "sqrt.approx" not in ptx
print("compiled", len(jobs))
"""


@pytest.mark.parametrize("arch", [90, pytest.param(80, marks=pytest.mark.slow)])
def test_kernels_compile_for_gpu_targets(arch: int, tmp_path: Path) -> None:
    """Ahead-of-time compile both kernels to a cubin (no GPU needed): catches errors the interpreter misses."""
    pytest.importorskip("triton")
    proc = compile_ahead_of_time(_COMPILE_SCRIPT, arch, tmp_path)
    if ptxas_missing(proc):
        pytest.skip("ptxas not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled 4" in proc.stdout
