"""Theoretical cost of a quantized DETR, counted the way binary / low-bit papers count it.

Convention (written out because Q-DETR's "6.6x" does not say which it used): one forward at a
given input size through :func:`slimkit.opcount.count_ops`; an FP layer costs its MACs in FLOPs; a
quantized layer costs ``MACs x w_bits x a_bits`` BOPs, and ``OPs = FP FLOPs + BOPs / 64`` (the
Bi-Real / ReActNet normalization: 64 binary operations per FLOP). The speedup is the FP model's
OPs over the quantized model's. Under this convention a W4A4 layer costs 16/64 = 1/4 of its FP
self, so no model quantized at 4 bits can exceed 4x; the paper's 6.6x must normalize differently,
and is printed beside ours for reference, not reproduced.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from qdetr.api import quantize
from qdetr.config import QDetrConfig
from slimkit.opcount import count_ops

__all__ = ["PAPER_SPEEDUP", "detr_ops"]

#: Q-DETR's abstract: 4-bit DETR-R50, "theoretically" 6.6x faster.
PAPER_SPEEDUP = 6.6


def detr_ops(model: nn.Module, config: QDetrConfig, height: int, width: int) -> dict[str, Any]:
    """FP vs quantized cost of ``model`` (unchanged: a copy is quantized) on one ``height x width`` image."""
    x = torch.zeros(1, 3, height, width)
    was = model.training
    try:
        fp = count_ops(model.eval(), pixel_values=x)
    finally:
        model.train(was)
    student = quantize(copy.deepcopy(model), config).eval()
    q = count_ops(student, pixel_values=x)
    by_bits: dict[str, int] = {}
    for row in q.rows:
        if not row.is_fp:
            key = f"W{row.w_bits}A{row.a_bits}"
            by_bits[key] = by_bits.get(key, 0) + row.macs
    return {
        "input": [height, width],
        "config": {"w_bits": config.w_bits, "a_bits": config.a_bits, "attn_bits": config.attn_bits},
        "fp": {"macs": fp.macs, "ops": fp.ops},
        "quantized": {"fp_flops": q.fp_flops, "bops": q.bops, "ops": q.ops, "quantized_macs_by_bits": by_bits},
        "speedup": fp.ops / q.ops if q.ops else float("inf"),
        "paper_speedup": PAPER_SPEEDUP,
        "convention": "OPs = FP FLOPs + BOPs / 64; BOPs = MACs x w_bits x a_bits; speedup = FP OPs / quantized OPs",
    }
