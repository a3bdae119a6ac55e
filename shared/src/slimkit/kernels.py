"""Triton helpers and slimkit's Triton kernels (the kernel-file rule, layer 2).

Why this layout: Triton is heavy to import and absent on many machines, so this module
imports it only inside *builders* that :func:`lazy_kernel` runs on first use; ``import
slimkit.kernels`` never imports Triton. Kernels here are launched by :mod:`slimkit.ops`,
which is the only module that should import this one (besides tests, which call the
launchers directly under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

__all__ = [
    "COSINE_TOPK_MAX_K",
    "autotune_configs",
    "cosine_topk_triton",
    "compile_ahead_of_time",
    "interpret_mode",
    "l2_normalize_rows_triton",
    "lazy_kernel",
    "ptxas_missing",
    "require_triton",
    "triton_available",
    "triton_importable",
    "use_triton",
]


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_importable() -> bool:
    """Triton can be imported (checked once; the import itself happens only here and in builders)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def triton_available() -> bool:
    """Triton importable and a CUDA device present (the interpreter is checked separately)."""
    return triton_importable() and torch.cuda.is_available()


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a launcher should run Triton on these tensors (CUDA, or CPU under the interpreter)."""
    if not tensors:
        return False
    if all(t.is_cuda for t in tensors):
        return triton_available()
    return interpret_mode() and triton_importable() and all(t.device.type == "cpu" for t in tensors)


def autotune_configs(configs: Sequence[T]) -> list[T]:
    """All configs on a GPU; only the first under the interpreter, which cannot benchmark."""
    if not configs:
        raise ValueError("at least one autotune config is required")
    return [configs[0]] if interpret_mode() else list(configs)


def require_triton(name: str) -> None:
    """Clear error for calling a Triton launcher where it cannot run."""
    if not triton_importable():
        raise RuntimeError(f"{name} needs Triton, which is not installed")


def compile_ahead_of_time(
    script: str, arch: int, cache_dir: str | os.PathLike[str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script arch`` with Triton's interpreter off and a private kernel cache.

    Why: ``triton.compile`` for a GPU target needs no GPU, so a machine without one still catches
    kernels that only the real compiler rejects; the tests turn the interpreter on, so a child
    process without ``TRITON_INTERPRET`` does the compiling. The caller reads ``returncode`` and the
    output (see :func:`ptxas_missing`); nothing is raised for a failed compile.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(Path(cache_dir))
    return subprocess.run(
        [sys.executable, "-c", script, str(arch)], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def ptxas_missing(proc: subprocess.CompletedProcess[str]) -> bool:
    """Whether a failed :func:`compile_ahead_of_time` run failed only because the ``ptxas`` assembler is absent."""
    err = proc.stderr.lower()
    return proc.returncode != 0 and "ptxas" in err and "not found" in err


def lazy_kernel(builder: Callable[[], T]) -> Callable[[], T]:
    """Wrap a kernel builder so it runs once, on first call, and its result is cached.

    Why: ``@triton.jit`` at module level would import Triton with the module. The builder
    imports Triton and returns the jitted (autotuned) kernel; concurrent first calls build it
    once (a lock guards the build, later calls take the cached value without locking).
    """
    lock = threading.Lock()
    built: list[T] = []

    @functools.wraps(builder)
    def get() -> T:
        if built:
            return built[0]
        with lock:
            if not built:
                built.append(builder())
        return built[0]

    return get


# --------------------------------------------------------------------------- worked example
# Row-wise L2 normalization: cosine-similarity matching (token merging) and magnitude
# scoring both start with it, and it is small enough to read in one go.


def _build_l2_kernel() -> Any:
    import triton
    import triton.language as tl

    configs = autotune_configs(
        [
            triton.Config({"BLOCK_ROWS": 4}, num_warps=4),
            triton.Config({"BLOCK_ROWS": 16}, num_warps=4),
            triton.Config({"BLOCK_ROWS": 1}, num_warps=2),
        ]
    )

    @triton.autotune(configs=configs, key=["n_cols"])
    @triton.jit
    def kernel(x_ptr, out_ptr, n_rows, n_cols, eps, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):  # type: ignore[no-untyped-def]
        pid = tl.program_id(0)
        rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.arange(0, BLOCK_COLS)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        offsets = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        norm = tl.maximum(norm, eps)
        y = x / norm[:, None]
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)

    return kernel


_l2_kernel = lazy_kernel(_build_l2_kernel)


def l2_normalize_rows_triton(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton launcher (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``); same result as the reference."""
    require_triton("l2_normalize_rows_triton")
    import triton

    if x.dtype not in (torch.float16, torch.float32, torch.bfloat16):
        raise TypeError(f"unsupported dtype {x.dtype}")
    x2 = x.contiguous().view(-1, x.shape[-1]) if x.numel() else x.reshape(-1, max(1, x.shape[-1]))
    out = torch.empty_like(x2)
    n_rows, n_cols = x2.shape
    if n_rows == 0:
        return out.view_as(x)
    block_cols = triton.next_power_of_2(n_cols)

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_ROWS"]),)

    _l2_kernel()[grid](x2, out, n_rows, n_cols, eps, BLOCK_COLS=block_cols)
    return out.view_as(x)


# --------------------------------------------------------------------------- cosine top-k
# Blockwise cosine top-k (unidg's kNN graph, memochat's memo prefilter): each program scores a
# block of queries against one split of the keys, BLOCK_N keys at a time, and keeps a running
# top-k in registers, so the Q x N score matrix never exists; splits are merged afterwards.

COSINE_TOPK_MAX_K = 128


def _build_cosine_topk_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(  # type: ignore[no-untyped-def]
        q_ptr, k_ptr, out_s_ptr, out_i_ptr, n_q, n_k, dim, keys_per_split, stride_q, stride_k, eps,
        NORMALIZE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid_q = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        rows = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < n_q
        slots = tl.arange(0, KP)
        lanes = tl.arange(0, BLOCK_N)
        neg = float("-inf")
        best_s = tl.full((BLOCK_Q, KP), neg, tl.float32)
        best_i = tl.full((BLOCK_Q, KP), -1, tl.int32)
        start = split * keys_per_split
        stop = tl.minimum(start + keys_per_split, n_k)
        for n0 in range(start, stop, BLOCK_N):
            cols = n0 + lanes
            col_ok = cols < stop
            acc = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
            sq = tl.zeros((BLOCK_N,), tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                d_ok = ds < dim
                qb = tl.load(q_ptr + rows[:, None] * stride_q + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                kb = tl.load(k_ptr + cols[:, None] * stride_k + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                acc += tl.dot(qb, tl.trans(kb), input_precision=PRECISION)
                if NORMALIZE:
                    k32 = kb.to(tl.float32)
                    sq += tl.sum(k32 * k32, axis=1)
            if NORMALIZE:
                acc = acc / tl.maximum(tl.sqrt(sq), eps)[None, :]
            tile = tl.where(col_ok[None, :], acc, neg)
            # The k-th best so far; a tile only matters where it beats it (later keys lose ties).
            kth = tl.max(tl.where(slots[None, :] == K - 1, best_s, neg), axis=1)
            if tl.max(tl.sum((tile > kth[:, None]).to(tl.int32), axis=1), axis=0) > 0:
                run_s = best_s
                run_i = best_i
                new_s = tl.full((BLOCK_Q, KP), neg, tl.float32)
                new_i = tl.full((BLOCK_Q, KP), -1, tl.int32)
                for j in range(K):
                    m_run = tl.max(run_s, axis=1)
                    a_run = tl.argmax(run_s, axis=1)
                    m_tile = tl.max(tile, axis=1)
                    a_tile = tl.argmax(tile, axis=1)
                    take_run = m_run >= m_tile
                    i_run = tl.max(tl.where(slots[None, :] == a_run[:, None], run_i, -1), axis=1)
                    new_s = tl.where(slots[None, :] == j, tl.where(take_run, m_run, m_tile)[:, None], new_s)
                    new_i = tl.where(slots[None, :] == j, tl.where(take_run, i_run, n0 + a_tile)[:, None], new_i)
                    run_s = tl.where((slots[None, :] == a_run[:, None]) & take_run[:, None], neg, run_s)
                    tile = tl.where((lanes[None, :] == a_tile[:, None]) & ~take_run[:, None], neg, tile)
                best_s = new_s
                best_i = new_i
        out = (rows[:, None] * n_splits + split) * KP + slots[None, :]
        tl.store(out_s_ptr + out, best_s, mask=row_ok[:, None])
        tl.store(out_i_ptr + out, best_i, mask=row_ok[:, None])

    return kernel


_cosine_topk_kernel = lazy_kernel(_build_cosine_topk_kernel)


def cosine_topk_triton(
    queries: torch.Tensor, keys: torch.Tensor, k: int, normalized: bool = False, eps: float = 1e-12,
    block_n: int = 64, splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-split candidates ``(scores [Q, S, KP] fp32, indices [Q, S, KP] int32)`` of the cosine top-``k``.

    ``queries`` must already have unit rows (the caller normalises them once); ``keys`` are
    normalised on the fly unless ``normalized``. Each of the ``S`` key splits yields its ``k`` best
    per query, best first, lower index first among ties, padded to ``KP = next_pow2(k)`` with
    ``-inf`` / ``-1``; merging the splits (:func:`slimkit.reference.ordered_topk`) gives the exact
    result. fp32 inputs use IEEE products (no TF32, which would reorder close neighbours).
    """
    require_triton("cosine_topk_triton")
    import triton

    if not 1 <= k <= COSINE_TOPK_MAX_K:
        raise ValueError(f"cosine_topk_triton supports 1 <= k <= {COSINE_TOPK_MAX_K}, got {k}")
    if queries.dtype not in (torch.float16, torch.float32, torch.bfloat16) or keys.dtype != queries.dtype:
        raise TypeError(f"queries and keys need one float dtype, got {queries.dtype} and {keys.dtype}")
    q = queries.contiguous()
    kt = keys.contiguous()
    n_q, dim = q.shape
    n_k = kt.shape[0]
    block_q = 16
    block_d = min(64, max(16, triton.next_power_of_2(dim)))
    kp = max(16, triton.next_power_of_2(k))
    if n_q == 0 or n_k == 0:  # nothing to score (and the split arithmetic below would divide by zero)
        return (torch.full((n_q, 1, kp), float("-inf"), dtype=torch.float32, device=q.device),
                torch.full((n_q, 1, kp), -1, dtype=torch.int32, device=q.device))  # fmt: skip
    q_blocks = triton.cdiv(n_q, block_q)
    if splits is None:
        programs = 4 * torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 2
        splits = max(1, min(triton.cdiv(n_k, block_n), programs // q_blocks))
    per_split = triton.cdiv(triton.cdiv(n_k, splits), block_n) * block_n
    splits = triton.cdiv(n_k, per_split)
    out_s = torch.empty((n_q, splits, kp), dtype=torch.float32, device=q.device)
    out_i = torch.empty((n_q, splits, kp), dtype=torch.int32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _cosine_topk_kernel()[(q_blocks, splits)](
        q, kt, out_s, out_i, n_q, n_k, dim, per_split, q.stride(0), kt.stride(0), eps,
        NORMALIZE=not normalized, K=k, KP=kp, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision,
    )  # fmt: skip
    return out_s, out_i
