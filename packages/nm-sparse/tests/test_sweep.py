"""nm_sparse.sweep: SpRe deploy and Bi-Mask backward-mask diagnostics of the accuracy table."""

from __future__ import annotations

from typing import Any

import torch

from nm_sparse import NMConfig, sparsify
from nm_sparse.models import (
    SmallResNet,
)
from nm_sparse.sweep import bimask_backward_stats, spre_deploy_stats


def test_spre_deploy_and_bimask_stats(random_bn: Any) -> None:
    spre = SmallResNet()
    sparsify(spre, NMConfig(method="spre", pattern="2:4"))
    random_bn(spre)
    stats = spre_deploy_stats(spre, torch.randn(8, 1, 8, 8))
    assert stats["all_valid"] and stats["max_nonzeros_per_group"] <= 2
    assert stats["max_abs_diff"] < 1e-4 * max(1.0, stats["output_max_abs"])

    bim = SmallResNet()
    sparsify(bim, NMConfig(method="bimask", pattern="2:4"))
    b = bimask_backward_stats(bim, candidates=8)
    assert b["layers"] == 5 and b["backward_mask_valid"]
    for key in ("share_identity", "share_layer", "share_search"):
        assert 0.5 <= b[key] <= 1.0  # at least n/m of each column block survives, never more than all
