"""nm_sparse.models: the 0.1 import path re-exports the zoo, checkpoint and fitting modules."""

from __future__ import annotations

from nm_sparse import checkpoints, fitting, models, zoo
from slimkit.evaluate import top1


def test_models_re_exports_the_split_modules() -> None:
    for name in models.__all__:
        obj = getattr(models, name)
        homes = [m for m in (zoo, checkpoints, fitting) if getattr(m, name, None) is obj]
        assert homes, name
    assert models.evaluate is top1
