"""nm_sparse.kernels: Triton launchers (interpreter, CPU tensors) against the PyTorch references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nm_sparse import kernels as K
from nm_sparse import ops
from slimkit.kernels import compile_ahead_of_time, ptxas_missing

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 16)]


DTYPES = [torch.float32, torch.float16]


interpret = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


@pytest.mark.interpret
@interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5)])
def test_mask_triton_matches_reference(topn_valid, n: int, m: int, dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    w = torch.randn(5, m * 6).to(dtype)
    w[1, :m] = 0.5  # ties
    got = K.nm_mask_triton(w, n, m)
    assert got.dtype == torch.bool
    assert torch.equal(got, K.nm_mask_reference(w, n, m))
    assert got[1, :m].tolist() == [i < n for i in range(m)]  # the tied group: the first n win
    topn_valid(w, got, n, m)


_TIE_GROUPS: dict[int, list[list[float]]] = {
    4: [[1, 1, 1, 1], [0.5, 1, 1, 1], [1, 0.5, 1, 0.5], [1, 1, 0.5, 2], [0, 0, 0, 0], [-0.0, 0, 3, -3]],
    5: [[2, 2, 2, 2, 2], [1, 2, 1, 2, 1], [-1, 1, -1, 0, 0], [0, 0, 0, 0, 7], [4, -4, 4, -4, 4]],
}


def _topn_lower_index_by_hand(rows: list[list[float]], n: int) -> list[list[bool]]:
    out = []
    for row in rows:
        keep = set(sorted(range(len(row)), key=lambda i: (-abs(row[i]), i))[:n])
        out.append([i in keep for i in range(len(row))])
    return out


@pytest.mark.parametrize("path", ["reference", pytest.param("triton", marks=[pytest.mark.interpret, interpret])])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (3, 5)])
def test_mask_exact_ties_keep_lower_index(path: str, n: int, m: int, dtype: torch.dtype) -> None:
    """Hand-built groups of equal |w| (signs and -0.0 included): exactly n kept, the lower indices first."""
    groups = _TIE_GROUPS[m]
    rows = [groups, groups[::-1]]
    w = torch.tensor([[v for g in row for v in g] for row in rows], dtype=dtype)
    expected = torch.tensor([[k for g in _topn_lower_index_by_hand(row, n) for k in g] for row in rows])
    got = K.nm_mask_triton(w, n, m) if path == "triton" else K.nm_mask_reference(w, n, m)
    assert torch.equal(got, expected)
    assert torch.equal(got.reshape(2, -1, m).sum(-1), torch.full((2, len(groups)), n))


@pytest.mark.interpret
@interpret
@pytest.mark.parametrize("scorer", K.SCORERS)
@pytest.mark.parametrize("n,m", PATTERNS)
def test_permutation_scores_triton_matches_reference(n: int, m: int, scorer: str) -> None:
    torch.manual_seed(7)
    rows = m * 2
    w = torch.randn(rows, 40)
    wm = w.abs() * (torch.rand(rows, 40) < 0.5)  # irregular column counts, like a row-wise mask
    perms = torch.stack([torch.randperm(rows) for _ in range(4)])
    ref = K.permutation_scores_reference(wm, perms, n, m, scorer)
    got = K.permutation_scores_triton(wm, perms, n, m, scorer)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.interpret
@interpret
def test_permutation_scores_triton_fp16() -> None:
    torch.manual_seed(8)
    w = torch.randn(8, 33)
    wm = (w.abs() * (torch.rand(8, 33) < 0.5)).half()
    perms = torch.stack([torch.randperm(8) for _ in range(3)])
    for scorer in ("kept", "eligible"):
        assert torch.equal(
            K.permutation_scores_triton(wm, perms, 2, 4, scorer),
            K.permutation_scores_reference(wm, perms, 2, 4, scorer),
        )


@pytest.mark.interpret
@interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5)])
def test_nm_matmul_triton_matches_reference(n: int, m: int, dtype: torch.dtype) -> None:
    torch.manual_seed(9)
    w = torch.randn(19, m * 5)
    x = torch.randn(6, m * 5)
    values, indices = ops.compress(w, n, m)
    got = K.nm_matmul_triton(x.to(dtype), values.to(dtype), indices, n, m)
    assert got.dtype == dtype and got.shape == (6, 19)
    ref = x.to(dtype).float() @ ops.decompress(values, indices, n, m).to(dtype).float().t()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), ref, rtol=tol, atol=tol)


_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from nm_sparse import kernels as K

arch = int(sys.argv[1])
target = GPUTarget("cuda", arch, 32)
mask_sig = {"w_ptr": "*fp16", "out_ptr": "*i8", "num_groups": "i32"}
perm_sig = {"a_ptr": "*fp32", "perm_ptr": "*i64", "part_ptr": "*fp32", "out_rows": "i32", "in_cols": "i32"}
jobs = [(K._nm_mask_kernel(), mask_sig, {"N": n, "M": m, "M_PAD": p, "BLOCK_G": 64}) for n, m, p in [(2, 4, 4), (3, 5, 8), (1, 16, 16)]]
jobs += [(K._perm_scores_kernel(), perm_sig, {"N": 2, "M": 4, "M_PAD": 4, "SCORER": s, "BLOCK_I": 64}) for s in (0, 1, 2)]
for dt, ieee in (("fp16", False), ("fp32", True), ("bf16", False)):
    sig = {"x_ptr": "*" + dt, "v_ptr": "*" + dt, "idx_ptr": "*u8", "y_ptr": "*" + dt, "B": "i32", "R": "i32", "G": "i32",
           "stride_xb": "i32", "stride_yb": "i32"}
    jobs.append((K._nm_matmul_kernel(), sig, {"N": 2, "M": 4, "M_PAD": 4, "IEEE": ieee, "BLOCK_B": 32, "BLOCK_R": 64, "BLOCK_G": 16}))
for fn, sig, consts in jobs:
    full = {**sig, **{k: "constexpr" for k in consts}}
    compiled = triton.compile(ASTSource(fn=fn.fn, signature=full, constexprs=consts), target=target, options={"num_warps": 4})
    assert "cubin" in compiled.asm
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
