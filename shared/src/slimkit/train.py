"""One training loop on ``accelerate`` that every package configures instead of rewriting.

Packages plug in a loss, the parameters to train, optimizer/scheduler factories
and callbacks (mask refreshes, decays, logit clamps). The loop owns the rest:
gradient accumulation, mixed precision where the device has it, progress bar,
metrics JSONL, ``save_state`` checkpoints and exact resume. It runs unchanged
under ``accelerate launch --num_processes N``.

Resume is exact because the data order is a pure function of ``(seed, epoch)``
and accelerate's ``save_state`` restores model, optimizer, scheduler, callback
state and every RNG.

Checkpoint layout (``output_dir/checkpoints/``): ``step_<n>/`` and ``final/``, each an
accelerate ``save_state`` folder plus ``trainer_state.json`` (``{"step", "micro"}``), the
marker that says it is complete. A checkpoint is never rewritten in place: it is written as
``.tmp-<name>-<random>/``, marker last, then renamed in; a ``<name>`` it replaces is moved to
``.old-<name>-<random>/`` first and deleted after. A kill at any point leaves a complete
checkpoint to resume from, and the next run cleans up (see :func:`recover_checkpoints`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from slimkit.errors import BadInputError
from slimkit.io import atomic_write, save_json
from slimkit.progress import progress

LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
_PRECISIONS = ("auto", "no", "fp16", "bf16")
#: Learning-rate schedules after the linear warm-up: cosine decay, constant, or one step drop (DETR's 200 of 300 epochs).
SCHEDULERS = ("cosine", "constant", "step")
_STATE_FILE = "trainer_state.json"
_MAX_SEED = 2**32 - 1


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
    scheduler: str = "cosine"  # or "constant", or "step": lr x step_gamma once step_at of the post-warm-up steps are done
    min_lr: float = 0.0
    step_at: float = 2 / 3
    step_gamma: float = 0.1
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
    #: DDP only: let parameters skip a step's backward (a multi-branch model whose forward leaves some unused).
    find_unused_parameters: bool = False

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
        if self.scheduler not in SCHEDULERS:
            raise BadInputError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not 0 < self.step_at < 1 or not 0 < self.step_gamma <= 1:
            raise BadInputError(f"step_at must be in (0, 1) and step_gamma in (0, 1], got {self.step_at} and {self.step_gamma}")
        if not self.lr > 0:
            raise BadInputError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "min_lr"):
            value = getattr(self, name)
            if not value >= 0:
                raise BadInputError(f"{name} must be >= 0, got {value}")
        for name in ("warmup_steps", "checkpoint_every", "num_workers"):
            value = getattr(self, name)
            if value < 0:
                raise BadInputError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.seed <= _MAX_SEED:  # accelerate's set_seed refuses others with a ValueError
            raise BadInputError(f"seed must be in 0..{_MAX_SEED}, got {self.seed}")
        if self.log_every < 1:
            raise BadInputError(f"log_every must be >= 1, got {self.log_every}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise BadInputError(f"max_grad_norm must be > 0 (or None), got {self.max_grad_norm}")


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
    """Any subset of these hooks (a callback needs only the ones it uses); ``state_dict``/``load_state_dict``
    make it checkpointed.

    ``on_train_start`` runs once after a resume is loaded; ``after_backward`` once per optimizer step, on the
    accumulated (unscaled) gradients before clipping; ``on_step_end`` after the step, with ``ctx.metrics``;
    ``on_train_end`` after the final checkpoint.
    """

    def on_train_start(self, ctx: TrainContext) -> None: ...

    def after_backward(self, ctx: TrainContext) -> None: ...

    def on_step_end(self, ctx: TrainContext) -> None: ...

    def on_train_end(self, ctx: TrainContext) -> None: ...


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


def process_state(cpu: bool | None = None) -> PartialState:
    """accelerate's process state, set up for CPU processes when ``cpu`` (default: no CUDA device).

    Why: under ``accelerate launch`` / torchrun on a machine without a GPU, a bare ``PartialState()``
    finds no GPU backend and makes every process rank 0 of 1, so "two processes" silently become two
    independent runs writing one folder. The first call decides for the whole process (accelerate
    keeps one shared state), so CLIs call this instead of ``PartialState()``, and :func:`train` does
    before it builds its ``Accelerator``.
    """
    return PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


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
    """Linear warm-up, then cosine from ``lr`` to ``min_lr`` over the remaining steps, constant, or
    ``"step"``: ``lr`` until ``step_at`` of the remaining steps, ``lr x step_gamma`` after."""
    total, warm = config.max_steps, config.warmup_steps
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    drop_at = warm + round(config.step_at * (total - warm))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if config.scheduler == "constant":
            return 1.0
        if config.scheduler == "step":
            return 1.0 if step < drop_at else config.step_gamma
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


_HIDDEN = re.compile(r"\.(tmp|old)-(.+)-([0-9a-f]{12})")
_STRAY_FILE = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def _checkpoint_phase(name: str) -> None:
    """Injection point between the steps of a checkpoint write; a no-op outside tests.

    The kill-point tests replace it to stop a run at each phase (``start``, ``state_saved``,
    ``marker_written``, ``old_moved``, ``switched``, ``old_removed``).
    """


def read_checkpoint_marker(path: str | Path) -> dict[str, int] | None:
    """``{"step", "micro"}`` from a checkpoint's marker, or ``None`` if it is not complete."""
    try:
        data = json.loads((Path(path) / _STATE_FILE).read_text(encoding="utf-8"))
        step, micro = data["step"], data["micro"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not (isinstance(step, int) and isinstance(micro, int)) or step < 0 or micro < 0:
        return None
    return {"step": step, "micro": micro}


def _checkpoints(root: Path) -> dict[str, tuple[int, Path]]:
    """Complete checkpoints under ``root`` by name: ``name -> (step, folder)``.

    A visible ``final``/``step_N`` wins. A name whose folder is missing was being switched
    when the run stopped; its newest complete ``.tmp-<name>-*`` (fully written, marker
    included) or ``.old-<name>-*`` (the one it replaces) stands in for it.
    """
    found: dict[str, tuple[int, Path]] = {}
    standins: dict[str, tuple[int, int, Path]] = {}
    try:
        children = sorted(root.iterdir())
    except OSError:
        return found
    for child in children:
        if not child.is_dir():
            continue
        marker = read_checkpoint_marker(child)
        if marker is None:
            continue
        hidden = _HIDDEN.fullmatch(child.name)
        if hidden is None:
            if not child.name.startswith("."):
                found[child.name] = (marker["step"], child)
            continue
        name, rank = hidden.group(2), 1 if hidden.group(1) == "tmp" else 0
        best = standins.get(name)
        if best is None or (marker["step"], rank) > best[:2]:
            standins[name] = (marker["step"], rank, child)
    for name, (step, _, child) in standins.items():
        found.setdefault(name, (step, child))
    return found


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints``, or ``None``.

    "Newest" is the step recorded in the checkpoint's ``trainer_state.json`` marker, which
    is written last; folders without a valid marker are incomplete and never chosen (a tie
    goes to ``final``). Reads only: a checkpoint caught mid-switch is reported at its
    temporary name, and :func:`train` moves it into place before loading it.
    """
    found = _checkpoints(Path(output_dir) / "checkpoints")
    if not found:
        return None
    _, _, path = max((step, name == "final", path) for name, (step, path) in found.items())
    return path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush every file of a freshly written checkpoint before its marker says it is complete."""
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(folder, name), os.O_RDWR)  # Windows flushes writable handles only
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(folder))


def recover_checkpoints(output_dir: str | Path) -> None:
    """Finish or undo a checkpoint switch that a killed run left, then remove leftovers.

    A checkpoint whose folder is missing gets back its stand-in (see
    :func:`find_latest_checkpoint`); every other ``.tmp-*`` folder, every ``.old-<name>-<token>``
    folder of slimkit's own switches (12-hex token; other ``.old-*`` names are left alone) and every
    stray atomic-write temp file (``.<name>.<random>.tmp``) in the run folder and its
    ``checkpoints`` folder is deleted.
    """
    out = Path(output_dir)
    root = out / "checkpoints"
    if root.is_dir():
        for name, (_, path) in _checkpoints(root).items():
            if path.name != name:
                os.replace(path, root / name)
        _fsync_dir(root)
        for child in root.iterdir():
            if _HIDDEN.fullmatch(child.name) or (child.is_dir() and child.name.startswith(".tmp-")):
                shutil.rmtree(child, ignore_errors=True)
    for folder in (out, root, *(root.iterdir() if root.is_dir() else ())):
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if _STRAY_FILE.fullmatch(child.name) and child.is_file():
                with contextlib.suppress(OSError):
                    child.unlink()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the ``metrics.jsonl`` rows up to ``step`` (a resumed run writes the rest again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)) and row["step"] <= step:
            keep.append(line + "\n")

    with atomic_write(path) as fh:
        fh.writelines(keep)


def _resolve_resume(out: Path, resume_from: str | None, max_steps: int) -> Path | None:
    """Validate ``resume_from`` before anything is written; returns the checkpoint to load."""
    if resume_from is None:
        if find_latest_checkpoint(out) is not None:
            raise BadInputError(
                f"{out} holds checkpoints of an earlier run: resume it (resume_from='latest', --resume latest) "
                "or choose a new output folder"
            )
        return None
    if resume_from == "latest":
        found = find_latest_checkpoint(out)
        if found is None:
            raise BadInputError(f"nothing to resume in {out}")
        path = found
    else:
        path = Path(resume_from)
        if _HIDDEN.fullmatch(path.name) or read_checkpoint_marker(path) is None:
            raise BadInputError(f"not a slimkit checkpoint (no complete {_STATE_FILE}): {resume_from}")
    marker = read_checkpoint_marker(path)
    assert marker is not None
    if marker["step"] > max_steps:
        raise BadInputError(
            f"cannot resume {path} (step {marker['step']}) with max_steps {max_steps}: use max_steps >= {marker['step']}"
        )
    return path


def _process_mean(accelerator: Accelerator, sums: dict[str, float], micro_batches: int) -> dict[str, float]:
    """The loss function's extra metrics for one step: the mean over micro-batches, then over processes (as the
    loss column). A name some processes did not report this step is averaged over those that did."""
    local = {k: v / max(1, micro_batches) for k, v in sums.items()}
    if accelerator.num_processes == 1:
        return local
    names = sorted(set().union(*gather_object([sorted(local)])))  # every process takes part, same order after
    if not names:
        return {}
    values = torch.tensor([[local.get(k, 0.0), float(k in local)] for k in names], dtype=torch.float64,
                          device=accelerator.device)  # fmt: skip
    total = accelerator.reduce(values, reduction="sum")
    return {k: float(total[i, 0] / total[i, 1]) for i, k in enumerate(names) if total[i, 1] > 0}


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


    out = Path(config.output_dir)
    resume = _resolve_resume(out, config.resume_from, config.max_steps)
    # Without a GPU, run on CPU explicitly: accelerate then uses gloo across the processes
    # that `accelerate launch --multi_gpu --num_processes N` (torchrun) started.
    cpu = config.cpu or not torch.cuda.is_available()
    process_state(cpu)
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision, cpu),
        cpu=cpu,
        project_dir=str(out),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)],
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
    metrics_path = out / "metrics.jsonl"
    # Everything is validated; from here on the run folder is written. First undo what a
    # killed run left: finish or roll back a checkpoint switch, drop temp folders and files.
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recover_checkpoints(out)
    accelerator.wait_for_everyone()
    if resume is not None:
        hidden = _HIDDEN.fullmatch(resume.name)
        if hidden is not None:  # it was caught mid-switch; recovery moved it into place
            resume = resume.parent / hidden.group(2)
        accelerator.load_state(str(resume))
        marker = read_checkpoint_marker(resume)
        if marker is None:
            raise BadInputError(f"not a slimkit checkpoint (no complete {_STATE_FILE}): {resume}")
        step, micro = marker["step"], marker["micro"]
    if accelerator.is_main_process:
        if resume is None:
            metrics_path.unlink(missing_ok=True)
        else:
            _truncate_metrics(metrics_path, step)
    accelerator.wait_for_everyone()

    ctx = TrainContext(accelerator.unwrap_model(model), accelerator, optimizer, scheduler, config, step)
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
            fp16 = accelerator.mixed_precision == "fp16"
            if fp16:  # callbacks and the clip see the true gradients
                accelerator.unscale_gradients()
            _call(callbacks, "after_backward", ctx)
            if config.max_grad_norm:
                if fp16:  # accelerator.clip_grad_norm_ would unscale a second time, which GradScaler refuses
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                else:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ctx.step = step
            local = torch.tensor(window_loss / max(1, window_n), device=accelerator.device)
            last_loss = float(accelerator.reduce(local, reduction="mean"))
            ctx.metrics = {"step": step, "loss": last_loss, "lr": float(scheduler.get_last_lr()[0])}
            ctx.metrics.update(_process_mean(accelerator, extra_sum, window_n))
            window_loss, window_n, extra_sum = 0.0, 0, {}
            _call(callbacks, "on_step_end", ctx)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if step % config.log_every == 0 or step == config.max_steps:
                history.append(dict(ctx.metrics))
                if accelerator.is_main_process:
                    with metrics_path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(ctx.metrics) + "\n")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                _save(accelerator, out / "checkpoints", f"step_{step}", step, micro)
            if step >= config.max_steps:
                break
    bar.close()
    final = _save(accelerator, out / "checkpoints", "final", step, micro)
    _call(callbacks, "on_train_end", ctx)
    accelerator.wait_for_everyone()
    return TrainResult(step, last_loss, history, str(final), str(out))


def clear_run(output_dir: str | Path) -> None:
    """Delete an earlier run's checkpoints and metrics in ``output_dir``.

    :func:`train` refuses to start afresh over an earlier run's checkpoints (it would mix two
    runs); callers that own their run folder outright, like the demos, call this first.
    """
    out = Path(output_dir)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _switch_into_place(tmp: Path, target: Path, old: Path) -> Path | None:
    """Rename ``tmp`` to ``target``; a ``target`` already there is first renamed to ``old``.

    Tries the rename first and moves ``target`` aside only when the rename says it is in
    the way, so there is no window between a check and the rename in which a folder could
    appear. Returns ``old`` if something was moved aside.
    """
    try:
        os.replace(tmp, target)
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    os.replace(target, old)
    _checkpoint_phase("old_moved")
    os.replace(tmp, target)
    return old


def _save(accelerator: Any, root: Path, name: str, step: int, micro: int) -> Path:
    """Write checkpoint ``root/name`` so that a kill at any moment leaves a complete one.

    Every process ``save_state``s into ``root/.tmp-<name>-<random>``; the main process
    flushes it, writes the ``trainer_state.json`` marker last (atomically, fsynced) and
    renames the folder into place. An existing ``name`` is first renamed to
    ``.old-<name>-<random>`` and deleted only after the new one is in place;
    :func:`recover_checkpoints` finishes or undoes a switch that a kill interrupted.
    """
    target = root / name
    token = secrets.token_hex(6)
    if accelerator.num_processes > 1:
        token = broadcast_object_list([token])[0]
    tmp = root / f".tmp-{name}-{token}"
    # Every process makes the folder before any writes into it: accelerate's save_state creates it on
    # the main process only, and another rank writing its RNG state first failed ("Parent directory
    # ... does not exist"), seen with 2 processes when the final checkpoint followed a periodic one.
    tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    _checkpoint_phase("start")
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    _checkpoint_phase("state_saved")
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        save_json(tmp / _STATE_FILE, {"step": step, "micro": micro})
        _fsync_dir(tmp)
        _checkpoint_phase("marker_written")
        old = _switch_into_place(tmp, target, root / f".old-{name}-{token}")
        _fsync_dir(root)
        _checkpoint_phase("switched")
        if old is not None:
            shutil.rmtree(old)
            _checkpoint_phase("old_removed")
    accelerator.wait_for_everyone()
    return target
