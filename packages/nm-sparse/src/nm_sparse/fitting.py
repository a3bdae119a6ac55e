"""Training glue: sparsify a model and train it with slimkit.train and the nm-sparse callback.

Evaluation is :func:`slimkit.evaluate.top1` (re-exported here as ``evaluate``, its 0.1 name).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from nm_sparse.api import sparsify
from nm_sparse.callbacks import NMSparseCallback
from nm_sparse.checkpoints import AnyConfig
from slimkit.evaluate import top1 as evaluate
from slimkit.train import TrainConfig, TrainResult, train

__all__ = ["evaluate", "fit"]


def fit(
    model: nn.Module,
    dataset: Dataset[Any],
    train_config: TrainConfig,
    config: AnyConfig,
) -> tuple[TrainResult, dict[str, Any]]:
    """Sparsify ``model`` in place and train it with slimkit.train and the nm-sparse callback."""
    report = sparsify(model, config)
    result = train(model, dataset, train_config, callbacks=[NMSparseCallback()])
    return result, report.to_dict()
