"""Top-1 accuracy of a classifier: the one evaluation loop every package and demo shares.

Why here: the packages each had a copy (a dataset loop, a tensor-slice loop) that differed in
small ways (device, restoring train mode, Hugging Face ``.logits`` outputs). One function keeps
every reported number computed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimkit.errors import BadInputError

__all__ = ["top1"]


def _batches(data: Any, batch_size: int) -> Iterable[Any]:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if len(images) != len(labels):
            raise BadInputError(f"{len(images)} images but {len(labels)} labels")
        return ((images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size))
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise BadInputError(
        f"cannot evaluate on {type(data).__name__}: pass a Dataset of (image, label), a DataLoader "
        "or a tuple (images, labels) of tensors"
    )


@torch.no_grad()
def top1(model: nn.Module, data: Any, batch_size: int = 256, device: torch.device | str | None = None) -> float:
    """Fraction of samples whose argmax logit is the label, in eval mode and without gradients.

    ``data`` is a Dataset yielding ``(x, y)``, a DataLoader of such batches, or a tuple
    ``(images, labels)`` of tensors. ``device`` defaults to the model's (its first parameter's)
    device. A model output with a ``.logits`` attribute (Hugging Face) is unwrapped. The model's
    train/eval mode is restored afterwards. Empty data is a :class:`BadInputError`.
    """
    if batch_size < 1:
        raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in _batches(data, batch_size):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise BadInputError("evaluation needs labelled data (image, label)")
            images, labels = batch[0].to(dev), batch[1].to(dev)
            out = model(images)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            correct += int((logits.argmax(-1) == labels).sum())
            total += int(labels.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise BadInputError("the evaluation dataset is empty")
    return correct / total
