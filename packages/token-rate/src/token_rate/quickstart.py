"""The token-rate demo: train a small ViT on the bundled digits, search a DiffRate schedule at about
half the GMACs, and compare top-1 of the uncompressed model, DiffRate and ToMe at matched GMACs.

Runs offline on a CPU in about a minute. The search is shortened from the official 3 ImageNet
epochs to a few dozen steps, so it uses a 10x larger logit learning rate (0.1 -> 0.01) and a
stronger FLOPs penalty (lambda 20 on the relative gap) so the short search lands on the target.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.data import digits
from slimkit.io import save_json
from slimkit.train import clear_run
from token_rate.bench import matched_tome_r
from token_rate.config import DiffRateConfig, ToMeConfig
from token_rate.model_flops import gmacs
from token_rate.models import DIGITS_VIT_DEFAULTS, evaluate, load_model, train_digits_vit
from token_rate.patch import model_dims, patch
from token_rate.search import SearchSettings, search, search_train_config
from token_rate.visualize import visualize

__all__ = ["run"]


def _digit_image(images: torch.Tensor, index: int) -> np.ndarray:
    """A normalized digits tensor [1, H, W] back to an RGB uint8 picture."""
    gray = ((images[index, 0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().numpy()
    return np.stack([gray] * 3, axis=-1)


def run(
    output_dir: Path,
    train_steps: int = 400,
    search_steps: int = 60,
    target_ratio: float = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train, search, evaluate and draw; returns ``what``, ``figure`` (headline) and ``files``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for run_dir in (output_dir / "model" / "run", output_dir / "search"):
        clear_run(run_dir)  # the demo owns its folders: each call starts over
    torch.manual_seed(seed)
    size = int(DIGITS_VIT_DEFAULTS["img_size"])
    trained = train_digits_vit(output_dir / "model", steps=train_steps, seed=seed, progress=progress)
    model = load_model(checkpoint=output_dir / "model")
    val = digits("val", size=size, seed=seed)
    schedule_path = output_dir / "schedule.json"
    schedule = search(
        model,
        digits("train", size=size, seed=seed),
        SearchSettings(
            target_ratio=target_ratio, flops_weight=20.0, output=str(schedule_path), name="digits_vit-search"
        ),
        train_config=search_train_config(
            str(output_dir / "search"), search_steps, lr=0.1, min_lr=0.01, batch_size=32, seed=seed,
            cpu=True, progress=progress, log_every=10,
        ),
    )  # fmt: skip
    dims = model_dims(model)
    tome_r = matched_tome_r(dims, schedule.meta["searched_gmacs"])
    variants: dict[str, Any] = {
        "uncompressed": None,
        "diffrate": DiffRateConfig(schedule=schedule),
        f"tome_r{tome_r}": ToMeConfig(r=tome_r),
    }
    rows: list[dict[str, Any]] = []
    for name, cfg in variants.items():
        m = copy.deepcopy(model)
        if cfg is not None:
            patch(m, cfg)
        rows.append({"name": name, "gmacs": gmacs(m), "top1": evaluate(m, val)})
    figure_path = output_dir / "token_groups.png"
    visualize(
        model,
        _digit_image(val.tensors[0], 0),
        {"DiffRate": variants["diffrate"], f"ToMe r={tome_r}": variants[f"tome_r{tome_r}"]},
        figure_path,
        title="token groups after the last block (red: pruned)",
        pruned_color=(170, 40, 40),  # the digits' background is already black
    )
    by = {r["name"]: r for r in rows}
    results = {
        "rows": rows,
        "target_gmacs": schedule.target_gmacs,
        "searched_gmacs": schedule.meta["searched_gmacs"],
        "relative_error": schedule.meta["relative_error"],
        "kept_per_block": schedule.effective(dims.num_tokens),
        "train_val_top1": trained["val_top1"],
    }
    results_path = output_dir / "results.json"
    save_json(results_path, results)
    base, dr, tm = by["uncompressed"], by["diffrate"], by[f"tome_r{tome_r}"]
    figure = (
        f"top-1 at {dr['gmacs'] / base['gmacs']:.2f}x GMACs: DiffRate {dr['top1']:.3f}, "
        f"ToMe r={tome_r} {tm['top1']:.3f} ({tm['gmacs'] / base['gmacs']:.2f}x), uncompressed {base['top1']:.3f}"
    )
    return {
        "what": (
            f"small ViT trained {trained['steps']} steps on digits, DiffRate schedule searched in "
            f"{schedule.meta['steps']} steps for {target_ratio:.2f}x GMACs (got "
            f"{schedule.meta['searched_gmacs'] / schedule.meta['baseline_gmacs']:.3f}x)"
        ),
        "figure": figure,
        "files": [str(schedule_path), str(figure_path), str(results_path), trained["model"]],
        **results,
    }
