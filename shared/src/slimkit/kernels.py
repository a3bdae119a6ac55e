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
    "autotune_configs",
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
