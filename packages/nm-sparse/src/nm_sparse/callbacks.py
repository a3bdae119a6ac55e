"""Training-loop hook: refresh SpRe spatial masks and Bi-Mask permutations once per step, and add the
SR-STE decay once per optimizer step.

Plug an :class:`NMSparseCallback` into ``slimkit.train.train(..., callbacks=[...])``; in a
hand-written loop call :func:`nm_sparse.step` after ``optimizer.step()`` instead. Both
official codes refresh before each training iteration; the mask of the first iteration is
computed when :func:`nm_sparse.sparsify` wraps the layer, so refreshing after each step is the
same schedule.

The decay ``lambda (1 - mask) W`` (SR-STE, SpRe, Bi-Mask) enters the official codes' backward pass.
That is right for an fp32 loop without accumulation and wrong otherwise: fp16 loss scaling divides
the unscaled term by the scale, and ``k`` accumulated micro-batches add it ``k`` times. During a
``slimkit.train`` run the callback takes it out of the backward and adds it in ``after_backward``,
which runs once per optimizer step on unscaled, all-reduced gradients (same result in fp32 without
accumulation). A hand-written loop with loss scaling or accumulation can do the same: set each
layer's ``decay_in_backward = False`` and call :func:`add_decay_grads` after unscaling.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nm_sparse.sparsify import nm_layers


def add_decay_grads(model: nn.Module) -> None:
    """Add every N:M layer's decay term to its dense weight's gradient (see the module docstring)."""
    for _, layer in nm_layers(model):
        layer.add_decay_grad()


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
            layer.decay_in_backward = False  # added once per step by after_backward instead

    def after_backward(self, ctx: Any) -> None:
        add_decay_grads(self._target(ctx))

    def on_train_end(self, ctx: Any) -> None:
        for _, layer in nm_layers(self._target(ctx)):
            layer.decay_in_backward = True

    def on_step_end(self, ctx: Any) -> None:
        for _, layer in nm_layers(self._target(ctx)):
            layer.on_step()
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
