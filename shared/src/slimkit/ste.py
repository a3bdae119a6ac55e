"""Straight-through estimators: a non-differentiable forward, an identity backward.

Why: quantizers, binarizers and hard masks have zero (or no) gradient almost everywhere;
training them uses the straight-through estimator (Bengio et al., 2013): the forward applies
the hard function, the backward passes the incoming gradient through unchanged. Each function
here is an ``autograd.Function`` so the rule is explicit and the same in every package.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ceil_ste", "clamp_ste", "floor_ste", "round_ste", "sign_ste"]


class _STE(torch.autograd.Function):
    """Base: subclasses define ``fn``; backward returns the gradient unchanged."""

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        return (grads[0], *([None] * ctx.n_extra))


class _Round(_STE):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.n_extra = 0
        return torch.round(x)


class _Ceil(_STE):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.n_extra = 0
        return torch.ceil(x)


class _Floor(_STE):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.n_extra = 0
        return torch.floor(x)


class _Sign(_STE):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.n_extra = 0
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _Clamp(_STE):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.n_extra = 2
        return torch.clamp(x, lo, hi)


def _apply(fn: Any, *args: Any) -> Tensor:
    out = fn.apply(*args)
    assert isinstance(out, Tensor)
    return out


def round_ste(x: Tensor) -> Tensor:
    """``torch.round`` forward (half to even), identity gradient."""
    return _apply(_Round, x)


def ceil_ste(x: Tensor) -> Tensor:
    """``torch.ceil`` forward, identity gradient."""
    return _apply(_Ceil, x)


def floor_ste(x: Tensor) -> Tensor:
    """``torch.floor`` forward, identity gradient."""
    return _apply(_Floor, x)


def sign_ste(x: Tensor) -> Tensor:
    """``+1`` where ``x >= 0`` (so ``sign(0) = +1``, unlike ``torch.sign``), ``-1`` elsewhere; identity gradient."""
    return _apply(_Sign, x)


def clamp_ste(x: Tensor, lo: float, hi: float) -> Tensor:
    """Clamp to ``[lo, hi]`` forward; the gradient passes unchanged, also where ``x`` was clipped.

    ``torch.clamp`` zeroes the gradient outside ``[lo, hi]``; use it when clipped values
    should stop learning, and this one when they should keep receiving the gradient.
    """
    return _apply(_Clamp, x, lo, hi)
