"""Backbone pretraining on object crops: the crops are the ground-truth boxes, the DETR's own backbone trains."""

from __future__ import annotations

from pathlib import Path

import torch

from qdetr.data import CocoDetectionSet, make_shapes
from qdetr.models import tiny_detr
from qdetr.pretrain import BackboneClassifier, object_crops, pretrain_backbone


def test_crops_are_the_ground_truth_objects_with_their_labels(tmp_path: Path) -> None:
    make_shapes(tmp_path / "d", 4, seed=0)
    data = CocoDetectionSet(tmp_path / "d")
    crops = object_crops(data, size=16)
    x, y = crops.tensors
    expected = torch.cat([data.targets(i)[0] for i in range(len(data))])
    assert x.shape == (len(expected), 3, 16, 16) and torch.equal(y, expected)
    pixels, target = data[0]  # the first crop is the first object's box, resized
    h, w = pixels.shape[-2:]
    cx, cy, bw, bh = target["boxes"][0].tolist()
    x0, y0 = round((cx - bw / 2) * w), round((cy - bh / 2) * h)
    x1, y1 = round((cx + bw / 2) * w), round((cy + bh / 2) * h)
    ref = torch.nn.functional.interpolate(pixels[None, :, y0:y1, x0:x1], size=(16, 16), mode="bilinear",
                                          align_corners=False)[0]  # fmt: skip
    torch.testing.assert_close(x[0], ref)


def test_pretraining_trains_the_detrs_own_backbone(tmp_path: Path) -> None:
    make_shapes(tmp_path / "d", 6, seed=1)
    data = CocoDetectionSet(tmp_path / "d")
    torch.manual_seed(0)
    detr = tiny_detr(data.num_labels)
    classifier = BackboneClassifier(detr, data.num_labels)
    assert classifier.backbone is detr.model.backbone.model  # shared, not copied
    before = detr.model.backbone.model.embedder.embedder.convolution.weight.detach().clone()
    result = pretrain_backbone(detr, data, tmp_path / "pre", steps=3, batch_size=8, held_out=data)
    after = detr.model.backbone.model.embedder.embedder.convolution.weight
    assert not torch.equal(before, after)
    assert 0.0 <= result["train_crop_acc"] <= 1.0 and result["val_crop_acc"] == result["train_crop_acc"]
    assert result["crops"] == sum(len(data.targets(i)[0]) for i in range(len(data)))
