"""Backbone pretraining on object crops: the stand-in, for data generated offline, of DETR's ImageNet backbone.

Why: DETR (and Q-DETR, whose student backbone is ImageNet-pretrained) never trains its backbone
from scratch; a tiny DETR whose ResNet starts random learns boxes on the shapes but not their
classes within CPU minutes. Classifying the training set's own object crops for a few hundred
steps gives the backbone the features ImageNet pretraining would, without any download.

:func:`object_crops` cuts every ground-truth box out of a :class:`~qdetr.data.CocoDetectionSet`
(resized to a square); :func:`pretrain_backbone` trains the DETR's backbone with a linear head on
them through :func:`slimkit.train.train` and returns the held-out crop accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from qdetr.boxes import cxcywh_to_xyxy
from qdetr.data import CocoDetectionSet
from slimkit.errors import BadInputError
from slimkit.train import TrainConfig, train

__all__ = ["BackboneClassifier", "object_crops", "pretrain_backbone"]


def object_crops(dataset: CocoDetectionSet, size: int = 32, max_images: int | None = None) -> TensorDataset:
    """``(crops [N, 3, size, size], labels [N])``: every object of ``dataset`` (unflipped), resized."""
    crops, labels = [], []
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in range(n):
        pixels, target = dataset[i]
        h, w = pixels.shape[-2:]
        boxes = cxcywh_to_xyxy(target["boxes"]) * torch.tensor([w, h, w, h])
        for box, label in zip(boxes.round().long().tolist(), target["class_labels"].tolist(), strict=True):
            x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            crop = pixels[:, y0:y1, x0:x1][None]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0])
            labels.append(label)
    if not crops:
        raise BadInputError("no object large enough to crop: cannot pretrain the backbone")
    return TensorDataset(torch.stack(crops), torch.tensor(labels, dtype=torch.long))


class BackboneClassifier(nn.Module):
    """The DETR's backbone (shared, trained in place) + global average pooling + a linear head."""

    def __init__(self, detr: nn.Module, num_labels: int) -> None:
        super().__init__()
        encoder: Any = detr.get_submodule("model.backbone")
        self.backbone = encoder.model
        self.head = nn.Linear(int(encoder.intermediate_channel_sizes[-1]), num_labels)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x).feature_maps[-1]
        out: Tensor = self.head(features.mean(dim=(-2, -1)))
        return out


def pretrain_backbone(
    detr: nn.Module, dataset: CocoDetectionSet, output_dir: str | Path, steps: int, batch_size: int = 64,
    lr: float = 1e-3, seed: int = 0, progress: bool = False, held_out: CocoDetectionSet | None = None,
) -> dict[str, float]:
    """Train ``detr``'s backbone in place to classify ``dataset``'s object crops; returns the crop accuracies."""
    crops = object_crops(dataset)
    classifier = BackboneClassifier(detr, dataset.num_labels)
    config = TrainConfig(output_dir=str(output_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                         weight_decay=1e-4, seed=seed, cpu=True, progress=progress, log_every=max(1, steps // 10))  # fmt: skip
    train(classifier, crops, config)
    result = {"train_crop_acc": _accuracy(classifier, crops), "crops": float(len(crops))}
    if held_out is not None:
        result["val_crop_acc"] = _accuracy(classifier, object_crops(held_out))
    return result


@torch.no_grad()
def _accuracy(classifier: nn.Module, crops: TensorDataset) -> float:
    was = classifier.training
    classifier.eval()
    x, y = crops.tensors
    correct = sum(int((classifier(xb).argmax(-1) == yb).sum()) for xb, yb in zip(x.split(256), y.split(256), strict=True))
    classifier.train(was)
    return correct / len(y)
