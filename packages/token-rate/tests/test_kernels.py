"""The Triton launchers of token_rate.kernels against the PyTorch references and hand-computed invariants
(the custom ops and the dispatch are tested in test_ops.py)."""

from __future__ import annotations

import pytest
import torch

from slimkit.kernels import interpret_mode
from token_rate import kernels as K
from token_rate import ops
from token_rate.reference import MERGE_MODES

interp = pytest.mark.skipif(not interpret_mode(), reason="needs TRITON_INTERPRET=1 (set by the test runner)")
DTYPES = [torch.float32, torch.float16]
# (B, Ns, Nd, C): single tiles, several dst/src tiles, channels spanning several chunks.
SHAPES = [(1, 5, 7, 8), (2, 37, 45, 20), (2, 70, 33, 40)]


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_best_match_triton_matches_reference(mt, shape, dtype):
    src, dst = mt.inputs(shape, dtype)
    sim, idx = K.best_match_triton(src, dst)
    mt.assert_match_agrees(sim, idx, src, dst, mt.tol(dtype))


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_best_match_triton_ties_pick_lowest_index(mt, dtype):
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
    torch.testing.assert_close(sim[:, 2], torch.ones(b), atol=mt.tol(dtype), rtol=0)
    _, ref_idx = ops._best_match_ref(src, dst)
    assert ref_idx[:, 2].tolist() == [3, 3]


@pytest.mark.interpret
@interp
def test_best_match_triton_zero_token_is_finite():
    src = torch.zeros(1, 3, 8)
    src[0, 1] = 1.0
    dst = torch.randn(1, 4, 8)
    sim, idx = K.best_match_triton(src, dst)
    assert sim[0, 0].item() == 0.0 and idx[0, 0].item() == 0
    ref_sim, ref_idx = ops._best_match_ref(src, dst)
    torch.testing.assert_close(sim, ref_sim)
    assert torch.equal(idx, ref_idx)


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
def test_merge_reference_against_loop(mt, mode):
    x, size, src, src_size, idx = mt.merge_inputs(2, 6, 9, 5, torch.float64)
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
def test_merge_triton_matches_reference(mt, dims, dtype, mode):
    x, size, src, src_size, idx = mt.merge_inputs(*dims, dtype)
    out, new_size = K.merge_triton(x, size, src, src_size, idx, mode)
    ref_out, ref_size = ops._merge_ref(x, size, src, src_size, idx, mode)
    assert out.dtype == dtype and new_size.dtype == size.dtype
    torch.testing.assert_close(out.float(), ref_out.float(), atol=mt.tol(dtype), rtol=mt.tol(dtype))
    torch.testing.assert_close(new_size, ref_size, atol=1e-5, rtol=1e-5)


@pytest.mark.interpret
@interp
def test_merge_triton_is_deterministic(mt):
    x, size, src, src_size, idx = mt.merge_inputs(2, 40, 90, 24, torch.float32, seed=3)
    a = K.merge_triton(x, size, src, src_size, idx, "weighted")
    b = K.merge_triton(x, size, src, src_size, idx, "weighted")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.interpret
@interp
@pytest.mark.parametrize("mode", MERGE_MODES)
def test_merge_triton_strided_views_match_reference(mode):
    """The patched blocks pass strided views (ToMe's ``size[:, 1::2]``, DiffRate's ``size[:, :km]``);
    the kernel must not write the new sizes with the input view's strides."""
    torch.manual_seed(4)
    x = torch.randn(2, 40, 16)
    size = torch.rand(2, 40, 1) + 0.5
    dst, dst_size = x[:, 1::2], size[:, 1::2]           # every other row: stride 2 along tokens
    src, src_size = x[:, 0::2][:, :6], size[:, 0::2][:, :6]
    idx = torch.randint(0, dst.shape[1], (2, 6))
    assert not dst_size.is_contiguous()
    out, new_size = K.merge_triton(dst, dst_size, src, src_size, idx, mode)
    ref_out, ref_size = ops._merge_ref(dst, dst_size, src, src_size, idx, mode)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_size, ref_size, atol=1e-5, rtol=1e-5)
    # A prefix slice (DiffRate's destinations) as well.
    idx = torch.randint(0, 20, (2, 10))
    out, new_size = K.merge_triton(x[:, :20], size[:, :20], x[:, 20:30], size[:, 20:30], idx, mode)
    ref_out, ref_size = ops._merge_ref(x[:, :20], size[:, :20], x[:, 20:30], size[:, 20:30], idx, mode)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_size, ref_size, atol=1e-5, rtol=1e-5)
