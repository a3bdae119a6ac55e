"""The token-rate method table: uncompressed, DiffRate (official and warm start) and ToMe at
matched GMACs, at several budgets, over several seeds, on one offline data set.

Why: a single run on a small set cannot separate methods that differ by a point or two; the
table trains one small ViT per seed, searches every DiffRate variant on that same model, and
reports mean and std of held-out top-1 so a reader can see whether a gap exceeds the noise.

The two DiffRate starts: ``official`` begins from uniform rate logits as the released search
does; ``warm`` begins from the merge-only schedule ToMe would use at the same budget (the
constant-``r`` token counts), which the README shows matters on small models and short searches.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from slimkit.bench import env_header, mean_std
from slimkit.data import num_classes, resolve_dataset
from slimkit.errors import BadInputError
from slimkit.io import save_table
from slimkit.progress import progress
from slimkit.train import TrainConfig, train
from token_rate.bench import matched_tome_r
from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig
from token_rate.flops import analytic_macs, tome_token_counts
from token_rate.model_flops import gmacs
from token_rate.models import DIGITS_VIT_DEFAULTS, digits_vit, evaluate
from token_rate.patch import model_dims, patch
from token_rate.schedule import Schedule
from token_rate.search import SearchSettings, search, search_train_config

__all__ = ["TableSettings", "method_table", "table_data", "warm_start_schedule"]

VARIANTS = ("diffrate", "diffrate_warm", "tome")


@dataclass
class TableSettings:
    """Training and search settings shared by every cell of the table (CLI flags of ``token-rate table``)."""

    train_steps: int = 800
    train_lr: float = 1e-3
    #: linear warm-up of the ViT's training; ``None`` means ``train_steps // 20`` (at least 1)
    train_warmup_steps: int | None = None
    batch_size: int = 64
    search_steps: int = 150
    search_lr: float = 0.05
    search_batch_size: int = 32
    flops_weight: float = 20.0
    eval_split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warmup(self) -> int:
        """Warm-up steps of the ViT's training, with the ``None`` default resolved."""
        return max(1, self.train_steps // 20) if self.train_warmup_steps is None else self.train_warmup_steps


def warm_start_schedule(model: nn.Module, target_gmacs: float) -> Schedule:
    """Merge-only schedule with ToMe's token counts at the constant ``r`` closest to the target."""
    dims = model_dims(model)
    r = matched_tome_r(dims, target_gmacs)
    merge = tome_token_counts(dims, [r] * dims.depth)
    return Schedule([dims.num_tokens] * dims.depth, merge, num_tokens=dims.num_tokens,
                    num_prefix_tokens=dims.num_prefix_tokens)  # fmt: skip


def _layout(data: str, eval_split: str) -> tuple[int, str]:
    """(input channels, held-out split): digits is grey with no test split, the generated sets are RGB."""
    return (1, "val") if data == "digits" else (3, eval_split)


def table_data(data: str, seed: int, eval_split: str = "test") -> tuple[Dataset[Any], Dataset[Any]]:
    """(train, held-out) sets at the table ViT's input size: digits as grey images with its val split
    held out (it has no test split), the generated sets as RGB with ``eval_split`` held out."""
    size = int(DIGITS_VIT_DEFAULTS["img_size"])
    chans, held = _layout(data, eval_split)
    return (resolve_dataset(data, split="train", image_size=size, channels=chans, seed=seed),
            resolve_dataset(data, split=held, image_size=size, channels=chans, seed=seed))  # fmt: skip


def _train_vit(
    train_set: Dataset[Any], num_classes: int, in_chans: int, seed: int, s: TableSettings, workdir: Path
) -> nn.Module:
    torch.manual_seed(seed)
    model = digits_vit(num_classes=num_classes, in_chans=in_chans)
    config = TrainConfig(
        output_dir=str(workdir / f"train_{seed}"), max_steps=s.train_steps, batch_size=s.batch_size,
        lr=s.train_lr, weight_decay=0.05, warmup_steps=s.warmup(), seed=seed, cpu=True,
        progress=False, log_every=s.train_steps,
    )  # fmt: skip
    train(model, train_set, config)
    return model.eval()


def _search(
    model: nn.Module, train_set: Dataset[Any], ratio: float, seed: int, s: TableSettings, workdir: Path,
    init: Schedule | None,
) -> Schedule:  # fmt: skip
    name = f"search_{seed}_{ratio}_{'warm' if init is not None else 'official'}"
    return search(
        copy.deepcopy(model),
        train_set,
        SearchSettings(target_ratio=ratio, flops_weight=s.flops_weight, name=name),
        config=SearchConfig(init_schedule=init),
        train_config=search_train_config(
            str(workdir / name), s.search_steps, lr=s.search_lr, min_lr=s.search_lr / 10,
            batch_size=s.search_batch_size, seed=seed, cpu=True, progress=False, log_every=s.search_steps,
        ),
    )  # fmt: skip


def _cell(model: nn.Module, config: Any, data: Dataset[Any]) -> dict[str, float]:
    m = copy.deepcopy(model)
    if config is not None:
        patch(m, config)
    return {"gmacs": gmacs(m), "top1": evaluate(m, data)}



def method_table(
    data: str = "digits",
    seeds: Sequence[int] = (0, 1, 2),
    ratios: Sequence[float] = (0.5, 0.35),
    settings: TableSettings | None = None,
    output: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train one ViT per seed on ``data``; per budget search DiffRate twice and match ToMe; mean ± std.

    Returns ``rows`` (one per variant and budget: GMACs ratio, top-1 per seed, mean, std),
    ``runs`` (every cell with its schedule), ``markdown`` and the environment header.
    """
    s = settings or TableSettings()
    if not seeds:
        raise BadInputError("give at least one seed")
    for ratio in ratios:
        if not 0.0 < ratio < 1.0:
            raise BadInputError(f"every budget ratio must be in (0, 1), got {ratio}")
    chans, eval_split = _layout(data, s.eval_split)
    runs: list[dict[str, Any]] = []
    bar: Any = progress(total=len(seeds) * (1 + 2 * len(ratios)), desc="table", disable=not show_progress)
    with tempfile.TemporaryDirectory(prefix="token-rate-table-") as tmp:
        for seed in seeds:
            train_set, held_out = table_data(data, seed, eval_split)
            model = _train_vit(train_set, num_classes(train_set), chans, seed, s, Path(tmp))
            base = analytic_macs(model_dims(model)) / 1e9
            runs.append({"seed": seed, "variant": "uncompressed", "ratio": 1.0, **_cell(model, None, held_out)})
            bar.update(1)
            for ratio in ratios:
                for variant, init in (("diffrate", None), ("diffrate_warm", warm_start_schedule(model, base * ratio))):
                    sched = _search(model, train_set, ratio, seed, s, Path(tmp), init)
                    cell = _cell(model, DiffRateConfig(schedule=sched), held_out)
                    runs.append({"seed": seed, "variant": variant, "ratio": ratio, **cell,
                                 "kept_per_block": sched.effective(sched.num_tokens)})  # fmt: skip
                    bar.update(1)
                r_tome = matched_tome_r(model_dims(model), base * ratio)
                runs.append({"seed": seed, "variant": "tome", "ratio": ratio, "tome_r": r_tome,
                             **_cell(model, ToMeConfig(r=r_tome), held_out)})  # fmt: skip
    bar.close()
    rows = _rows(runs, ratios)
    command = (
        f"token-rate table --data {data} --seeds {','.join(str(x) for x in seeds)} "
        f"--ratios {','.join(str(r) for r in ratios)} --train-steps {s.train_steps} --train-lr {s.train_lr} "
        f"--train-warmup-steps {s.warmup()} --batch-size {s.batch_size} --search-steps {s.search_steps} --search-lr {s.search_lr} "
        f"--search-batch-size {s.search_batch_size} --flops-weight {s.flops_weight}"
    )
    result: dict[str, Any] = {
        "command": command,
        "data": data,
        "eval_split": eval_split,
        "seeds": list(seeds),
        "ratios": list(ratios),
        "settings": s.to_dict(),
        "env": env_header(device=torch.device("cpu")),
        "rows": rows,
        "runs": runs,
        "markdown": _markdown(rows, len(seeds)),
    }
    if output is not None:
        save_table(output, result)
    return result


def _rows(runs: list[dict[str, Any]], ratios: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    full = {r["seed"]: r["gmacs"] for r in runs if r["variant"] == "uncompressed"}
    keys = [("uncompressed", 1.0)] + [(v, ratio) for ratio in ratios for v in VARIANTS]
    for variant, ratio in keys:
        cells = [r for r in runs if r["variant"] == variant and r["ratio"] == ratio]
        acc_mean, acc_std = mean_std([c["top1"] for c in cells])
        rel_mean, _ = mean_std([c["gmacs"] / full[c["seed"]] for c in cells])
        rows.append({"variant": variant, "budget": ratio, "gmacs_ratio": rel_mean, "top1_mean": acc_mean,
                     "top1_std": acc_std, "top1": [c["top1"] for c in cells],
                     "tome_r": [c["tome_r"] for c in cells] if variant == "tome" else None})  # fmt: skip
    return rows


_LABELS = {
    "uncompressed": "uncompressed",
    "diffrate": "DiffRate (official start)",
    "diffrate_warm": "DiffRate (warm start)",
    "tome": "ToMe (matched GMACs)",
}


def _markdown(rows: list[dict[str, Any]], num_seeds: int) -> str:
    lines = [f"| variant | budget | GMACs vs. uncompressed | top-1 % (mean ± std, {num_seeds} seeds) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for row in rows:
        budget = "-" if row["variant"] == "uncompressed" else f"{row['budget']:.2f}x"
        name = _LABELS[row["variant"]]
        if row["tome_r"]:
            name += f" r={'/'.join(str(r) for r in row['tome_r'])}"
        lines.append(f"| {name} | {budget} | {row['gmacs_ratio']:.3f}x | "
                     f"{100 * row['top1_mean']:.2f} ± {100 * row['top1_std']:.2f} |")  # fmt: skip
    return "\n".join(lines)
