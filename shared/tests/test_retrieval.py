"""slimkit.retrieval.cosine_topk against a brute-force ranking."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import slimkit.ops as ops
from slimkit.errors import BadInputError
from slimkit.reference import cosine_topk_reference
from slimkit.retrieval import cosine_topk


def _brute(q: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(keys, dim=1).T
    rows = [sorted(range(keys.shape[0]), key=lambda j, r=r: (-float(sims[r, j]), j))[:k] for r in range(q.shape[0])]
    idx = torch.tensor(rows)
    return sims.gather(1, idx), idx


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_matches_brute_force_for_every_chunk_size(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(5, 8, generator=g), torch.randn(23, 8, generator=g)
    scores, idx = cosine_topk(q, keys, 6, chunk=chunk)
    ref_s, ref_i = _brute(q, keys, 6)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(scores, ref_s)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_ties_keep_lower_index_first_across_chunks() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    _, idx = cosine_topk(torch.tensor([[1.0, 0.0]]), keys, 3, chunk=2)
    assert idx.tolist() == [[0, 2, 3]]  # three keys at cosine 1, in index order


def test_k_larger_than_keys_single_query_and_scale_invariance() -> None:
    keys = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    q = torch.randn(3, generator=torch.Generator().manual_seed(2))
    scores, idx = cosine_topk(q, keys, 10)
    assert scores.shape == idx.shape == (4,)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    s2, i2 = cosine_topk(q * 7.0, keys * 0.1, 10)
    assert torch.equal(i2, idx)
    torch.testing.assert_close(s2, scores)
    assert float(scores.abs().max()) <= 1.0 + 1e-6


def test_zero_vector_scores_zero_and_integer_inputs_work() -> None:
    keys = torch.tensor([[0, 0], [1, 0]])
    scores, idx = cosine_topk(torch.tensor([[1, 0]]), keys, 2)
    assert idx.tolist() == [[1, 0]] and scores.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    ("q", "keys", "k", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(4, 5), 1, "dimension 3 but keys have 5"),
        (torch.zeros(2, 3, 1), torch.zeros(4, 3), 1, "needs queries"),
        (torch.zeros(2, 3), torch.zeros(4, 3), 0, "positive integer"),
        (torch.zeros(2, 3), torch.zeros(4, 3), True, "positive integer"),
    ],
)
def test_bad_inputs_name_the_problem(q: torch.Tensor, keys: torch.Tensor, k: int, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        cosine_topk(q, keys, k)


def test_normalized_keys_skip_the_norm_and_give_the_same_ranking() -> None:
    g = torch.Generator().manual_seed(3)
    keys = torch.nn.functional.normalize(torch.randn(50, 6, generator=g), dim=1)
    q = torch.randn(4, 6, generator=g)
    s1, i1 = cosine_topk(q, keys, 5, chunk=16)
    s2, i2 = cosine_topk(q, keys, 5, chunk=16, normalized=True)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)


def test_ties_at_the_topk_cut_inside_one_chunk_keep_lower_indices() -> None:
    keys = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    _, idx = cosine_topk(torch.tensor([[1.0, 0.0]]), keys, 2)
    assert idx.tolist() == [[1, 3]]


def test_cpu_tensors_stay_on_the_reference_even_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def boom(*args: object) -> object:
        raise AssertionError("the Triton path ran for CPU tensors")

    monkeypatch.setattr(ops, "_cosine_topk_op", boom)
    q, keys = torch.randn(3, 8), torch.randn(50, 8)
    s, i = cosine_topk(q, keys, 4)
    rs, ri = cosine_topk_reference(q, keys, 4)
    assert torch.equal(i, ri) and torch.equal(s, rs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_runs_the_kernel_and_matches_the_reference(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []
    real = ops.cosine_topk_via_triton

    def counted(*args: Any) -> Any:
        ran.append(1)
        return real(*args)

    monkeypatch.setattr(ops, "cosine_topk_via_triton", counted)  # the reference alone must not pass this test
    torch.manual_seed(0)
    q = torch.randn(300, 256, device="cuda", dtype=dtype)
    keys = torch.randn(50_000, 256, device="cuda", dtype=dtype)
    s, i = cosine_topk(q, keys, 20)
    assert ran == [1]
    rs, _ = cosine_topk_reference(q.float(), keys.float(), 20)
    torch.testing.assert_close(s.float(), rs, rtol=0, atol=2e-3 if dtype == torch.float16 else 1e-5)
    true = torch.nn.functional.normalize(q.float(), dim=1) @ torch.nn.functional.normalize(keys.float(), dim=1).T
    torch.testing.assert_close(true.gather(1, i), s.float(), rtol=0, atol=2e-3 if dtype == torch.float16 else 1e-5)
