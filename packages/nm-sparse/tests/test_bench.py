"""nm_sparse.bench: kernel timings and the plain-PyTorch baselines."""

from __future__ import annotations

import torch

from nm_sparse import ops
from nm_sparse.bench import (
    BenchSizes,
    plain_permutation_scores,
    plain_topk_mask,
    run_benchmarks,
)


def test_plain_implementations_agree_with_ops() -> None:
    w = torch.randn(16, 64)
    assert torch.equal(plain_topk_mask(w, 2, 8), ops.nm_mask(w, 2, 8))
    wm = (w * (torch.rand(16, 64) < 0.5)).abs()
    perms = torch.stack([torch.randperm(16) for _ in range(5)])
    assert torch.equal(plain_permutation_scores(wm, perms, 2, 4), ops.permutation_scores(wm, perms, 2, 4))


def test_run_benchmarks_quick_cpu() -> None:
    sizes = BenchSizes(16, 32, 8, 16, 2, 4, 16, 32)
    result = run_benchmarks("cpu", 2, 4, sizes, repeats=1, warmup=0)
    sections = [row["section"] for row in result["rows"]]
    assert sections.count("nm_mask") == 2 and sections.count("permutation_scores") == 2
    assert sections.count("nm_matmul") == 2
    assert result["rows"][-1]["name"] == "skipped"  # semi-structured needs CUDA
    assert all(row["median_s"] > 0 for row in result["rows"] if "median_s" in row)
