"""TokenRateContext's fixed-schedule step (sort, prune, merge) on hand-made tokens."""

from __future__ import annotations

import math

import pytest
import torch

from token_rate import DiffRateConfig, Schedule
from token_rate.context import ModelInfo, TokenRateContext
from token_rate.flops import ViTDims


@pytest.mark.parametrize("training", [True, False])
def test_slice_step_by_hand(training):
    """Class token + 4 patches; block 0 keeps all 5 tokens, block 1 prunes to 4 and merges to 3
    (official mode: unweighted mean, similarity-scaled source sizes, clamped to >= 1 in training)."""
    info = ModelInfo("timm", ViTDims(depth=2, embed_dim=2, num_tokens=5), 1, True, "token")
    cfg = DiffRateConfig(schedule=Schedule([5, 4], [5, 3]), mode="official")
    ctx = TokenRateContext("diffrate", cfg, info, prune=[5, 4], merge_counts=[5, 3])
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [5.0, 5.0]]])
    ctx.reset(x, training)
    reversed_order = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ranked = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    with torch.device("meta"):  # the index rows the step builds follow the tokens' device
        out0 = ctx.compress(x, 0, reversed_order, None, training)
        out1 = ctx.compress(out0, 1, ranked, None, training)
    assert out0 is x  # a block that compresses nothing does not even sort
    # patch 4 ([5, 5]) is pruned; patch 3 ([2, 1]) is closest to patch 1 ([1, 0]) and folds into it
    assert out1.tolist() == [[[9.0, 9.0], [1.5, 0.5], [0.0, 1.0]]]
    carried = 1.0 if training else 2 / math.sqrt(5)  # cosine([2, 1], [1, 0])
    assert ctx.state.size[0, :, 0].tolist() == pytest.approx([1.0, 1.0 + carried, 1.0])
    assert ctx.state.counts == [5, 3] and ctx.state.active == 3
