"""Custom ops ``token_rate::best_match`` / ``token_rate::merge``: CPU body, checks, autograd, opcheck, and
the public dispatch (CPU calls the reference directly, CUDA goes through the ops)."""

from __future__ import annotations

import pytest
import torch

from token_rate import ops
from token_rate.reference import MERGE_MODES, best_match_reference, merge_reference

DTYPES = [torch.float32, torch.float16]


def test_custom_ops_cpu_path_is_reference(mt):
    src, dst = mt.inputs((2, 11, 13, 16), torch.float32)
    sim, idx = ops.best_match_op(src, dst)
    ref = ops._best_match_ref(src, dst)
    assert torch.equal(sim, ref[0]) and torch.equal(idx, ref[1])
    x, size, s, ssz, ix = mt.merge_inputs(2, 13, 11, 16, torch.float32)
    for mode in MERGE_MODES:
        out = ops.merge_op(x, size, s, ssz, ix, mode)
        exp = ops._merge_ref(x, size, s, ssz, ix, mode)
        assert torch.equal(out[0], exp[0]) and torch.equal(out[1], exp[1])
    assert hasattr(torch.ops.token_rate, "best_match") and hasattr(torch.ops.token_rate, "merge")


def test_merge_rejects_bad_mode_and_shapes(mt):
    x, size, s, ssz, ix = mt.merge_inputs(1, 4, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="mode"):
        ops.merge_op(x, size, s, ssz, ix, "sum")
    with pytest.raises(ValueError, match="shapes"):
        ops.merge_op(x, size[:, :2], s, ssz, ix, "mean")
    with pytest.raises(ValueError, match="no destination"):
        ops.best_match_op(s, x[:, :0])


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_merge_backward_matches_autograd_of_reference(mt, mode):
    x, size, src, src_size, idx = mt.merge_inputs(2, 5, 7, 4, torch.float64, seed=2)
    size = size.double()
    src_size = src_size.double()
    leaves = [t.clone().requires_grad_(True) for t in (x, size, src, src_size)]
    out, new_size = ops.merge_op(leaves[0], leaves[1], leaves[2], leaves[3], idx, mode)
    gen = torch.Generator().manual_seed(3)
    g1 = torch.randn(out.shape, dtype=out.dtype, generator=gen)
    g2 = torch.randn(new_size.shape, dtype=new_size.dtype, generator=gen)
    grads = torch.autograd.grad((out * g1).sum() + (new_size * g2).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, size, src, src_size)]
    r_out, r_size = ops._merge_ref(ref_leaves[0], ref_leaves[1], ref_leaves[2], ref_leaves[3], idx, mode)
    ref_grads = torch.autograd.grad((r_out * g1).sum() + (r_size * g2).sum(), ref_leaves)
    for a, b in zip(grads, ref_grads):  # the op accumulates in fp32 internally: fp32 tolerances
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_best_match_has_no_gradient_path():
    src = torch.randn(1, 3, 4, requires_grad=True)
    dst = torch.randn(1, 5, 4, requires_grad=True)
    sim, idx = ops.best_match_op(src, dst)
    assert not sim.requires_grad and not idx.requires_grad


def test_opcheck_custom_ops(mt):
    src, dst = mt.inputs((2, 6, 7, 8), torch.float32)
    torch.library.opcheck(torch.ops.token_rate.best_match.default, (src, dst))
    x, size, s, ssz, ix = mt.merge_inputs(2, 7, 6, 8, torch.float32)
    for mode in MERGE_MODES:
        args = (x.requires_grad_(), size, s.requires_grad_(), ssz, ix, mode)
        torch.library.opcheck(torch.ops.token_rate.merge.default, args)


def test_kernels_agree_with_core_references(mt):
    """The fused ops implement exactly what token_rate.merge's references define."""
    from token_rate import merge as merge_mod  # the 0.1 module path

    src, dst = mt.inputs((2, 9, 12, 16), torch.float32)
    sim, idx = merge_mod.best_match_reference(src, dst)
    k_sim, k_idx = ops.best_match_op(src, dst)
    torch.testing.assert_close(k_sim, sim.float())
    assert torch.equal(k_idx, idx)
    x, size, s, ssz, ix = mt.merge_inputs(2, 12, 9, 16, torch.float32)
    for mode in MERGE_MODES:
        exp = merge_mod.merge_reference(x, size, s, ssz, ix, mode)
        got = ops.merge_op(x, size, s, ssz, ix, mode)
        torch.testing.assert_close(got[0], exp[0])
        torch.testing.assert_close(got[1], exp[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_ops_match_reference(mt, dtype):
    src, dst = mt.inputs((4, 150, 190, 384), dtype)
    src, dst = src.cuda(), dst.cuda()
    sim, idx = ops.best_match_op(src, dst)
    mt.assert_match_agrees(sim.cpu(), idx.cpu(), src.cpu(), dst.cpu(), mt.tol(dtype))
    x, size, s, ssz, ix = (t.cuda() for t in mt.merge_inputs(4, 190, 150, 384, dtype))
    for mode in MERGE_MODES:
        out = ops.merge_op(x, size, s, ssz, ix, mode)
        exp = ops._merge_ref(x, size, s, ssz, ix, mode)
        torch.testing.assert_close(out[0].float(), exp[0].float(), atol=mt.tol(dtype), rtol=mt.tol(dtype))
        torch.testing.assert_close(out[1], exp[1])


def test_cpu_dispatch_calls_the_reference_directly(mt, monkeypatch):
    """CPU tensors never enter the custom op (no dispatch, no argument checks)."""
    src, dst = mt.inputs((2, 5, 7, 8), torch.float32)

    def boom(*args, **kwargs):
        raise AssertionError("custom op called on CPU")

    monkeypatch.setattr(ops, "_best_match_op", boom)
    monkeypatch.setattr(ops, "_merge_op", boom)
    sim, idx = ops.best_match(src, dst)
    ref = best_match_reference(src, dst)
    assert torch.equal(sim, ref[0]) and torch.equal(idx, ref[1])
    x, size, s, ssz, ix = mt.merge_inputs(2, 7, 5, 8, torch.float32)
    for mode in MERGE_MODES:
        out = ops.merge(x, size, s, ssz, ix, mode)
        exp = merge_reference(x, size, s, ssz, ix, mode)
        assert torch.equal(out[0], exp[0]) and torch.equal(out[1], exp[1])


def _value_error(fn, *args):
    with pytest.raises(ValueError) as exc:
        fn(*args)
    return str(exc.value)


def test_match_shape_checks_name_both_shapes():
    from token_rate.reference import check_match_shapes

    t = torch.zeros
    assert _value_error(check_match_shapes, t(3, 4), t(1, 5, 4)) == \
        "best_match expects [B, N, C] tensors, got (3, 4) and (1, 5, 4)"
    assert _value_error(check_match_shapes, t(1, 3, 4), t(5, 4)) == \
        "best_match expects [B, N, C] tensors, got (1, 3, 4) and (5, 4)"
    assert _value_error(check_match_shapes, t(1, 3, 4), t(2, 5, 4)) == \
        "best_match: batch/channel mismatch (1, 3, 4) vs (2, 5, 4)"
    assert _value_error(check_match_shapes, t(2, 3, 4), t(2, 5, 6)) == \
        "best_match: batch/channel mismatch (2, 3, 4) vs (2, 5, 6)"
    assert _value_error(check_match_shapes, t(1, 1, 4), t(1, 0, 4)) == \
        "best_match: no destination tokens to match against"
    check_match_shapes(t(1, 0, 4), t(1, 0, 4))  # nothing to match, nothing to match against: fine
    sim, idx = ops.best_match_op(t(2, 0, 4), t(2, 0, 4))
    assert sim.shape == idx.shape == (2, 0)


def test_merge_arg_checks_name_every_shape():
    from token_rate.reference import check_merge_args

    x, size, src, src_size, idx = torch.zeros(1, 4, 8), torch.ones(1, 4, 1), torch.zeros(1, 3, 8), \
        torch.ones(1, 3, 1), torch.zeros(1, 3, dtype=torch.long)
    assert _value_error(check_merge_args, x, size, src, src_size, idx, "sum") == \
        "merge mode must be one of ('mean', 'weighted'), got 'sum'"
    good = {"x": x, "size": size, "src": src, "src_size": src_size, "idx": idx}
    bad = {"size": torch.ones(1, 2, 1), "src": torch.zeros(1, 3, 7), "src_size": torch.ones(1, 2, 1),
           "idx": torch.zeros(1, 2, dtype=torch.long)}
    for name, wrong in bad.items():
        args = dict(good, **{name: wrong})
        shapes = " ".join(f"{n}={tuple(t.shape)}" for n, t in args.items())
        assert _value_error(check_merge_args, *args.values(), "mean") == f"merge: inconsistent shapes {shapes}"
    assert _value_error(check_merge_args, *dict(good, idx=bad["idx"]).values(), "mean") == (
        "merge: inconsistent shapes x=(1, 4, 8) size=(1, 4, 1) src=(1, 3, 8) src_size=(1, 3, 1) idx=(1, 2)")
    check_merge_args(*good.values(), "weighted")
