"""Fused best-match / merge kernels against the PyTorch references and hand-computed invariants."""

from __future__ import annotations

import pytest
import torch

from slimkit.kernels import interpret_mode
from token_rate import kernels as K

interp = pytest.mark.skipif(not interpret_mode(), reason="needs TRITON_INTERPRET=1 (set by the test runner)")
DTYPES = [torch.float32, torch.float16]
# (B, Ns, Nd, C): single tiles, several dst/src tiles, channels spanning several chunks.
SHAPES = [(1, 5, 7, 8), (2, 37, 45, 20), (2, 70, 33, 40)]


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 2e-3


def _inputs(shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, ns, nd, c = shape
    src = torch.randn(b, ns, c, generator=g).to(dtype)
    dst = torch.randn(b, nd, c, generator=g).to(dtype)
    return src, dst


def _assert_match_agrees(sim, idx, src, dst, tol):
    ref_sim, ref_idx = K._best_match_ref(src, dst)
    assert sim.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(sim, ref_sim, atol=tol, rtol=0)
    # Where the top two candidates are clearly apart the choice must be identical; on near-ties
    # the chosen destination must still reach the maximum similarity.
    full = torch.nn.functional.normalize(src.float(), dim=-1, eps=K._EPS) @ torch.nn.functional.normalize(
        dst.float(), dim=-1, eps=K._EPS
    ).transpose(1, 2)
    top2 = full.topk(min(2, full.shape[-1]), dim=-1).values
    clear = (
        (top2[..., 0] - top2[..., -1]) > 10 * tol if full.shape[-1] > 1 else torch.ones_like(ref_idx, dtype=torch.bool)
    )
    assert torch.equal(idx[clear], ref_idx[clear])
    chosen = full.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chosen, ref_sim, atol=10 * tol, rtol=0)


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_best_match_triton_matches_reference(shape, dtype):
    src, dst = _inputs(shape, dtype)
    sim, idx = K.best_match_triton(src, dst)
    _assert_match_agrees(sim, idx, src, dst, _tol(dtype))


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_best_match_triton_ties_pick_lowest_index(dtype):
    torch.manual_seed(1)
    b, nd, c = 2, 48, 16
    dst = torch.randn(b, nd, c).to(dtype)
    # Destinations 3, 9 and 40 (40 sits in a later 32-wide tile) are the same direction,
    # at different scales: cosine ties exactly in exact arithmetic.
    dst[:, 9] = dst[:, 3]
    dst[:, 40] = dst[:, 3]
    src = torch.randn(b, 6, c).to(dtype)
    src[:, 2] = dst[:, 3] * 2
    src[:, 4] = dst[:, 3]
    sim, idx = K.best_match_triton(src, dst)
    assert idx[:, 2].tolist() == [3, 3] and idx[:, 4].tolist() == [3, 3]
    torch.testing.assert_close(sim[:, 2], torch.ones(b), atol=_tol(dtype), rtol=0)
    _, ref_idx = K._best_match_ref(src, dst)
    assert ref_idx[:, 2].tolist() == [3, 3]


@pytest.mark.interpret
@interp
def test_best_match_triton_zero_token_is_finite():
    src = torch.zeros(1, 3, 8)
    src[0, 1] = 1.0
    dst = torch.randn(1, 4, 8)
    sim, idx = K.best_match_triton(src, dst)
    assert torch.isfinite(sim).all()
    assert sim[0, 0].item() == 0.0 and idx[0, 0].item() == 0


def _merge_inputs(b, nd, ns, c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, nd, c, generator=g).to(dtype)
    size = (torch.rand(b, nd, 1, generator=g) * 3 + 0.5).to(torch.float32)
    src = torch.randn(b, ns, c, generator=g).to(dtype)
    src_size = (torch.rand(b, ns, 1, generator=g) * 2 + 0.1).to(torch.float32)
    # Skewed targets: many sources share a few destinations, some destinations get none.
    idx = (torch.rand(b, ns, generator=g) ** 2 * nd).long().clamp_max(nd - 1)
    return x, size, src, src_size, idx


def _merge_loop(x, size, src, src_size, idx, mode):
    """Naive per-destination loop, independent of both implementations."""
    out = x.double().clone()
    new_size = size.double().clone()
    for b in range(x.shape[0]):
        for d in range(x.shape[1]):
            members = (idx[b] == d).nonzero().flatten().tolist()
            w = [1.0 if mode == "mean" else float(size[b, d])] + [
                1.0 if mode == "mean" else float(src_size[b, s]) for s in members
            ]
            rows = [x[b, d].double()] + [src[b, s].double() for s in members]
            out[b, d] = sum(wi * r for wi, r in zip(w, rows)) / sum(w)
            new_size[b, d] = float(size[b, d]) + sum(float(src_size[b, s]) for s in members)
    return out, new_size


@pytest.mark.parametrize("mode", K.MERGE_MODES)
def test_merge_reference_against_loop(mode):
    x, size, src, src_size, idx = _merge_inputs(2, 6, 9, 5, torch.float64)
    out, new_size = K._merge_ref(x, size, src, src_size, idx, mode)
    exp_out, exp_size = _merge_loop(x, size, src, src_size, idx, mode)
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(new_size.double(), exp_size)
    # Sizes are conserved by merging.
    torch.testing.assert_close(new_size.sum((1, 2)), size.sum((1, 2)) + src_size.sum((1, 2)))


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("mode", K.MERGE_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(1, 4, 3, 8), (2, 45, 70, 40), (2, 33, 5, 20)])
def test_merge_triton_matches_reference(dims, dtype, mode):
    x, size, src, src_size, idx = _merge_inputs(*dims, dtype)
    out, new_size = K.merge_triton(x, size, src, src_size, idx, mode)
    ref_out, ref_size = K._merge_ref(x, size, src, src_size, idx, mode)
    assert out.dtype == dtype and new_size.dtype == size.dtype
    torch.testing.assert_close(out.float(), ref_out.float(), atol=_tol(dtype), rtol=_tol(dtype))
    torch.testing.assert_close(new_size, ref_size, atol=1e-5, rtol=1e-5)


@pytest.mark.interpret
@interp
def test_merge_triton_is_deterministic():
    x, size, src, src_size, idx = _merge_inputs(2, 40, 90, 24, torch.float32, seed=3)
    a = K.merge_triton(x, size, src, src_size, idx, "weighted")
    b = K.merge_triton(x, size, src, src_size, idx, "weighted")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_custom_ops_cpu_path_is_reference():
    src, dst = _inputs((2, 11, 13, 16), torch.float32)
    sim, idx = K.best_match(src, dst)
    ref = K._best_match_ref(src, dst)
    assert torch.equal(sim, ref[0]) and torch.equal(idx, ref[1])
    x, size, s, ssz, ix = _merge_inputs(2, 13, 11, 16, torch.float32)
    for mode in K.MERGE_MODES:
        out = K.merge(x, size, s, ssz, ix, mode)
        exp = K._merge_ref(x, size, s, ssz, ix, mode)
        assert torch.equal(out[0], exp[0]) and torch.equal(out[1], exp[1])
    assert hasattr(torch.ops.token_rate, "best_match") and hasattr(torch.ops.token_rate, "merge")


def test_merge_rejects_bad_mode_and_shapes():
    x, size, s, ssz, ix = _merge_inputs(1, 4, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="mode"):
        K.merge(x, size, s, ssz, ix, "sum")
    with pytest.raises(ValueError, match="shapes"):
        K.merge(x, size[:, :2], s, ssz, ix, "mean")
    with pytest.raises(ValueError, match="no destination"):
        K.best_match(s, x[:, :0])


@pytest.mark.parametrize("mode", K.MERGE_MODES)
def test_merge_backward_matches_autograd_of_reference(mode):
    x, size, src, src_size, idx = _merge_inputs(2, 5, 7, 4, torch.float64, seed=2)
    size = size.double()
    src_size = src_size.double()
    leaves = [t.clone().requires_grad_(True) for t in (x, size, src, src_size)]
    out, new_size = K.merge(leaves[0], leaves[1], leaves[2], leaves[3], idx, mode)
    g1, g2 = torch.randn_like(out), torch.randn_like(new_size)
    grads = torch.autograd.grad((out * g1).sum() + (new_size * g2).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, size, src, src_size)]
    r_out, r_size = K._merge_ref(ref_leaves[0], ref_leaves[1], ref_leaves[2], ref_leaves[3], idx, mode)
    ref_grads = torch.autograd.grad((r_out * g1).sum() + (r_size * g2).sum(), ref_leaves)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_best_match_has_no_gradient_path():
    src = torch.randn(1, 3, 4, requires_grad=True)
    dst = torch.randn(1, 5, 4, requires_grad=True)
    sim, idx = K.best_match(src, dst)
    assert not sim.requires_grad and not idx.requires_grad


def test_opcheck_custom_ops():
    src, dst = _inputs((2, 6, 7, 8), torch.float32)
    torch.library.opcheck(torch.ops.token_rate.best_match.default, (src, dst))
    x, size, s, ssz, ix = _merge_inputs(2, 7, 6, 8, torch.float32)
    for mode in K.MERGE_MODES:
        args = (x.requires_grad_(), size, s.requires_grad_(), ssz, ix, mode)
        torch.library.opcheck(torch.ops.token_rate.merge.default, args)


def test_kernels_agree_with_core_references():
    """The fused ops implement exactly what token_rate.merge's references define."""
    from token_rate import merge as merge_mod

    src, dst = _inputs((2, 9, 12, 16), torch.float32)
    sim, idx = merge_mod.best_match_reference(src, dst)
    k_sim, k_idx = K.best_match(src, dst)
    torch.testing.assert_close(k_sim, sim.float())
    assert torch.equal(k_idx, idx)
    x, size, s, ssz, ix = _merge_inputs(2, 12, 9, 16, torch.float32)
    for mode in K.MERGE_MODES:
        exp = merge_mod.merge_reference(x, size, s, ssz, ix, mode)
        got = K.merge(x, size, s, ssz, ix, mode)
        torch.testing.assert_close(got[0], exp[0])
        torch.testing.assert_close(got[1], exp[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_ops_match_reference(dtype):
    src, dst = _inputs((4, 150, 190, 384), dtype)
    src, dst = src.cuda(), dst.cuda()
    sim, idx = K.best_match(src, dst)
    _assert_match_agrees(sim.cpu(), idx.cpu(), src.cpu(), dst.cpu(), _tol(dtype))
    x, size, s, ssz, ix = (t.cuda() for t in _merge_inputs(4, 190, 150, 384, dtype))
    for mode in K.MERGE_MODES:
        out = K.merge(x, size, s, ssz, ix, mode)
        exp = K._merge_ref(x, size, s, ssz, ix, mode)
        torch.testing.assert_close(out[0].float(), exp[0].float(), atol=_tol(dtype), rtol=_tol(dtype))
        torch.testing.assert_close(out[1], exp[1])
