"""arbitrary_quant.kernels: the Triton launchers (interpreter, CPU tensors) against the PyTorch references,
plus an ahead-of-time compile of every kernel for a real GPU target (no GPU needed).

Tolerances asserted, and why:

* ``packed_matmul``: the kernel dequantizes exactly as the reference (float32 ``(q - zero) * scale``,
  rounded once to x's dtype), so only the float32 accumulation order differs: fp32 ``rtol = atol = 1e-5``
  (relative to the output's magnitude); fp16 outputs are rounded to fp16 after that, so one fp16 ulp
  (``rtol = 2e-3``).
* ``binary_matmul`` / ``binary_linear``: integer popcounts, exact (``torch.equal``); the alpha scale is
  one float32 multiply in both paths, so ``binary_linear`` is exact too.
* ``dfsq_quantize``: post-ReLU (``mean = 0``; max, IEEE division, comparisons, mul-then-add are all
  order-independent) is bit-exact (``torch.equal``), fp32 and fp16. Centred inputs depend on the float32
  mean, whose summation order differs from torch's: bit-exact when the sum is exact (dyadic inputs,
  H*W a power of two), otherwise within a few ulps (``rtol = 1e-5``, ``atol = 1e-5 * max|x|``; fp16:
  ``1e-3``, one fp16 ulp) unless a value sits within ulps of a midpoint (not the case for these seeds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arbitrary_quant import kernels as K
from arbitrary_quant import reference as R
from slimkit.kernels import compile_ahead_of_time, interpret_mode, ptxas_missing
from slimkit.packing import pack_bits, pack_signs

interp = pytest.mark.skipif(not interpret_mode(), reason="needs TRITON_INTERPRET=1 (set by the test runner)")
DTYPES = [torch.float32, torch.float16]


def _codes(n: int, k: int, bits: int, signed: bool) -> torch.Tensor:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return torch.randint(lo, hi + 1, (n, k))


def _packed_case(m: int, n: int, k: int, bits: int, signed: bool, zero: bool, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    w = pack_bits(_codes(n, k, bits, signed), bits, signed)
    scale = torch.rand(n, generator=g) * 0.1 + 0.01
    zp = torch.rand(n, generator=g) * (1 << bits) if zero else None
    x = torch.randn(m, k, generator=g).to(dtype)
    return x, w, scale, zp


def _assert_matmul_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == ref.dtype == dtype and got.shape == ref.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    mag = max(1.0, float(ref.float().abs().max()))
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * mag)


# --------------------------------------------------------------------------- packed k-bit matmul


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize(("signed", "zero"), [(False, True), (True, False)])
@pytest.mark.parametrize(("m", "n", "k"), [(3, 5, 37), (1, 1, 1), (7, 9, 150)])
def test_packed_matmul_triton_matches_reference(
    m: int, n: int, k: int, bits: int, signed: bool, zero: bool, dtype: torch.dtype
) -> None:
    """K not a multiple of the word (37), one code (1), several K blocks and a ragged last word (150)."""
    x, w, scale, zp = _packed_case(m, n, k, bits, signed, zero, dtype, seed=bits + k)
    got = K.packed_matmul_triton(x, w, scale, zp, bits, signed)
    _assert_matmul_close(got, R.packed_matmul_reference(x, w, scale, zp, bits, signed), dtype)


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("bits", [1, 3, 5, 7])
def test_packed_matmul_triton_odd_widths(bits: int) -> None:
    """Widths whose words have unused high bits (3/5/7) or 32 codes (1): padded lanes are masked."""
    x, w, scale, zp = _packed_case(4, 6, 45, bits, bits > 1, bits == 1, torch.float32, seed=bits)
    got = K.packed_matmul_triton(x, w, scale, zp, bits, bits > 1)
    _assert_matmul_close(got, R.packed_matmul_reference(x, w, scale, zp, bits, bits > 1), torch.float32)


@pytest.mark.interpret
@interp
def test_packed_matmul_triton_strided_x_and_exact_integers() -> None:
    """Non-contiguous x; integer inputs with power-of-two scales make every product exact: equal results."""
    torch.manual_seed(3)
    codes = _codes(5, 40, 4, False)
    w = pack_bits(codes, 4)
    scale = torch.full((5,), 0.25)
    zp = torch.full((5,), 8.0)
    x = torch.randint(-3, 4, (40, 6)).float().t()  # [6, 40], strides (1, 6)
    got = K.packed_matmul_triton(x, w, scale, zp, 4)
    assert torch.equal(got, R.packed_matmul_reference(x, w, scale, zp, 4))
    assert torch.equal(got, x @ ((codes.float() - 8) * 0.25).t())


@pytest.mark.interpret
@interp
def test_packed_matmul_triton_empty() -> None:
    w = pack_bits(_codes(3, 8, 4, False), 4)
    assert K.packed_matmul_triton(torch.randn(0, 8), w, torch.ones(3), None, 4).shape == (0, 3)
    y = K.packed_matmul_triton(torch.randn(2, 0), torch.zeros(3, 0, dtype=torch.int32), torch.ones(3), None, 4)
    assert torch.equal(y, torch.zeros(2, 3))


# --------------------------------------------------------------------------- binary GEMM


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("k", [1, 31, 32, 33, 100, 257])
def test_binary_matmul_triton_matches_reference(k: int) -> None:
    torch.manual_seed(k)
    a, b = torch.randn(3, k), torch.randn(5, k)
    a[0, : k // 2] = 0.0  # sign(0) = +1
    pa, pb = pack_signs(a), pack_signs(b)
    got = K.binary_matmul_triton(pa, pb, k)
    assert got.dtype == torch.int32
    assert torch.equal(got, R.binary_matmul_reference(pa, pb, k))
    sa, sb = torch.where(a >= 0, 1, -1), torch.where(b >= 0, 1, -1)
    assert torch.equal(got, (sa @ sb.t()).to(torch.int32))


@pytest.mark.interpret
@interp
def test_binary_matmul_triton_ignores_padding_bits() -> None:
    """Junk in the unused bits of the last word (bit 31 included) changes nothing."""
    torch.manual_seed(1)
    k = 45
    pa, pb = pack_signs(torch.randn(4, k)), pack_signs(torch.randn(7, k))
    junk_a, junk_b = pa.clone(), pb.clone()
    junk_a[:, -1] |= torch.tensor(-(1 << 13), dtype=torch.int32)  # bits 13..31 of word 1 (= bits 45..63)
    junk_b[::2, -1] |= torch.tensor(-(1 << 20), dtype=torch.int32)
    expected = R.binary_matmul_reference(pa, pb, k)
    assert torch.equal(R.binary_matmul_reference(junk_a, junk_b, k), expected)
    assert torch.equal(K.binary_matmul_triton(junk_a, junk_b, k), expected)


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 64, 97])
def test_binary_linear_triton_matches_reference(k: int, dtype: torch.dtype) -> None:
    torch.manual_seed(k)
    x = torch.randn(5, k).to(dtype)
    x[1, 0] = 0.0
    x[2, 1] = -0.0  # -0.0 >= 0: +1, as pack_signs
    w = pack_signs(torch.randn(3, k))
    alpha = torch.rand(3) + 0.5
    for a in (alpha, None):
        got = K.binary_linear_triton(x, w, a, k)
        assert got.dtype == dtype
        assert torch.equal(got, R.binary_linear_reference(x, w, a, k))


# --------------------------------------------------------------------------- DFSQ quantizer


def _dfsq_points(c: int, p: int, seed: int) -> torch.Tensor:
    u = R.dfsq_universal_set(4)
    g = torch.Generator().manual_seed(seed)
    return u[torch.sort(torch.randint(0, len(u), (c, p), generator=g), dim=1).values]  # repeats allowed


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 40, 30)])
def test_dfsq_triton_post_relu_bit_exact(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    """Post-ReLU: bit for bit, a zero channel included; (40, 30) needs two row blocks (1200 > 1024)."""
    torch.manual_seed(2)
    x = (torch.randn(shape) * 3).relu().to(dtype)
    x[0, 1] = 0.0
    pts = _dfsq_points(shape[1], 16, 0)
    got = K.dfsq_quantize_triton(x, pts, True)
    assert got.dtype == dtype
    assert torch.equal(got, R.dfsq_quantize_reference(x, pts, True))


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_dfsq_triton_centred_bit_exact_when_mean_is_exact(shared: bool, dtype: torch.dtype) -> None:
    """Dyadic inputs, H*W = 32: every partial sum is exact, so the mean and the output are bit-exact."""
    torch.manual_seed(4)
    x = (torch.randint(-64, 65, (2, 3, 4, 8)) / 32.0).to(dtype)
    x[1, 2] = 1.5  # constant channel: scale guarded to 1
    pts = R.dfsq_universal_set(2) if shared else _dfsq_points(3, 8, 1)
    got = K.dfsq_quantize_triton(x, pts, False)
    assert torch.equal(got, R.dfsq_quantize_reference(x, pts, False))
    if shared:  # the set holds 0: a constant channel (normalized to 0) comes back unchanged
        assert torch.equal(got[1, 2], x[1, 2])


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_dfsq_triton_centred_random_close(dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    x = (torch.randn(2, 4, 9, 11) * 2 + 0.3).to(dtype)
    pts = _dfsq_points(4, 16, 2)
    got = K.dfsq_quantize_triton(x, pts, False)
    ref = R.dfsq_quantize_reference(x, pts, False)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * float(x.float().abs().max()))


@pytest.mark.interpret
@interp
def test_dfsq_triton_ties_go_to_the_lower_point() -> None:
    """Values exactly on midpoints (max|x| = 2, so x / scale is exact) go to the lower point, as the reference."""
    pts = torch.tensor([[-1.0, -0.25, 0.0, 0.5, 1.0]])  # midpoints -0.625, -0.125, 0.25, 0.75
    on_mids = [-1.25, -0.25, 0.5, 1.5]
    # centred: the values and their negatives sum to exactly 0, so the mean is exact
    xc = torch.tensor(on_mids + [2.0] + [-v for v in on_mids] + [-2.0]).reshape(1, 1, 2, 5)
    got = K.dfsq_quantize_triton(xc, pts, False)
    assert torch.equal(got, R.dfsq_quantize_reference(xc, pts, False))
    assert got.flatten()[:4].tolist() == [-2.0, -0.5, 0.0, 1.0]
    xp = torch.tensor([0.5, 1.5, 0.25, 2.0]).reshape(1, 1, 2, 2)  # post-ReLU, normalized 0.25, 0.75, 0.125, 1
    got_p = K.dfsq_quantize_triton(xp, pts, True)
    assert torch.equal(got_p, R.dfsq_quantize_reference(xp, pts, True))
    assert got_p.flatten().tolist() == [0.0, 1.0, 0.0, 2.0]


@pytest.mark.interpret
@interp
def test_dfsq_triton_single_point_and_empty() -> None:
    x = torch.randn(1, 2, 3, 3).relu()
    pts = torch.tensor([[0.0], [0.5]])
    got = K.dfsq_quantize_triton(x, pts, True)
    assert torch.equal(got, R.dfsq_quantize_reference(x, pts, True))
    assert torch.equal(got[0, 0], torch.zeros(3, 3))
    assert K.dfsq_quantize_triton(torch.randn(0, 2, 3, 3), pts, True).shape == (0, 2, 3, 3)


# --------------------------------------------------------------------------- ahead-of-time GPU compile

_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from arbitrary_quant import kernels as K

target = GPUTarget("cuda", int(sys.argv[1]), 32)
I32 = "i32"
jobs = []
# a few representative specializations (each compile costs ~1-2 s of CPU)
for dt, ieee, widths in (("fp16", False, ((4, 8, 8, False), (3, 10, 16, True))), ("fp32", True, ((2, 16, 16, True),)),
                         ("bf16", False, ((1, 32, 32, False),))):
    sig = {"x_ptr": "*" + dt, "w_ptr": "*i32", "scale_ptr": "*fp32", "zero_ptr": "*fp32", "y_ptr": "*" + dt,
           **{k: I32 for k in ("M", "N", "K", "KW", "stride_xm", "stride_xk", "stride_wn", "stride_ym")}}
    for bits, vpw, pad, signed in widths:
        consts = {"BITS": bits, "VPW": vpw, "VPW_PAD": pad, "SIGNED": signed, "HAS_ZERO": not signed, "IEEE": ieee,
                  "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}
        jobs.append(("packed", K._packed_matmul_kernel().fn, sig, consts, True))
for a_dt, a_float in (("i32", False), ("fp16", True)):
    sig = {"a_ptr": "*" + a_dt, "b_ptr": "*i32", "alpha_ptr": "*fp32", "y_ptr": "*" + ("fp16" if a_float else "i32"),
           **{k: I32 for k in ("M", "N", "K", "KW", "stride_am", "stride_ak", "stride_bn", "stride_ym")}}
    consts = {"A_FLOAT": a_float, "HAS_ALPHA": a_float, "BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_W": 4}
    jobs.append(("binary", K._binary_matmul_kernel().fn, sig, consts, True))
for dt, posts in (("fp32", (True, False)), ("fp16", (False,))):
    for post in posts:
        sig = {"x_ptr": "*" + dt, "pts_ptr": "*fp32", "y_ptr": "*" + dt, "HW": I32, "C": I32, "P": I32}
        jobs.append(("dfsq", K._dfsq_kernel(), sig, {"POST_RELU": post, "BLOCK": 1024}, False))
for name, fn, sig, consts, fusion in jobs:
    full = {**sig, **{k: "constexpr" for k in consts}}
    compiled = triton.compile(ASTSource(fn=fn, signature=full, constexprs=consts), target=target,
                              options={"num_warps": 4, "enable_fp_fusion": fusion})
    assert "cubin" in compiled.asm
    ptx = compiled.asm["ptx"]
    if name == "binary":
        assert "popc" in ptx, "the SWAR popcount was not turned into popc"
    if name == "dfsq":
        # IEEE division and no FMA contraction: what makes the kernel match the reference bit for bit
        assert "div.rn.f32" in ptx and "div.full" not in ptx and "fma.rn.f32" not in ptx
print("compiled", len(jobs))
"""


@pytest.mark.parametrize("arch", [90, pytest.param(80, marks=pytest.mark.slow)])
def test_kernels_compile_for_gpu_targets(arch: int, tmp_path: Path) -> None:
    """Ahead-of-time compile every kernel to a cubin (no GPU needed): catches errors the interpreter misses."""
    pytest.importorskip("triton")
    proc = compile_ahead_of_time(_COMPILE_SCRIPT, arch, tmp_path)
    if ptxas_missing(proc):
        pytest.skip("ptxas not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled 9" in proc.stdout
