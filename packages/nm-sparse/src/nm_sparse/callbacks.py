"""Training-loop hook: refresh SpRe spatial masks and Bi-Mask permutations once per step.

Plug an :class:`NMSparseCallback` into ``slimkit.train.train(..., callbacks=[...])``; in a
hand-written loop call :func:`nm_sparse.step` after ``optimizer.step()`` instead. Both
official codes refresh before each training iteration; the mask of the first iteration is
computed when :func:`nm_sparse.sparsify` wraps the layer, so refreshing after each step is the
same schedule.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nm_sparse.sparsify import nm_layers


class NMSparseCallback:
    """slimkit.train callback; ``model`` defaults to ``ctx.model`` (the unwrapped model)."""

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self.steps = 0

    def _target(self, ctx: Any) -> nn.Module:
        model = self.model if self.model is not None else getattr(ctx, "model", None)
        if model is None:
            raise ValueError("NMSparseCallback needs a model (argument or ctx.model)")
        return model

    def on_train_start(self, ctx: Any) -> None:
        """Weights may have been loaded (resume) since sparsify: recompute SpRe's spatial masks."""
        for _, layer in nm_layers(self._target(ctx)):
            layer.refresh()

    def on_step_end(self, ctx: Any) -> None:
        for _, layer in nm_layers(self._target(ctx)):
            layer.on_step()
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
