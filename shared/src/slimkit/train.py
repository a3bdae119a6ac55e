"""One training loop on ``accelerate`` that every package configures instead of rewriting.

Packages plug in a loss, the parameters to train, optimizer/scheduler factories
and callbacks (mask refreshes, decays, logit clamps). The loop owns the rest:
gradient accumulation, mixed precision where the device has it, progress bar,
metrics JSONL, ``save_state`` checkpoints and exact resume. It runs unchanged
under ``accelerate launch --num_processes N``.

Resume is exact because the data order is a pure function of ``(seed, epoch)``
and accelerate's ``save_state`` restores model, optimizer, scheduler, callback
state and every RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from slimkit.errors import BadInputError

LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
_PRECISIONS = ("auto", "no", "fp16", "bf16")
_STATE_FILE = "trainer_state.json"


@dataclass
class TrainConfig:
    """Everything the loop needs; serializable with :func:`slimkit.io.config_to_dict`."""

    output_dir: str
    max_steps: int
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    min_lr: float = 0.0
    warmup_steps: int = 0
    mixed_precision: str = "auto"
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    resume_from: str | None = None
    num_workers: int = 0
    progress: bool = True
    cpu: bool = False
    max_grad_norm: float | None = None
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise BadInputError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1:
            raise BadInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grad_accum_steps < 1:
            raise BadInputError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.mixed_precision not in _PRECISIONS:
            raise BadInputError(f"mixed_precision must be one of {_PRECISIONS}, got {self.mixed_precision!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise BadInputError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "constant"):
            raise BadInputError(f"scheduler must be 'cosine' or 'constant', got {self.scheduler!r}")


@dataclass
class TrainContext:
    """What callbacks see. ``model`` is the unwrapped module (no DDP wrapper)."""

    model: nn.Module
    accelerator: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    config: TrainConfig
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Callback(Protocol):
    """Any subset of these hooks; ``state_dict``/``load_state_dict`` make it checkpointed."""

    def on_step_end(self, ctx: TrainContext) -> None: ...


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    metrics: list[dict[str, float]]
    checkpoint_dir: str
    output_dir: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class EpochSampler(Sampler[int]):
    """Shuffled order that depends only on ``(seed, epoch)``, so a resumed run sees the same batches."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def use_epoch(self, epoch: int) -> None:
        # Deliberately not ``set_epoch``: accelerate calls that with its own per-loader
        # counter, which restarts at 0 in a resumed run.
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


def resolve_mixed_precision(requested: str, cpu: bool = False) -> str:
    """``auto`` means bf16 on GPUs that have it, fp16 on older GPUs, full precision on CPU."""
    if requested != "auto":
        return requested
    if cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross entropy on ``(inputs, labels)`` batches."""
    inputs, labels = batch[0], batch[1]
    return F.cross_entropy(model(inputs), labels)


def default_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def default_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up, then cosine from ``lr`` to ``min_lr`` over the remaining steps (or constant)."""
    total, warm = config.max_steps, config.warmup_steps
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if config.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest ``checkpoints/step_<n>`` (or ``final``) that finished writing."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in root.iterdir():
        state = child / _STATE_FILE
        if not state.is_file():
            continue
        match = re.fullmatch(r"step_(\d+)", child.name)
        step = int(match.group(1)) if match else json.loads(state.read_text())["step"]
        if best is None or step > best[0]:
            best = (step, child)
    return best[1] if best else None


def _call(callbacks: Sequence[Any], hook: str, ctx: TrainContext) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(ctx)


def train(
    model: nn.Module,
    dataset: Dataset[Any],
    config: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    params: Iterable[nn.Parameter] | None = None,
    optimizer_fn: Callable[[Iterable[nn.Parameter], TrainConfig], torch.optim.Optimizer] | None = None,
    scheduler_fn: Callable[[torch.optim.Optimizer, TrainConfig], Any] | None = None,
    callbacks: Sequence[Any] = (),
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.max_steps`` optimizer steps and return a summary."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from slimkit.cli import progress

    out = Path(config.output_dir)
    # Without a GPU, run on CPU explicitly: accelerate then uses gloo across the processes
    # that `accelerate launch --multi_gpu --num_processes N` (torchrun) started.
    cpu = config.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision, cpu),
        cpu=cpu,
        project_dir=str(out),
    )
    set_seed(config.seed)
    loss_fn = loss_fn or default_loss
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise BadInputError("nothing to train: no parameter requires grad")
    optimizer = (optimizer_fn or default_optimizer)(trainable, config)
    scheduler = (scheduler_fn or default_scheduler)(optimizer, config)

    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise BadInputError("the training dataset is empty")
    sampler = EpochSampler(n, config.seed, config.shuffle)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate_fn,
        drop_last=n >= config.batch_size * accelerator.num_processes,
        # A private generator: creating a loader iterator draws a base seed, and drawing it
        # from the global RNG would shift dropout masks after a resume.
        generator=torch.Generator().manual_seed(config.seed),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # The scheduler is stepped by hand once per optimizer step (accelerate would step it
    # once per process), and checkpointed alongside the callbacks that carry state.
    accelerator.register_for_checkpointing(scheduler)
    for cb in callbacks:
        if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict"):
            accelerator.register_for_checkpointing(cb)

    step, micro = 0, 0
    resume = find_latest_checkpoint(out) if config.resume_from == "latest" else config.resume_from
    if resume:
        resume = Path(resume)
        if not (resume / _STATE_FILE).is_file():
            raise BadInputError(f"not a slimkit checkpoint (no {_STATE_FILE}): {resume}")
        accelerator.load_state(str(resume))
        state = json.loads((resume / _STATE_FILE).read_text())
        step, micro = int(state["step"]), int(state["micro"])

    ctx = TrainContext(accelerator.unwrap_model(model), accelerator, optimizer, scheduler, config, step)
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and metrics_path.exists():
            metrics_path.unlink()
    history: list[dict[str, float]] = []
    _call(callbacks, "on_train_start", ctx)
    bar = progress(
        total=config.max_steps,
        desc="train",
        disable=not (config.progress and accelerator.is_local_main_process) or None,
    )
    bar.update(step)
    model.train()
    window_loss, window_n = 0.0, 0
    extra_sum: dict[str, float] = {}
    accum = config.grad_accum_steps
    last_loss = float("nan")
    batches_per_epoch = len(loader)
    while step < config.max_steps:
        epoch, offset = divmod(micro, batches_per_epoch)
        sampler.use_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, offset) if offset else loader
        for batch in batches:
            sync = (micro + 1) % accum == 0
            context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with context:
                with accelerator.autocast():
                    result = loss_fn(model, batch)
                loss, extra = (result if isinstance(result, tuple) else (result, {}))
                accelerator.backward(loss / accum)
            window_loss += float(loss.detach())
            window_n += 1
            for key, value in extra.items():
                extra_sum[key] = extra_sum.get(key, 0.0) + float(value)
            micro += 1
            if not sync:
                continue
            if accelerator.mixed_precision == "fp16":
                accelerator.unscale_gradients()
            _call(callbacks, "after_backward", ctx)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ctx.step = step
            local = torch.tensor(window_loss / max(1, window_n), device=accelerator.device)
            last_loss = float(accelerator.reduce(local, reduction="mean"))
            ctx.metrics = {"step": step, "loss": last_loss, "lr": float(scheduler.get_last_lr()[0])}
            ctx.metrics.update({k: v / max(1, window_n) for k, v in extra_sum.items()})
            window_loss, window_n, extra_sum = 0.0, 0, {}
            _call(callbacks, "on_step_end", ctx)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if step % max(1, config.log_every) == 0 or step == config.max_steps:
                history.append(dict(ctx.metrics))
                if accelerator.is_main_process:
                    with metrics_path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(ctx.metrics) + "\n")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                _save(accelerator, out / "checkpoints" / f"step_{step}", step, micro)
            if step >= config.max_steps:
                break
    bar.close()
    final = out / "checkpoints" / "final"
    _save(accelerator, final, step, micro)
    _call(callbacks, "on_train_end", ctx)
    accelerator.wait_for_everyone()
    return TrainResult(step, last_loss, history, str(final), str(out))


def _save(accelerator: Any, path: Path, step: int, micro: int) -> None:
    """``save_state`` on every process, then a marker that says the checkpoint is complete."""
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from slimkit.io import save_json

        save_json(path / _STATE_FILE, {"step": step, "micro": micro})
    accelerator.wait_for_everyone()
