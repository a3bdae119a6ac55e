"""slimkit's own demo: the shared loop trains a tiny CNN on the bundled digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def tiny_cnn(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """A few-thousand-parameter CNN for 8x8 digits (demo and test fixture)."""
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))


def run(output_dir: Path, steps: int = 120, seed: int = 0) -> dict[str, Any]:
    """Train for ``steps`` steps, evaluate on the held-out split, save the model."""
    from slimkit.data import digits
    from slimkit.io import save_model
    from slimkit.train import TrainConfig, train

    torch.manual_seed(seed)
    model = tiny_cnn()
    config = TrainConfig(output_dir=str(output_dir / "run"), max_steps=steps, batch_size=64, lr=1e-2, seed=seed)
    result = train(model, digits("train", seed=seed), config)
    val = digits("val", seed=seed)
    acc = accuracy(model, val.tensors[0], val.tensors[1])
    saved = save_model(output_dir / "model", model, config, {"val_top1": acc})
    return {
        "what": f"tiny CNN trained {result.steps} steps on digits (slimkit.train)",
        "figure": f"val top-1 {acc:.3f}",
        "files": [str(saved / "model.safetensors"), str(Path(result.output_dir) / "metrics.jsonl")],
        "val_top1": acc,
        "final_loss": result.final_loss,
    }
