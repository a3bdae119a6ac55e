"""Throughput of an unpatched ViT vs DiffRate vs ToMe at matched GMACs, measured in one process.

Every variant is its own copy of the same weights. Timings are interleaved round by round
(:func:`slimkit.bench.compare`) so background load hits all variants alike; the report gives
medians and per-round median speed-up ratios, plus the environment header, because absolute
CPU numbers are noisy (10-20% run to run) and only the ratios are worth comparing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit.bench import compare, env_header
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict
from token_rate.config import DiffRateConfig, ToMeConfig
from token_rate.flops import ViTDims, analytic_macs, tome_token_counts
from token_rate.models import input_spec
from token_rate.patch import model_dims, patch
from token_rate.schedule import Schedule, load_schedule

__all__ = ["BenchConfig", "matched_tome_r", "run_bench"]


@dataclass
class BenchConfig:
    """What to time. ``tome_r=None`` picks the constant r whose GMACs are closest to the schedule's."""

    schedule: str | None = None
    mode: str = "official"
    tome_r: int | None = None
    include_tome: bool = True
    batch_size: int = 32
    warmup: int = 3
    repeats: int = 10
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BadInputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.repeats < 1 or self.warmup < 0:
            raise BadInputError("repeats must be >= 1 and warmup >= 0")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise BadInputError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")


def matched_tome_r(dims: ViTDims, target_gmacs: float) -> int:
    """The constant ToMe ``r`` whose analytic GMACs are closest to ``target_gmacs``."""
    best_r, best_err = 0, float("inf")
    for r in range(0, dims.num_tokens // 2 + 1):
        g = analytic_macs(dims, tome_token_counts(dims, [r] * dims.depth)) / 1e9
        err = abs(g - target_gmacs)
        if err < best_err:
            best_r, best_err = r, err
    return best_r


def _variant(model: nn.Module, config: Any) -> nn.Module:
    clone = copy.deepcopy(model)
    if config is not None:
        patch(clone, config)
    return clone.eval()


def run_bench(model: nn.Module, config: BenchConfig, device: torch.device | None = None) -> dict[str, Any]:
    """Time baseline / DiffRate / ToMe on random images; returns rows plus the environment."""
    device = device or torch.device("cpu")
    dtype = getattr(torch, config.dtype)
    model = model.eval()
    dims = model_dims(model)
    baseline_g = analytic_macs(dims) / 1e9
    variants: dict[str, tuple[Any, float]] = {"baseline": (None, baseline_g)}
    schedule: Schedule | None = None
    if config.schedule is not None:
        schedule = load_schedule(config.schedule)
        schedule.validate(depth=dims.depth, num_tokens=dims.num_tokens)
        g = analytic_macs(dims, schedule.effective(dims.num_tokens)) / 1e9
        variants["diffrate"] = (DiffRateConfig(schedule=schedule, mode=config.mode), g)  # type: ignore[arg-type]
    if config.include_tome and (config.tome_r is not None or schedule is not None):
        r = config.tome_r if config.tome_r is not None else matched_tome_r(dims, variants["diffrate"][1])
        g = analytic_macs(dims, tome_token_counts(dims, [r] * dims.depth)) / 1e9
        variants[f"tome_r{r}"] = (ToMeConfig(r=r), g)
    size, chans = input_spec(model)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch_size, chans, size, size, generator=gen).to(device=device, dtype=dtype)
    built = {name: _variant(model, cfg).to(device=device, dtype=dtype) for name, (cfg, _) in variants.items()}
    fns = {name: (lambda m=m: m(images)) for name, m in built.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = compare(fns, "baseline", warmup=config.warmup, repeats=config.repeats, items=config.batch_size, sync=sync)
    for row in rows:
        row["gmacs"] = variants[row["name"]][1]
        row["images_per_s"] = row.pop("throughput")
    return {
        "config": config_to_dict(config),
        "dims": dims.to_dict(),
        "rows": rows,
        "env": env_header(device=device),
    }
