"""Pure-PyTorch reference implementations of slimkit's kernels (the kernel-file rule, layer 1).

Why a file of its own: the reference is the definition of what a kernel computes. It runs on
every device, under autograd and ``torch.compile``, and the Triton kernels are tested against
it. It imports nothing from slimkit except (at most) :mod:`slimkit.errors`, so every other
layer may import it without creating a cycle.
"""

from __future__ import annotations

import torch

__all__ = ["l2_normalize_rows_reference"]


def l2_normalize_rows_reference(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along the last dim, accumulated in fp32, returned in ``x.dtype``."""
    x32 = x.float()
    norm = x32.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (x32 / norm).to(x.dtype)
