"""The Differentiable Discrete Proxy (DDP): how a gradient reaches an integer kept-token count.

Each compressible block owns two :class:`DiffRate` modules (prune and merge). Each holds logits
over a frozen candidate set of kept *patch*-token counts ``{N, N-g, ..., }`` (granularity g = 4 by
default). With ``p = softmax(logits)``:

* kept count ``k = ceil(sum_i p_i c_i) + prefix`` with a straight-through ceil (as the official code;
  ``prefix`` is 1 for a class token);
* the keep-probability of the token at rank j is ``P_j = sum_{i: c_i + prefix > j} p_i``;
* the token mask is ``hard - P.detach() + P``: its value is the hard 0/1 mask (1 below rank k, 0 from
  k up to the active count) and its gradient is that of ``P``.

Block 0 gets a single candidate (no compression; its logits get no gradient, as in the official
code); so does the last block for global-average-pool models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DiffRate", "DiffRateDDP", "ste_ceil"]


def ste_ceil(x: Tensor) -> Tensor:
    """``ceil`` forward, identity backward."""
    return x + (torch.ceil(x) - x).detach()


class DiffRate(nn.Module):
    """Learnable distribution over kept-token counts for one block and one operation."""

    candidates: Tensor

    def __init__(self, num_patches: int, num_prefix_tokens: int = 1, granularity: int = 4,
                 fixed: bool = False) -> None:
        super().__init__()
        if granularity < 1:
            raise ValueError(f"granularity must be >= 1, got {granularity}")
        self.num_patches = int(num_patches)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.fixed = bool(fixed)
        step = num_patches + 1 if fixed else granularity
        cand = torch.arange(num_patches, 0, -step, dtype=torch.float32)
        self.register_buffer("candidates", cand)
        self.logits = nn.Parameter(torch.zeros(len(cand)))

    def probabilities(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=0)

    def expected_patches(self) -> Tensor:
        return (self.probabilities() * self.candidates).sum()

    def kept(self) -> Tensor:
        """Kept token count (prefix included) as a float tensor carrying the straight-through gradient."""
        return ste_ceil(self.expected_patches()) + self.num_prefix_tokens

    def kept_int(self) -> int:
        with torch.no_grad():
            return round(float(self.kept()))

    def keep_probability(self, n: int) -> Tensor:
        """``P_j`` for ranks ``j = 0..n-1``: probability that rank j lies inside the kept prefix."""
        ranks = torch.arange(n, device=self.logits.device, dtype=torch.float32)
        inside = (self.candidates[None, :] + self.num_prefix_tokens) > ranks[:, None]
        return (self.probabilities()[None, :] * inside).sum(dim=1)

    def token_mask(self, n: int, k: int, active: int) -> Tensor:
        """Rank mask of length n: value ``1[j < k or j >= active]``, gradient of ``P_j``."""
        hard = torch.ones(n, device=self.logits.device, dtype=torch.float32)
        hard[k:active] = 0.0
        p = self.keep_probability(n)
        return hard - p.detach() + p

    def set_kept(self, kept: int, sharpness: float = 3.0) -> None:
        """Initialise the logits to peak at the candidate closest to ``kept`` (a warm start).

        Logits fall by ``sharpness`` per candidate step, so the expected count lands within about one
        step of ``kept`` while the softmax stays soft enough for the search to move it.
        """
        with torch.no_grad():
            target = kept - self.num_prefix_tokens
            step = float(self.candidates[0] - self.candidates[1]) if len(self.candidates) > 1 else 1.0
            dist = (self.candidates - target).abs() / step
            self.logits.copy_(-sharpness * dist)

    def extra_repr(self) -> str:
        return f"candidates={len(self.candidates)}, prefix={self.num_prefix_tokens}, fixed={self.fixed}"


class DiffRateDDP(nn.Module):
    """All prune/merge proxies of a model; attached as ``model.token_rate_ddp`` in search mode."""

    def __init__(self, depth: int, num_patches: int, num_prefix_tokens: int = 1, granularity: int = 4,
                 fixed_blocks: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        fixed = {b % depth for b in fixed_blocks}
        self.prune = nn.ModuleList(
            DiffRate(num_patches, num_prefix_tokens, granularity, fixed=i in fixed) for i in range(depth))
        self.merge = nn.ModuleList(
            DiffRate(num_patches, num_prefix_tokens, granularity, fixed=i in fixed) for i in range(depth))
        self.fixed_blocks = tuple(sorted(fixed))

    def kept_tensors(self) -> tuple[list[Tensor], list[Tensor]]:
        return [m.kept() for m in self.prune], [m.kept() for m in self.merge]  # type: ignore[operator]

    def kept_ints(self) -> tuple[list[int], list[int]]:
        return [m.kept_int() for m in self.prune], [m.kept_int() for m in self.merge]  # type: ignore[operator]
