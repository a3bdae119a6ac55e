"""nm_sparse.ops: custom ops (CPU body = reference) and the validating dispatchers."""

from __future__ import annotations

import pytest
import torch

from nm_sparse import ops
from nm_sparse import reference as K
from slimkit.errors import BadInputError

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 16)]


def test_custom_op_cpu_path_is_reference() -> None:
    torch.manual_seed(2)
    w = torch.randn(8, 32)
    assert torch.equal(torch.ops.nm_sparse.nm_mask(w, 2, 4), K.nm_mask_reference(w, 2, 4))
    torch.library.opcheck(torch.ops.nm_sparse.nm_mask.default, (w, 2, 4))
    perms = torch.stack([torch.randperm(8) for _ in range(3)])
    torch.library.opcheck(torch.ops.nm_sparse.permutation_scores.default, (w.abs(), perms, 2, 4, "kept"))
    v, i = ops.compress(w, 2, 4)
    torch.library.opcheck(torch.ops.nm_sparse.nm_matmul.default, (torch.randn(3, 32), v, i, 2, 4))


def test_nm_matmul_reference_and_autograd() -> None:
    torch.manual_seed(4)
    w = torch.randn(5, 16, dtype=torch.float64)
    values, indices = ops.compress(w, 2, 8)
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    v = values.clone().requires_grad_(True)
    y = ops.nm_matmul(x, v, indices, 2, 8)
    assert torch.allclose(y, x @ ops.decompress(values, indices, 2, 8).t())
    assert torch.autograd.gradcheck(lambda a, b: ops.nm_matmul(a, b, indices, 2, 8), (x, v))


def test_bad_inputs_raise_bad_input_error() -> None:
    w = torch.randn(4, 8)
    with pytest.raises(BadInputError):
        ops.nm_mask(w, 5, 4)
    with pytest.raises(BadInputError):
        ops.nm_mask(w, 2, 3)  # 8 not divisible by 3
    with pytest.raises(BadInputError):
        ops.nm_mask(w, 1, 64)
    with pytest.raises(BadInputError):
        ops.permutation_scores(w.abs(), torch.zeros(2, 4, dtype=torch.long), 2, 4, "best")
    v, i = ops.compress(w, 2, 4)
    with pytest.raises(BadInputError):
        ops.nm_matmul(torch.randn(2, 12), v, i, 2, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n,m", PATTERNS)
def test_cuda_ops_match_reference(n: int, m: int) -> None:
    torch.manual_seed(10)
    w = torch.randn(256, m * 64, device="cuda", dtype=torch.float16)
    assert torch.equal(ops.nm_mask(w, n, m).cpu(), K.nm_mask_reference(w.cpu(), n, m))
    values, indices = ops.compress(w, n, m)
    x = torch.randn(64, m * 64, device="cuda", dtype=torch.float16)
    ref = x.float() @ ops.decompress(values, indices, n, m).float().t()
    assert torch.allclose(ops.nm_matmul(x, values, indices, n, m).float(), ref, rtol=2e-2, atol=2e-2)
    wm = (w.float() * ops.nm_mask(w, n, m)).abs()[: m * 8]
    perms = torch.stack([torch.randperm(m * 8, device="cuda") for _ in range(16)])
    got = ops.permutation_scores(wm, perms, n, m, "kept")
    assert torch.equal(got.cpu(), K.permutation_scores_reference(wm.cpu(), perms.cpu(), n, m, "kept"))
