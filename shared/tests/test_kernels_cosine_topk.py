"""The blockwise cosine top-k kernel against the chunked reference, under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slimkit.kernels import COSINE_TOPK_MAX_K, compile_ahead_of_time, cosine_topk_triton, interpret_mode, ptxas_missing
from slimkit.ops import cosine_topk_via_triton
from slimkit.reference import cosine_topk_reference, ordered_topk

pytestmark = pytest.mark.interpret


@pytest.fixture(autouse=True)
def _interpreter() -> None:
    if not interpret_mode():
        pytest.skip("run with TRITON_INTERPRET=1")


def _true_cosine(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return F.normalize(q.double(), dim=1) @ F.normalize(keys.double(), dim=1).T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("n_q", "n_k", "dim", "k", "normalized"), [(5, 300, 40, 7, False), (17, 129, 16, 20, True), (1, 10, 8, 20, False), (3, 70, 33, 64, False)])
def test_matches_reference(dtype: torch.dtype, n_q: int, n_k: int, dim: int, k: int, normalized: bool) -> None:
    torch.manual_seed(n_k)
    q = torch.randn(n_q, dim).to(dtype)
    keys = torch.randn(n_k, dim)
    keys = (F.normalize(keys, dim=1) if normalized else keys).to(dtype)
    s, i = cosine_topk_via_triton(q, keys, k, normalized)
    rs, ri = cosine_topk_reference(q, keys, k, normalized=normalized)
    assert s.shape == rs.shape == (n_q, min(k, n_k)) and s.dtype == rs.dtype and i.dtype == torch.long
    if dtype == torch.float32:
        assert torch.equal(i, ri)
        torch.testing.assert_close(s, rs, rtol=1e-6, atol=1e-6)
        return
    # fp16: the kernel ranks fp32 products, the reference fp16 ones (whose rounding makes ties), so the
    # picks may differ among near-equal scores; every pick must still carry its true score, in order,
    # and reach the reference's scores.
    tol = 2e-3
    true = _true_cosine(q, keys).gather(1, i)
    torch.testing.assert_close(s.double(), true, rtol=0, atol=tol)
    torch.testing.assert_close(s.float(), rs.float(), rtol=0, atol=tol)
    assert bool((s[:, 1:] <= s[:, :-1]).all())
    assert all(len(set(row.tolist())) == row.numel() for row in i)


def test_splits_and_blocks_are_merged_exactly_and_ties_keep_lower_indices() -> None:
    torch.manual_seed(1)
    base = torch.randn(6, 24)
    keys = torch.cat([base, torch.randn(90, 24), base, torch.randn(40, 24), base])  # base[j] at j, 96 + j, 142 + j
    q = base[:4] + 0.01 * torch.randn(4, 24)
    rs, ri = cosine_topk_reference(q, keys, 9)
    for splits in (1, 2, 3, 5):
        s, i = cosine_topk_triton(F.normalize(q, dim=1), keys, 9, block_n=16, splits=splits)
        ms, mi = ordered_topk(s.flatten(1), i.flatten(1).long(), 9)
        assert torch.equal(mi, ri), splits
        torch.testing.assert_close(ms, rs, rtol=1e-6, atol=1e-6)
        assert torch.equal(mi[:, :3], torch.stack([torch.arange(4), torch.arange(4) + 96, torch.arange(4) + 142], 1))


def test_partial_candidates_are_sorted_padded_and_split_local() -> None:
    torch.manual_seed(2)
    q = F.normalize(torch.randn(3, 16), dim=1)
    keys = torch.randn(100, 16)
    s, i = cosine_topk_triton(q, keys, 5, block_n=16, splits=4)
    assert s.shape == i.shape == (3, 4, 16)
    assert bool(torch.isinf(s[..., 5:]).all()) and bool((i[..., 5:] == -1).all())
    per_split = 32  # ceil(100 / 4) rounded up to a multiple of block_n
    for split in range(4):
        lo, hi = split * per_split, min(100, (split + 1) * per_split)
        ref_s, ref_i = cosine_topk_reference(q, keys[lo:hi], 5)
        n = ref_i.shape[1]  # the last split holds 4 keys: one slot stays padding
        assert torch.equal(i[:, split, :n].long(), ref_i + lo)
        torch.testing.assert_close(s[:, split, :n], ref_s, rtol=1e-6, atol=1e-6)
        assert bool(torch.isinf(s[:, split, n:]).all())


def test_later_blocks_that_cannot_enter_are_skipped_without_changing_the_result() -> None:
    # keys sorted from most to least similar: after the first block no tile beats the k-th best
    q = F.normalize(torch.randn(2, 16), dim=1)
    keys = torch.randn(200, 16)
    order = (F.normalize(keys, dim=1) @ q[0]).argsort(descending=True)
    keys = keys[order]
    s, i = cosine_topk_via_triton(q, keys, 4, False)
    rs, ri = cosine_topk_reference(q, keys, 4)
    assert torch.equal(i, ri) and torch.equal(i[0], torch.arange(4))
    torch.testing.assert_close(s, rs)


def test_zero_key_scores_zero_and_k_bounds() -> None:
    keys = torch.zeros(20, 8)
    keys[3] = 1.0
    s, i = cosine_topk_via_triton(torch.ones(1, 8), keys, 2, False)
    assert i.tolist() == [[3, 0]] and s.tolist() == [[pytest.approx(1.0), 0.0]]
    with pytest.raises(ValueError, match="k <= 128"):
        cosine_topk_triton(torch.ones(1, 8), keys, COSINE_TOPK_MAX_K + 1)
    with pytest.raises(TypeError, match="one float dtype"):
        cosine_topk_triton(torch.ones(1, 8), keys.half(), 2)


def test_no_queries_or_no_keys_give_the_reference_shapes() -> None:
    # A CUDA cosine_topk with zero queries reached the kernel and died dividing by zero query blocks.
    keys = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    for q, kk in ((torch.empty(0, 8), keys), (torch.randn(2, 8), torch.empty(0, 8))):
        got, want = cosine_topk_via_triton(q, kk, 3, False), cosine_topk_reference(q, kk, 3)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
    s, i = cosine_topk_triton(torch.empty(0, 8), keys, 3)
    assert s.shape == i.shape == (0, 1, 16)


_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from slimkit import kernels as K

target = GPUTarget("cuda", int(sys.argv[1]), 32)
n = 0
for dt, precision in (("fp32", "ieee"), ("fp16", "tf32"), ("bf16", "tf32")):
    for normalize in (True, False):
        sig = {"q_ptr": "*" + dt, "k_ptr": "*" + dt, "out_s_ptr": "*fp32", "out_i_ptr": "*i32", "n_q": "i32", "n_k": "i32",
               "dim": "i32", "keys_per_split": "i32", "stride_q": "i32", "stride_k": "i32", "eps": "fp32"}
        consts = {"NORMALIZE": normalize, "K": 20, "KP": 32, "BLOCK_Q": 16, "BLOCK_N": 64, "BLOCK_D": 64, "PRECISION": precision}
        compiled = triton.compile(ASTSource(fn=K._cosine_topk_kernel(), signature={**sig, **{c: "constexpr" for c in consts}},
                                            constexprs=consts), target=target, options={"num_warps": 4})
        assert "cubin" in compiled.asm
        n += 1
print("compiled", n)
"""


@pytest.mark.parametrize("arch", [90, pytest.param(80, marks=pytest.mark.slow)])
def test_kernel_compiles_for_gpu_targets(arch: int, tmp_path: Path) -> None:
    """Ahead-of-time compile to a cubin (no GPU needed): catches what only the real compiler rejects."""
    proc = compile_ahead_of_time(_COMPILE_SCRIPT, arch, tmp_path)
    if ptxas_missing(proc):
        pytest.skip("ptxas not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled 6" in proc.stdout
