"""Models for the CLI and the demos, one import away (0.1's ``nm_sparse.models``).

The code lives in three files, one job each: :mod:`nm_sparse.zoo` (``SmallResNet`` and
models by name), :mod:`nm_sparse.checkpoints` (save / resolve / rebuild) and
:mod:`nm_sparse.fitting` (sparsify + train, top-1). This module re-exports them.
"""

from __future__ import annotations

from nm_sparse.checkpoints import (
    RUN_FILE,
    STAGE_DEPLOYED,
    STAGE_TRAINED,
    ModelSpec,
    build_sparse,
    load_sparse_model,
    read_config,
    resolve_checkpoint,
    save_sparse_model,
)
from nm_sparse.fitting import evaluate, fit
from nm_sparse.zoo import BUILTIN_MODELS, BasicBlock, SmallResNet, load_model

__all__ = [
    "BUILTIN_MODELS",
    "RUN_FILE",
    "STAGE_DEPLOYED",
    "STAGE_TRAINED",
    "BasicBlock",
    "ModelSpec",
    "SmallResNet",
    "build_sparse",
    "evaluate",
    "fit",
    "load_model",
    "load_sparse_model",
    "read_config",
    "resolve_checkpoint",
    "save_sparse_model",
]
