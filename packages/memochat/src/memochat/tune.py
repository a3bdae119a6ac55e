"""Tuning a causal LM for the three MemoChat tasks: LoRA (through peft) or full fine-tuning, both
through :func:`slimkit.train` (accelerate: one CPU process, or ``accelerate launch`` for many).

The official recipe is full fine-tuning (HF Trainer + DeepSpeed, 3 epochs, lr 2e-5, 4 % warm-up,
2048 tokens); LoRA is the cheap alternative for small machines. The loss is the paper's: prompt
tokens masked, answer + EOS trained. Held-out loss is measured per task type before training and
every ``eval_every`` steps, and drawn as one curve per task.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from memochat.config import LoraConfig
from memochat.data import IGNORE_INDEX, encode
from memochat.lora import apply_lora, lora_state_dict
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict, save_json, save_state_dict
from slimkit.plot import save_png
from slimkit.report import ReportMixin
from slimkit.train import TrainConfig, clear_run, train

METHODS = ("lora", "full")


class _Encoded(Dataset[dict[str, list[int]]]):
    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def collate(batch: Sequence[dict[str, list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (padding ignored by the loss)."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.tensor(b["input_ids"])
        labels[i, :k] = torch.tensor(b["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss  # type: ignore[no-any-return]


@torch.no_grad()
def heldout_loss(model: nn.Module, items: Sequence[dict[str, list[int]]], pad_id: int = 0, batch_size: int = 8) -> float:
    """Mean per-token loss over the answer tokens of ``items`` (eval mode, previous mode restored)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(items), batch_size):
        b = {k: v.to(device) for k, v in collate(items[i : i + batch_size], pad_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        tgt = b["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(loss)
        count += int((tgt != IGNORE_INDEX).sum())
    model.train(was)
    return total / max(count, 1)


class _TaskCurves:
    """Held-out loss per task type at the start and every ``every`` steps."""

    def __init__(self, heldout: dict[str, list[dict[str, list[int]]]], every: int, pad_id: int) -> None:
        self.heldout, self.every, self.pad_id = heldout, every, pad_id
        self.rows: list[dict[str, Any]] = []

    def _measure(self, model: nn.Module, step: int) -> None:
        self.rows.append({"step": step, **{t: heldout_loss(model, items, self.pad_id) for t, items in self.heldout.items()}})

    def on_train_start(self, ctx: Any) -> None:
        if not self.rows:
            self._measure(ctx.model, 0)

    def on_step_end(self, ctx: Any) -> None:
        if ctx.step % self.every == 0 or ctx.step == ctx.config.max_steps:
            self._measure(ctx.model, ctx.step)


@dataclass
class TuneResult(ReportMixin):
    method: str
    steps: int
    trainable: int
    train_examples: int
    heldout_examples: dict[str, int]
    curves: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""
    plot: str | None = None


def split_heldout(records: Sequence[dict[str, str]], per_task: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``per_task`` records of each type held out (fewer when a type is small, never all of it)."""
    rng = random.Random(seed)
    order = list(records)
    rng.shuffle(order)
    held: list[dict[str, str]] = []
    taken: dict[str, int] = {}
    train_part: list[dict[str, str]] = []
    sizes = {t: sum(r["type"] == t for r in records) for t in {r["type"] for r in records}}
    for r in order:
        t = r["type"]
        if taken.get(t, 0) < min(per_task, sizes[t] // 2):
            held.append(r)
            taken[t] = taken.get(t, 0) + 1
        else:
            train_part.append(r)
    return train_part, held


def tune(model: nn.Module, tokenizer: Any, records: Sequence[dict[str, str]], output_dir: str | Path, *, method: str = "lora",
         lora: LoraConfig | None = None, steps: int = 100, lr: float | None = None, batch_size: int = 4, max_len: int = 1024,
         heldout_per_task: int = 4, eval_every: int = 10, seed: int = 0, template: str = "raw", warmup_ratio: float = 0.04,
         progress: bool = False) -> TuneResult:  # fmt: skip
    """Train ``model`` in place on ``records``; returns held-out loss per task before, during and after."""
    if method not in METHODS:
        raise BadInputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not records:
        raise BadInputError("no training records")
    out = Path(output_dir)
    train_recs, held_recs = split_heldout(records, heldout_per_task, seed)
    if not train_recs:
        raise BadInputError("every record was held out: give more data or a smaller --heldout")
    enc = [encode(tokenizer, r, max_len, template) for r in train_recs]
    enc = [e for e in enc if any(lab != IGNORE_INDEX for lab in e["labels"])]
    if not enc:
        raise BadInputError(f"every training record's answer falls outside --max-len {max_len}")
    heldout: dict[str, list[dict[str, list[int]]]] = {}
    for r in held_recs:
        heldout.setdefault(r["type"], []).append(encode(tokenizer, r, max_len, template))
    pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
    if method == "lora":
        apply_lora(model, lora or LoraConfig())
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    curves = _TaskCurves(heldout, max(1, eval_every), pad_id)
    clear_run(out)
    cfg = TrainConfig(output_dir=str(out), max_steps=steps, batch_size=batch_size,
                      lr=lr if lr is not None else (1e-3 if method == "lora" else 2e-5),
                      warmup_steps=round(warmup_ratio * steps), log_every=max(1, min(10, steps)),
                      progress=progress, cpu=not torch.cuda.is_available(), seed=seed, max_grad_norm=1.0)  # fmt: skip
    model.train()
    train(model, _Encoded(enc), cfg, loss_fn=lm_loss, params=params, callbacks=[curves],
          collate_fn=lambda b: collate(b, pad_id))  # fmt: skip
    model.eval()
    if method == "lora":
        save_state_dict(out / "adapter.safetensors", lora_state_dict(model), {"lora": config_to_dict(lora or LoraConfig())})
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(  # type: ignore[operator]
            str(out / "model"), safe_serialization=True)
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(out / "model"))
    before = {k: v for k, v in curves.rows[0].items() if k != "step"} if curves.rows else {}
    after = {k: v for k, v in curves.rows[-1].items() if k != "step"} if curves.rows else {}
    res = TuneResult(method, steps, sum(p.numel() for p in params), len(enc), {t: len(v) for t, v in heldout.items()},
                     curves.rows, before, after, str(out))  # fmt: skip
    save_json(out / "curves.json", res.to_dict())
    return res


def plot_curves(result: TuneResult, path: str | Path) -> Path:
    """One held-out loss curve per task type (PNG)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    tasks = [k for k in (result.curves[0] if result.curves else {}) if k != "step"]
    for t in tasks:
        ax.plot([r["step"] for r in result.curves], [r[t] for r in result.curves], marker="o", ms=3, label=t)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out loss (answer tokens)")
    ax.set_title(f"memochat {result.method} tuning: held-out loss per task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
