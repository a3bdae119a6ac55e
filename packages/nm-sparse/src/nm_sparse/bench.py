"""Kernel timings behind ``nm-sparse bench``: this package's ops against plain PyTorch.

(The digits accuracy sweep behind ``nm-sparse table`` is :mod:`nm_sparse.sweep`.)

* mask selection: :func:`nm_sparse.ops.nm_mask` vs ``topk`` + ``scatter``;
* Bi-Mask permutation scoring: one batched op vs the per-candidate loop of the official code
  (permute, ``topk`` down the columns, count the survivors);
* compressed N:M matmul: :func:`nm_sparse.ops.nm_matmul` vs a dense matmul with the
  masked weight;
* 2:4 semi-structured (``torch.sparse.to_sparse_semi_structured``) vs dense, CUDA only.

On CPU every op runs its PyTorch reference, so CPU numbers compare two PyTorch
implementations; the Triton kernels are only timed on a GPU. Ratios are per interleaved
round (slimkit.bench.compare), ``> 1`` = faster than the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nm_sparse import ops
from slimkit.bench import compare, env_header

__all__ = ["BenchSizes", "plain_permutation_scores", "plain_topk_mask", "run_benchmarks", "semi_structured_rows"]


@dataclass
class BenchSizes:
    """Problem sizes; ``quick()`` is small enough for tests and a busy laptop."""

    mask_rows: int = 1024
    mask_cols: int = 1024
    perm_out: int = 256
    perm_in: int = 1152
    perm_candidates: int = 100
    mm_batch: int = 256
    mm_out: int = 1024
    mm_in: int = 1024

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(128, 256, 32, 144, 8, 16, 128, 256)


def plain_topk_mask(w2d: Tensor, n: int, m: int) -> Tensor:
    """The obvious PyTorch N:M mask: ``topk`` of |w| per group, scattered into a bool mask."""
    rows, cols = w2d.shape
    a = w2d.abs().reshape(rows, cols // m, m)
    idx = a.topk(n, dim=-1).indices
    return torch.zeros_like(a, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, cols)


def plain_permutation_scores(w_abs_masked: Tensor, perms: Tensor, n: int, m: int) -> Tensor:
    """Per-candidate loop as in the official Bi-Mask code: permute, column top-n, count survivors."""
    rows, cols = w_abs_masked.shape
    out = []
    for perm in perms:
        blocks = w_abs_masked[perm].reshape(rows // m, m, cols)
        idx = blocks.topk(n, dim=1).indices
        keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, idx, True)
        out.append((keep & (blocks > 0)).sum())
    return torch.stack(out).float()


def _rows(section: str, shape: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"section": section, "shape": shape, **row} for row in results]


def run_benchmarks(
    device: torch.device | str = "cpu",
    n: int = 2,
    m: int = 4,
    sizes: BenchSizes | None = None,
    repeats: int = 10,
    warmup: int = 2,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run every section and return ``{"env", "pattern", "dtype", "rows"}`` (JSON-ready)."""
    sizes = sizes or BenchSizes()
    dev = torch.device(device)
    dt = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []

    w = torch.randn(sizes.mask_rows, sizes.mask_cols, generator=gen).to(dev, dt)
    rows += _rows(
        "nm_mask",
        f"{sizes.mask_rows}x{sizes.mask_cols}",
        compare(
            {"torch_topk": lambda: plain_topk_mask(w, n, m), "nm_sparse": lambda: ops.nm_mask(w, n, m)},
            baseline="torch_topk",
            warmup=warmup,
            repeats=repeats,
        ),
    )

    wp = torch.randn(sizes.perm_out, sizes.perm_in, generator=gen)
    wm = (wp * ops.nm_mask(wp, n, m)).abs().to(dev)
    perms = torch.stack([torch.randperm(sizes.perm_out, generator=gen) for _ in range(sizes.perm_candidates)]).to(dev)
    rows += _rows(
        "permutation_scores",
        f"{sizes.perm_out}x{sizes.perm_in} K={sizes.perm_candidates}",
        compare(
            {
                "torch_loop": lambda: plain_permutation_scores(wm, perms, n, m),
                "nm_sparse": lambda: ops.permutation_scores(wm, perms, n, m, "kept"),
            },
            baseline="torch_loop",
            warmup=warmup,
            repeats=repeats,
        ),
    )

    wd = torch.randn(sizes.mm_out, sizes.mm_in, generator=gen).to(dev, dt)
    values, indices = ops.compress(wd, n, m)
    dense = ops.decompress(values, indices, n, m)
    x = torch.randn(sizes.mm_batch, sizes.mm_in, generator=gen).to(dev, dt)
    rows += _rows(
        "nm_matmul",
        f"B={sizes.mm_batch} {sizes.mm_out}x{sizes.mm_in}",
        compare(
            {
                "dense": lambda: F.linear(x, dense),
                "nm_sparse_compressed": lambda: ops.nm_matmul(x, values, indices, n, m),
            },
            baseline="dense",
            warmup=warmup,
            repeats=repeats,
        ),
    )
    rows += semi_structured_rows(dev, sizes, n, m, repeats, warmup)
    return {"env": env_header(device=dev), "pattern": f"{n}:{m}", "dtype": str(dt).replace("torch.", ""), "rows": rows}


def semi_structured_rows(
    dev: torch.device, sizes: BenchSizes, n: int, m: int, repeats: int, warmup: int
) -> list[dict[str, Any]]:
    """fp16 2:4 ``to_sparse_semi_structured`` linear vs dense; a 'skipped' row where it cannot run."""
    shape = f"B={sizes.mm_batch} {sizes.mm_out}x{sizes.mm_in}"
    if dev.type != "cuda":
        return [{"section": "semi_structured", "shape": shape, "name": "skipped", "reason": "needs CUDA (sm80+)"}]
    if n * 2 > m:
        return [
            {"section": "semi_structured", "shape": shape, "name": "skipped", "reason": f"{n}:{m} is denser than 2:4"}
        ]
    from torch.sparse import to_sparse_semi_structured

    gen = torch.Generator().manual_seed(1)
    wd = torch.randn(sizes.mm_out, sizes.mm_in, generator=gen).to(dev, torch.float16)
    w24 = wd * ops.nm_mask(wd, 2, 4)  # a sparser N:M mask is also a valid 2:4 subset
    x = torch.randn(sizes.mm_batch, sizes.mm_in, generator=gen).to(dev, torch.float16)
    try:
        sparse = to_sparse_semi_structured(w24)
        results = compare(
            {"dense": lambda: F.linear(x, w24), "semi_structured": lambda: F.linear(x, sparse)},
            baseline="dense",
            warmup=warmup,
            repeats=repeats,
        )
    except (RuntimeError, ValueError) as exc:  # unsupported GPU or shape
        return [{"section": "semi_structured", "shape": shape, "name": "skipped", "reason": str(exc).splitlines()[0]}]
    return _rows("semi_structured", shape, results)
