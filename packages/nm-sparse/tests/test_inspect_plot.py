"""nm_sparse.inspect_plot: per-kernel-position sparsity and the heatmap PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nm_sparse import NMConfig, sparsify
from nm_sparse.inspect_plot import kernel_position_sparsity, position_sparsity, save_heatmap
from nm_sparse.models import (
    SmallResNet,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_position_sparsity_nm_is_uniform_unstructured_matches_overall() -> None:
    model = SmallResNet()
    sparsify(model, NMConfig(method="srste", pattern="1:4"))
    rows = position_sparsity(model, 1, 4)
    assert [r["name"] for r in rows] == ["layers.0.conv1", "layers.0.conv2", "layers.1.conv1", "layers.1.conv2"]
    for row in rows:
        assert row["nm"] == [[0.75] * 3] * 3  # groups along C_in: exactly 1 of 4 at every position
        # unstructured pruning at the same overall sparsity: positions average to exactly 0.75
        assert torch.tensor(row["unstructured"]).mean().item() == pytest.approx(0.75, abs=1e-6)
        assert row["spatial_mask"] is None  # SR-STE has no S
    w = torch.zeros(2, 2, 3, 3)
    w[:, :, 1, 1] = 1.0
    expected = torch.ones(3, 3)
    expected[1, 1] = 0.0
    assert torch.equal(kernel_position_sparsity(w), expected)


def test_save_heatmap_writes_png(tmp_path: Path) -> None:
    model = SmallResNet()
    sparsify(model, NMConfig(method="spre", pattern="2:4"))
    rows = position_sparsity(model, 2, 4)
    assert len(rows) == 4
    for row in rows:  # SpRe's S as the layer holds it; the deployed kernel keeps exactly 2:4 everywhere
        assert row["spatial_mask"] == model.get_submodule(row["name"]).spatial_mask.tolist()
        assert row["nm"] == [[0.5] * 3] * 3
    path = save_heatmap(rows, tmp_path / "h.png", "test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert save_heatmap([], tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC
