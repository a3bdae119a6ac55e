"""Shared fixtures: a tiny random DETR and a batch for it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qdetr.models import tiny_detr


def _make_batch(seed: int = 0, batch: int = 2, size: int = 64) -> dict[str, Any]:
    """Random 64 x 64 images (a 2 x 2 feature map: cross-attention needs more than one key to depend on its
    queries) and one or two boxes per image in HF DETR's label format (normalized cxcywh)."""
    g = torch.Generator().manual_seed(seed)
    labels = []
    for i in range(batch):
        n = 1 + i % 2
        centre = 0.3 + 0.4 * torch.rand(n, 2, generator=g)
        wh = 0.1 + 0.2 * torch.rand(n, 2, generator=g)
        labels.append({"class_labels": torch.randint(0, 3, (n,), generator=g), "boxes": torch.cat([centre, wh], 1)})
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=g),
        "pixel_mask": torch.ones(batch, size, size, dtype=torch.long),
        "labels": labels,
    }


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """Tiny tensors: intra-op threads only cost time (seconds per forward on a busy machine). Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


@pytest.fixture
def detr() -> Any:
    torch.manual_seed(0)
    return tiny_detr(num_labels=3)


@pytest.fixture
def batch() -> dict[str, Any]:
    return _make_batch()
