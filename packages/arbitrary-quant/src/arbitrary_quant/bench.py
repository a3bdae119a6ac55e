"""Kernel timings behind ``arbitrary-quant bench``: this package's ops against plain PyTorch.

* packed k-bit matmul (:func:`arbitrary_quant.ops.packed_matmul`) vs a dense matmul with the
  dequantized weight (fp32 on CPU, fp16 cuBLAS on CUDA), for 2, 4 and 8 bits;
* binary GEMM on sign bits (:func:`arbitrary_quant.ops.binary_matmul`, XNOR + popcount) vs a float
  matmul of the +-1 matrices;
* the DFSQ quantizer (:func:`arbitrary_quant.ops.dfsq_quantize`) vs a per-channel loop, the way the
  official code assigns points.

On CPU every op runs its PyTorch reference, so CPU numbers compare two PyTorch implementations;
the Triton kernels are timed only on a GPU. Ratios are medians over interleaved rounds
(:func:`slimkit.bench.compare`); ``> 1`` = faster than the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from arbitrary_quant import ops
from arbitrary_quant.reference import dequantize_packed, dfsq_denormalize, dfsq_normalize
from slimkit.bench import compare, env_header, section_rows
from slimkit.packing import pack_bits, pack_signs

__all__ = ["BenchSizes", "loop_dfsq_quantize", "run_benchmarks"]


@dataclass
class BenchSizes:
    """Problem sizes; :meth:`quick` is small enough for tests and a busy laptop."""

    mm_batch: int = 256
    mm_out: int = 1024
    mm_in: int = 1024
    bin_m: int = 256
    bin_n: int = 1024
    bin_k: int = 1024
    dfsq_batch: int = 4
    dfsq_channels: int = 64
    dfsq_size: int = 48
    dfsq_points: int = 16

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(16, 64, 128, 16, 64, 128, 2, 8, 12, 16)


def loop_dfsq_quantize(x: Tensor, points: Tensor, post_relu: bool) -> Tensor:
    """DFSQ assignment one channel at a time (distance to every point, argmin), as the official code loops."""
    xn, scale, mean = dfsq_normalize(x, post_relu)
    out = torch.empty_like(xn)
    for c in range(xn.shape[1]):
        pts = points[c]
        idx = (xn[:, c].unsqueeze(-1) - pts).abs().argmin(dim=-1)
        out[:, c] = pts[idx]
    return dfsq_denormalize(out, scale, mean)


def _packed_variants(
    x: Tensor, dense: Tensor, packed: Tensor, scale: Tensor, zero: Tensor, bits: int
) -> dict[str, Callable[[], Tensor]]:
    """The two sides of one packed-matmul row (a function, so each bit-width binds its own tensors)."""
    return {
        "dense_dequantized": lambda: F.linear(x, dense),
        "packed": lambda: ops.packed_matmul(x, packed, scale, zero, bits),
    }



def run_benchmarks(
    device: torch.device | str = "cpu", sizes: BenchSizes | None = None, repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Run every section; returns ``{"env", "dtype", "rows"}`` (JSON-ready)."""
    sizes = sizes or BenchSizes()
    dev = torch.device(device)
    dt = torch.float16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []

    x = torch.randn(sizes.mm_batch, sizes.mm_in, generator=gen).to(dev, dt)
    for bits in (2, 4, 8):
        codes = torch.randint(0, 2**bits, (sizes.mm_out, sizes.mm_in), generator=gen)
        packed = pack_bits(codes, bits).to(dev)
        scale = (torch.rand(sizes.mm_out, generator=gen) + 0.5).to(dev) / 2**bits
        zero = torch.full((sizes.mm_out,), float(2 ** (bits - 1)), device=dev)
        dense = dequantize_packed(packed, scale, zero, bits, sizes.mm_in).to(dt)
        rows += section_rows(
            f"packed_matmul_{bits}bit",
            f"B={sizes.mm_batch} {sizes.mm_out}x{sizes.mm_in}",
            compare(_packed_variants(x, dense, packed, scale, zero, bits), baseline="dense_dequantized",
                    warmup=warmup, repeats=repeats),
        )  # fmt: skip

    a = torch.randn(sizes.bin_m, sizes.bin_k, generator=gen)
    b = torch.randn(sizes.bin_n, sizes.bin_k, generator=gen)
    a_pm = torch.where(a >= 0, 1.0, -1.0).to(dev, dt)
    b_pm = torch.where(b >= 0, 1.0, -1.0).to(dev, dt)
    a_bits, b_bits = pack_signs(a).to(dev), pack_signs(b).to(dev)
    rows += section_rows(
        "binary_matmul",
        f"{sizes.bin_m}x{sizes.bin_k} @ {sizes.bin_k}x{sizes.bin_n}",
        compare(
            {"float_pm1": lambda: a_pm @ b_pm.T, "xnor_popcount": lambda: ops.binary_matmul(a_bits, b_bits, sizes.bin_k)},
            baseline="float_pm1", warmup=warmup, repeats=repeats,
        ),
    )  # fmt: skip

    xs = torch.relu(torch.randn(sizes.dfsq_batch, sizes.dfsq_channels, sizes.dfsq_size, sizes.dfsq_size, generator=gen))
    points = torch.sort(torch.rand(sizes.dfsq_channels, sizes.dfsq_points, generator=gen), dim=1).values
    xs, points = xs.to(dev, dt), points.to(dev, dt)
    rows += section_rows(
        "dfsq_quantize",
        f"{sizes.dfsq_batch}x{sizes.dfsq_channels}x{sizes.dfsq_size}x{sizes.dfsq_size} P={sizes.dfsq_points}",
        compare(
            {"per_channel_loop": lambda: loop_dfsq_quantize(xs, points, True),
             "dfsq_quantize": lambda: ops.dfsq_quantize(xs, points, True)},
            baseline="per_channel_loop", warmup=warmup, repeats=repeats,
        ),
    )  # fmt: skip
    return {"env": env_header(device=dev), "dtype": str(dt).replace("torch.", ""), "rows": rows}
