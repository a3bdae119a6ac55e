"""Kernels: Triton launchers (interpreter, CPU tensors) against the PyTorch references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nm_sparse import kernels as K
from slimkit.errors import BadInputError

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 16)]
DTYPES = [torch.float32, torch.float16]

interpret = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def _topn_valid(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> None:
    """Exactly n kept per group, and every kept |w| >= every dropped |w| in its group."""
    a = w.float().abs().reshape(w.shape[0], -1, m)
    keep = mask.reshape(a.shape)
    assert torch.equal(keep.sum(-1), torch.full(keep.shape[:2], n))
    kept_min = torch.where(keep, a, torch.inf).amin(-1)
    dropped_max = torch.where(keep, -torch.inf, a).amax(-1)
    assert (kept_min >= dropped_max).all()


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5), (7, 32)])
def test_mask_reference_is_topn_with_lower_index_tie_break(n: int, m: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(7, m * 6)
    w[0] = 1.0  # a row of ties: the first n of each group must win
    mask = K.nm_mask_reference(w, n, m)
    _topn_valid(w, mask, n, m)
    expected_row0 = (torch.arange(m * 6) % m) < n
    assert torch.equal(mask[0], expected_row0)


def test_mask_reference_matches_topk_without_ties() -> None:
    torch.manual_seed(1)
    w = torch.randn(16, 64)
    mask = K.nm_mask_reference(w, 2, 8)
    idx = w.abs().reshape(16, 8, 8).topk(2, dim=-1).indices
    ref = torch.zeros(16, 8, 8, dtype=torch.bool).scatter_(-1, idx, True).reshape(16, 64)
    assert torch.equal(mask, ref)


def test_custom_op_cpu_path_is_reference() -> None:
    torch.manual_seed(2)
    w = torch.randn(8, 32)
    assert torch.equal(torch.ops.nm_sparse.nm_mask(w, 2, 4), K.nm_mask_reference(w, 2, 4))
    torch.library.opcheck(torch.ops.nm_sparse.nm_mask.default, (w, 2, 4))
    perms = torch.stack([torch.randperm(8) for _ in range(3)])
    torch.library.opcheck(torch.ops.nm_sparse.permutation_scores.default, (w.abs(), perms, 2, 4, "kept"))
    v, i = K.compress(w, 2, 4)
    torch.library.opcheck(torch.ops.nm_sparse.nm_matmul.default, (torch.randn(3, 32), v, i, 2, 4))


@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5)])
def test_compress_roundtrip_and_shapes(n: int, m: int) -> None:
    torch.manual_seed(3)
    w = torch.randn(6, m * 4)
    values, indices = K.compress(w, n, m)
    assert values.shape == (6, 4 * n) and indices.shape == (6, 4 * n) and indices.dtype == torch.uint8
    assert int(indices.max()) < m
    # indices ascend inside each group
    grouped = indices.reshape(6, 4, n).long()
    assert (grouped.diff(dim=-1) > 0).all()
    dense = K.decompress(values, indices, n, m)
    assert torch.equal(dense, w * K.nm_mask(w, n, m))
    # an already N:M-sparse weight is stored exactly (compress is idempotent on it)
    v2, i2 = K.compress(dense, n, m)
    assert torch.equal(K.decompress(v2, i2, n, m), dense)


def test_compress_keeps_pattern_of_groups_with_fewer_nonzeros() -> None:
    w = torch.zeros(2, 8)
    w[0, 5] = 3.0  # one non-zero where 2:4 allows two
    values, indices = K.compress(w, 2, 4)
    assert torch.equal(K.decompress(values, indices, 2, 4), w)


def test_nm_matmul_reference_and_autograd() -> None:
    torch.manual_seed(4)
    w = torch.randn(5, 16, dtype=torch.float64)
    values, indices = K.compress(w, 2, 8)
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    v = values.clone().requires_grad_(True)
    y = K.nm_matmul(x, v, indices, 2, 8)
    assert torch.allclose(y, x @ K.decompress(values, indices, 2, 8).t())
    assert torch.autograd.gradcheck(lambda a, b: K.nm_matmul(a, b, indices, 2, 8), (x, v))


def test_permutation_scores_reference_properties() -> None:
    torch.manual_seed(5)
    w = torch.randn(8, 24)
    wm = (w * K.nm_mask(w, 2, 4)).abs()
    perms = torch.stack([torch.arange(8)] + [torch.randperm(8) for _ in range(4)])
    kept = K.permutation_scores_reference(wm, perms, 2, 4, "kept")
    # "kept" equals sum over (group, column) of min(n, non-zeros in the group)
    for k in range(perms.shape[0]):
        nnz = (wm[perms[k]].reshape(2, 4, 24) > 0).sum(1)
        assert kept[k] == nnz.clamp(max=2).sum()
        eligible = K.permutation_scores_reference(wm, perms[k : k + 1], 2, 4, "eligible")
        assert eligible[0] == (nnz <= 2).sum()
    # a permutation inside groups does not change any score; the bound is the forward count
    inside = torch.tensor([1, 0, 3, 2, 7, 6, 5, 4])
    for scorer in K.SCORERS:
        s = K.permutation_scores_reference(wm, torch.stack([torch.arange(8), inside]), 2, 4, scorer)
        assert torch.allclose(s[0], s[1])
    assert (kept <= (wm > 0).sum()).all()


def test_bad_inputs_raise_bad_input_error() -> None:
    w = torch.randn(4, 8)
    with pytest.raises(BadInputError):
        K.nm_mask(w, 5, 4)
    with pytest.raises(BadInputError):
        K.nm_mask(w, 2, 3)  # 8 not divisible by 3
    with pytest.raises(BadInputError):
        K.nm_mask(w, 1, 64)
    with pytest.raises(BadInputError):
        K.permutation_scores(w.abs(), torch.zeros(2, 4, dtype=torch.long), 2, 4, "best")
    v, i = K.compress(w, 2, 4)
    with pytest.raises(BadInputError):
        K.nm_matmul(torch.randn(2, 12), v, i, 2, 4)


# --------------------------------------------------------------------------- Triton (interpreter)


@pytest.mark.interpret
@interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [*PATTERNS, (3, 5)])
def test_mask_triton_matches_reference(n: int, m: int, dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    w = torch.randn(5, m * 6).to(dtype)
    w[1, :m] = 0.5  # ties
    got = K.nm_mask_triton(w, n, m)
    assert got.dtype == torch.bool
    assert torch.equal(got, K.nm_mask_reference(w, n, m))
    _topn_valid(w, got, n, m)


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
    values, indices = K.compress(w, n, m)
    got = K.nm_matmul_triton(x.to(dtype), values.to(dtype), indices, n, m)
    assert got.dtype == dtype and got.shape == (6, 19)
    ref = x.to(dtype).float() @ K.decompress(values, indices, n, m).to(dtype).float().t()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), ref, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n,m", PATTERNS)
def test_cuda_ops_match_reference(n: int, m: int) -> None:
    torch.manual_seed(10)
    w = torch.randn(256, m * 64, device="cuda", dtype=torch.float16)
    assert torch.equal(K.nm_mask(w, n, m).cpu(), K.nm_mask_reference(w.cpu(), n, m))
    values, indices = K.compress(w, n, m)
    x = torch.randn(64, m * 64, device="cuda", dtype=torch.float16)
    ref = x.float() @ K.decompress(values, indices, n, m).float().t()
    assert torch.allclose(K.nm_matmul(x, values, indices, n, m).float(), ref, rtol=2e-2, atol=2e-2)
    wm = (w.float() * K.nm_mask(w, n, m)).abs()[: m * 8]
    perms = torch.stack([torch.randperm(m * 8, device="cuda") for _ in range(16)])
    got = K.permutation_scores(wm, perms, n, m, "kept")
    assert torch.equal(got.cpu(), K.permutation_scores_reference(wm.cpu(), perms.cpu(), n, m, "kept"))


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
jobs = [(K._nm_mask_kernel, mask_sig, {"N": n, "M": m, "M_PAD": p, "BLOCK_G": 64}) for n, m, p in [(2, 4, 4), (3, 5, 8), (1, 16, 16)]]
jobs += [(K._perm_scores_kernel, perm_sig, {"N": 2, "M": 4, "M_PAD": 4, "SCORER": s, "BLOCK_I": 64}) for s in (0, 1, 2)]
for dt, ieee in (("fp16", False), ("fp32", True), ("bf16", False)):
    sig = {"x_ptr": "*" + dt, "v_ptr": "*" + dt, "idx_ptr": "*u8", "y_ptr": "*" + dt, "B": "i32", "R": "i32", "G": "i32",
           "stride_xb": "i32", "stride_yb": "i32"}
    jobs.append((K._nm_matmul_kernel, sig, {"N": 2, "M": 4, "M_PAD": 4, "IEEE": ieee, "BLOCK_B": 32, "BLOCK_R": 64, "BLOCK_G": 16}))
for fn, sig, consts in jobs:
    full = {**sig, **{k: "constexpr" for k in consts}}
    compiled = triton.compile(ASTSource(fn=fn.fn, signature=full, constexprs=consts), target=target, options={"num_warps": 4})
    assert "cubin" in compiled.asm
print("compiled", len(jobs))
"""


@pytest.mark.parametrize("arch", [90, pytest.param(80, marks=pytest.mark.slow)])
def test_kernels_compile_for_gpu_targets(arch: int, tmp_path: Path) -> None:
    """Ahead-of-time compile every kernel to a cubin (no GPU needed): catches errors the interpreter misses."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, str(arch)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    if proc.returncode != 0 and ("ptxas" in proc.stderr.lower() and "not found" in proc.stderr.lower()):
        pytest.skip("ptxas not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled 9" in proc.stdout
