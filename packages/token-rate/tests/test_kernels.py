"""The Triton launchers of token_rate.kernels against the PyTorch references and hand-computed invariants
(the custom ops and the dispatch are tested in test_ops.py)."""

from __future__ import annotations

import pytest
import torch

from slimkit.kernels import interpret_mode
from token_rate import kernels as K
from token_rate import ops
from token_rate.reference import MERGE_MODES, NORM_EPS

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
    ref_sim, ref_idx = ops._best_match_ref(src, dst)
    assert sim.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(sim, ref_sim, atol=tol, rtol=0)
    # Where the top two candidates are clearly apart the choice must be identical; on near-ties
    # the chosen destination must still reach the maximum similarity.
    full = torch.nn.functional.normalize(src.float(), dim=-1, eps=NORM_EPS) @ torch.nn.functional.normalize(
        dst.float(), dim=-1, eps=NORM_EPS
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
    _, ref_idx = ops._best_match_ref(src, dst)
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


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_merge_reference_against_loop(mode):
    x, size, src, src_size, idx = _merge_inputs(2, 6, 9, 5, torch.float64)
    out, new_size = ops._merge_ref(x, size, src, src_size, idx, mode)
    exp_out, exp_size = _merge_loop(x, size, src, src_size, idx, mode)
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(new_size.double(), exp_size)
    # Sizes are conserved by merging.
    torch.testing.assert_close(new_size.sum((1, 2)), size.sum((1, 2)) + src_size.sum((1, 2)))


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("mode", MERGE_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(1, 4, 3, 8), (2, 45, 70, 40), (2, 33, 5, 20)])
def test_merge_triton_matches_reference(dims, dtype, mode):
    x, size, src, src_size, idx = _merge_inputs(*dims, dtype)
    out, new_size = K.merge_triton(x, size, src, src_size, idx, mode)
    ref_out, ref_size = ops._merge_ref(x, size, src, src_size, idx, mode)
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
