"""slimkit's own demo: the shared loop trains a tiny CNN on the bundled digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.data import digits
from slimkit.evaluate import top1
from slimkit.io import save_model
from slimkit.train import TrainConfig, clear_run, train


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


def run(output_dir: Path, steps: int = 120, seed: int = 0) -> dict[str, Any]:
    """Train for ``steps`` steps, evaluate on the held-out split, save the model."""
    torch.manual_seed(seed)
    model = tiny_cnn()
    config = TrainConfig(output_dir=str(output_dir / "run"), max_steps=steps, batch_size=64, lr=1e-2, seed=seed)
    clear_run(config.output_dir)  # the demo owns its run folder: each call starts over
    result = train(model, digits("train", seed=seed), config)
    val = digits("val", seed=seed)
    acc = top1(model, (val.tensors[0], val.tensors[1]))
    saved = save_model(output_dir / "model", model, config, {"val_top1": acc})
    return {
        "what": f"tiny CNN trained {result.steps} steps on digits (slimkit.train)",
        "figure": f"val top-1 {acc:.3f}",
        "files": [str(saved / "model.safetensors"), str(Path(result.output_dir) / "metrics.jsonl")],
        "val_top1": acc,
        "final_loss": result.final_loss,
    }
