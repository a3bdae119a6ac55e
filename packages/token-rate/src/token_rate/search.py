"""The DiffRate search: learn per-block prune/merge kept counts for a GMACs target.

Only the DDP logits train (AdamW, lr 0.01 with cosine decay to 0.001, no weight decay; the
backbone is frozen), on ``task loss + lambda * (GMACs - target)^2`` with lambda = 5, as in the
official ``main.py``/``engine.py``. The loop is :func:`slimkit.train.train`, so checkpoints,
``resume_from="latest"``, gradient accumulation, mixed precision and ``accelerate launch`` all work.

Differences from the official search, each an option:

* ``penalty``: the official penalty is in absolute GMACs, tuned for ImageNet-sized ViTs (4.6 GMACs
  for DeiT-S). On a model of a few MMACs the same penalty is ~0 and the search never reaches the
  target, so ``"auto"`` (default) keeps the official absolute penalty for models of >= 1 GMAC and
  uses the scale-free ``lambda * ((GMACs - target) / target)^2`` below that.
* ``label_free``: the task loss is a distillation loss against the *uncompressed* model's outputs
  (KL at temperature T, or MSE for feature outputs), so a search needs no labels.
* The cosine schedule is stepped per optimizer step, not once per epoch.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from slimkit.data import IMAGE_SUFFIXES, image_to_tensor, read_image
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict
from slimkit.train import TrainConfig, process_state, train
from token_rate.config import SearchConfig
from token_rate.flops import analytic_macs
from token_rate.patch import (
    arch_parameters,
    export_schedule,
    get_context,
    is_patched,
    model_dims,
    patch,
    search_gmacs,
    unpatch,
)
from token_rate.schedule import Schedule

__all__ = ["SearchSettings", "search", "search_train_config", "UnlabelledImages"]

_PENALTIES = ("auto", "absolute", "relative")
_DISTILL = ("kl", "mse")


@dataclass
class SearchSettings:
    """What to search for; the training loop itself is a :class:`slimkit.train.TrainConfig`.

    Args:
        target_gmacs: GMACs target (the DeiT convention: multiply-accumulates, 1e9).
        target_ratio: alternatively, the target as a fraction of the uncompressed model's GMACs.
        flops_weight: lambda of the FLOPs penalty (official: 5). Raise it if the searched GMACs
            stay above the target (maintainers' advice, OpenGVLab/DiffRate#6).
        penalty: ``"absolute"`` (official, GMACs^2), ``"relative"`` (fraction of the target, squared)
            or ``"auto"`` (absolute for models of >= 1 GMAC, relative below).
        flops_warmup_steps: steps with lambda = 0 first (official ``--warmup_compression_rate``
            does this for one epoch; off by default).
        label_free: distil from the uncompressed model instead of using labels.
        distill: ``"kl"`` on logits (temperature ``temperature``) or ``"mse"`` for feature outputs.
        temperature: distillation temperature.
        output: write the searched schedule JSON here (atomically, main process only).
        name: name stored in the schedule.
    """

    target_gmacs: float | None = None
    target_ratio: float | None = None
    flops_weight: float = 5.0
    penalty: str = "auto"
    flops_warmup_steps: int = 0
    label_free: bool = False
    distill: str = "kl"
    temperature: float = 1.0
    output: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.target_gmacs is None) == (self.target_ratio is None):
            raise BadInputError("give exactly one of target_gmacs and target_ratio")
        if self.target_gmacs is not None and not self.target_gmacs > 0:
            raise BadInputError(f"target_gmacs must be > 0, got {self.target_gmacs}")
        if self.target_ratio is not None and not 0 < self.target_ratio < 1:
            raise BadInputError(f"target_ratio must be in (0, 1), got {self.target_ratio}")
        if self.flops_weight < 0:
            raise BadInputError(f"flops_weight must be >= 0, got {self.flops_weight}")
        if self.penalty not in _PENALTIES:
            raise BadInputError(f"penalty must be one of {_PENALTIES}, got {self.penalty!r}")
        if self.distill not in _DISTILL:
            raise BadInputError(f"distill must be one of {_DISTILL}, got {self.distill!r}")
        if not self.temperature > 0:
            raise BadInputError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def search_train_config(output_dir: str, max_steps: int, **overrides: Any) -> TrainConfig:
    """A TrainConfig with the official search optimiser: AdamW lr 0.01 -> 0.001 cosine, wd 0."""
    defaults: dict[str, Any] = {"lr": 0.01, "min_lr": 0.001, "weight_decay": 0.0, "scheduler": "cosine"}
    return TrainConfig(output_dir=output_dir, max_steps=max_steps, **{**defaults, **overrides})


class UnlabelledImages(Dataset[Tensor]):
    """Every image file under a folder (recursively), for label-free searches."""

    def __init__(self, root: str | os.PathLike[str], image_size: int, channels: int = 3) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadInputError(f"image folder not found: {self.root}")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise BadInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return image_to_tensor(read_image(self.paths[index]), self.image_size, self.channels)


def _as_dataset(data: Any) -> Dataset[Any]:
    if isinstance(data, Tensor):
        return TensorDataset(data)
    if isinstance(data, Sequence) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return TensorDataset(data[0], data[1])
    if isinstance(data, Dataset):
        return data
    raise BadInputError(
        f"search data must be a Dataset, an image tensor or (images, labels), got {type(data).__name__}"
    )


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)):
        inputs = batch[0]
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return inputs, labels
    raise BadInputError(f"cannot read a batch of type {type(batch).__name__}")


def _logits(out: Any) -> Tensor:
    """timm returns a tensor; transformers returns an output object."""
    if isinstance(out, Tensor):
        return out
    for attr in ("logits", "last_hidden_state"):
        value = getattr(out, attr, None)
        if isinstance(value, Tensor):
            return value
    raise BadInputError(f"cannot read model output of type {type(out).__name__}")


class _SearchLoss:
    """task/distillation loss + lambda * FLOPs penalty; returns the pieces as metrics."""

    def __init__(self, model: nn.Module, settings: SearchSettings, target: float, relative: bool,
                 teacher: nn.Module | None) -> None:  # fmt: skip
        self.model = model  # the unwrapped, patched model (its DDP logits give the GMACs)
        self.settings = settings
        self.target = target
        self.relative = relative
        self.teacher = teacher
        self.calls = 0
        self.steps_done = 0

    def task_loss(self, model: nn.Module, inputs: Tensor, labels: Tensor | None) -> Tensor:
        out = _logits(model(inputs))
        s = self.settings
        if self.teacher is None:
            if labels is None:
                raise BadInputError("the search data has no labels; use label_free=True (--label-free)")
            return F.cross_entropy(out.float(), labels)
        with torch.no_grad():
            self.teacher.to(inputs.device)
            ref = _logits(self.teacher(inputs)).float()
        if s.distill == "mse":
            return F.mse_loss(out.float(), ref)
        t = s.temperature
        return F.kl_div(F.log_softmax(out.float() / t, -1), F.log_softmax(ref / t, -1), log_target=True,
                        reduction="batchmean") * (t * t)  # fmt: skip

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        inputs, labels = _split_batch(batch)
        task = self.task_loss(model, inputs, labels)
        g = search_gmacs(self.model)
        gap = (g - self.target) / self.target if self.relative else g - self.target
        weight = self.settings.flops_weight if self.steps_done >= self.settings.flops_warmup_steps else 0.0
        loss = task + weight * gap.pow(2)
        return loss, {"task": float(task.detach()), "gmacs": float(g.detach())}


class _StepCounter:
    """Keeps the FLOPs warm-up in step with the optimizer (and checkpointed with the run)."""

    def __init__(self, loss: _SearchLoss) -> None:
        self.loss = loss

    def on_step_end(self, ctx: Any) -> None:
        self.loss.steps_done = ctx.step

    def on_train_start(self, ctx: Any) -> None:
        self.loss.steps_done = ctx.step

    def state_dict(self) -> dict[str, int]:
        return {"steps_done": self.loss.steps_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.loss.steps_done = int(state.get("steps_done", 0))


def search(
    model: nn.Module,
    data: Any,
    settings: SearchSettings | float,
    *,
    config: SearchConfig | None = None,
    train_config: TrainConfig | None = None,
    callbacks: Sequence[Any] = (),
) -> Schedule:
    """Run a DiffRate search on ``model`` and return the learned :class:`Schedule`.

    Args:
        model: a timm / transformers ViT (unpatched, or already patched with a ``SearchConfig``).
        data: a Dataset of ``(image, label)`` (or images only with ``label_free``), an image tensor,
            or an ``(images, labels)`` pair.
        settings: :class:`SearchSettings`, or just the GMACs target.
        config: patch settings for search mode (granularity, merge mode, ...); default ``SearchConfig()``.
        train_config: the training loop; default :func:`search_train_config` for 3 epochs at batch
            64 in a temporary folder.
        callbacks: extra slimkit.train callbacks.

    The model is left as it was found: a model this function patched is unpatched again, a
    search-patched model keeps its (now trained) logits. Apply the result with
    ``token_rate.patch(model, schedule)``.
    """
    if not isinstance(settings, SearchSettings):
        settings = SearchSettings(target_gmacs=float(settings))
    dataset = _as_dataset(data)
    if is_patched(model) and get_context(model).ddp is None:
        raise BadInputError("model is patched with a fixed schedule/ToMe; unpatch it or patch with a SearchConfig")
    dims = model_dims(model)
    baseline = analytic_macs(dims) / 1e9
    target = (
        settings.target_gmacs if settings.target_gmacs is not None else baseline * float(settings.target_ratio or 0)
    )
    if target >= baseline:
        raise BadInputError(f"target {target:.4g} GMACs is not below the uncompressed {baseline:.4g} GMACs")
    relative = settings.penalty == "relative" or (settings.penalty == "auto" and baseline < 1.0)

    we_patched = False
    teacher: nn.Module | None = None
    if is_patched(model):
        if settings.label_free:
            teacher = unpatch(copy.deepcopy(model)).eval()
    else:
        if settings.label_free:
            teacher = copy.deepcopy(model).eval()
        patch(model, config or SearchConfig())
        we_patched = True
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
    loss = _SearchLoss(model, settings, target, relative, teacher)

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if train_config is None:
        tmp = tempfile.TemporaryDirectory(prefix="token-rate-search-")
        steps = max(1, 3 * len(dataset) // 64)  # type: ignore[arg-type]
        train_config = search_train_config(tmp.name, steps, batch_size=64)
    try:
        was_training = model.training
        result = train(model, dataset, train_config, loss_fn=loss, params=arch_parameters(model),
                       callbacks=[_StepCounter(loss), *callbacks])  # fmt: skip
        model.train(was_training)
    except BaseException:
        if we_patched:
            unpatch(model)
        raise
    finally:
        if tmp is not None:
            tmp.cleanup()

    schedule = export_schedule(model, name=settings.name)
    schedule.target_gmacs = float(target)
    searched = analytic_macs(dims, schedule.effective(dims.num_tokens)) / 1e9
    schedule.meta.update(
        {
            "method": "diffrate-search",
            "searched_gmacs": searched,
            "baseline_gmacs": baseline,
            "target_gmacs": float(target),
            "relative_error": (searched - target) / target,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "settings": settings.to_dict(),
            "patch_config": get_context(model).config.to_dict(),
            "dims": dims.to_dict(),
        }
    )
    if we_patched:
        unpatch(model)
    if settings.output and process_state().is_main_process:
        schedule.save(settings.output)
    return schedule
