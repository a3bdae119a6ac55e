"""nm_sparse.fitting: top-1 evaluation (slimkit.evaluate.top1) and fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nm_sparse.config import SRSTEConfig
from nm_sparse.fitting import evaluate, fit
from nm_sparse.sparsify import nm_layers
from slimkit.train import TrainConfig


def test_evaluate_counts_correct_predictions() -> None:
    linear = nn.Linear(4, 2, bias=False)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0]]).reshape(3, 1, 2, 2)
    labels = torch.tensor([0, 1, 1])
    dataset = torch.utils.data.TensorDataset(images, labels)
    assert evaluate(model, dataset, batch_size=2) == pytest.approx(2 / 3)


def test_fit_sparsifies_then_trains(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 4, 4), torch.randint(0, 2, (32,)))
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=8, progress=False, cpu=True)
    result, report = fit(model, data, config, SRSTEConfig())
    assert result.steps == 2 and report["method"] == "srste"
    assert [name for name, _ in nm_layers(model)] == report_names(report) == ["1"]


def report_names(report: dict[str, object]) -> list[str]:
    layers = report["layers"]
    assert isinstance(layers, list)
    return [layer["name"] for layer in layers]
