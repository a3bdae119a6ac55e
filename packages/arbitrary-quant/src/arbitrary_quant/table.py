"""The any-bit table: MultiQuant vs Any-Precision vs one LSQ model per bit-width, top-1 at every bit-width.

Why: MultiQuant's claim is that one network trained once serves every bit-width about as well as
models trained for one bit-width each, and better than Any-Precision's shared weights. The table
trains, per seed, one MultiQuant network, one Any-Precision network and one LSQ model per bit-width
on the same data with the same step budget and reports held-out top-1 mean ± std per bit-width,
so a reader can see whether a gap exceeds the seed-to-seed noise.

Budget: every method gets ``steps`` optimizer steps per trained model (MultiQuant and Any-Precision
see every bit-width on every batch, so they do ``len(bits)`` forwards per step; LSQ trains
``len(bits)`` separate models). Same model (slimkit's SmallResNet), data, batch size, lr and
schedule for all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arbitrary_quant.api import quantize_
from arbitrary_quant.baselines import init_lsq, recursive_loss
from arbitrary_quant.config import AnyPrecisionConfig, LSQConfig, MultiQuantConfig
from arbitrary_quant.multiquant import init_bounds, set_bits
from arbitrary_quant.training import AllBitsForward, multibit_loss, multiquant_optimizer
from slimkit.bench import env_header, mean_std
from slimkit.data import first_inputs, num_classes, resolve_dataset
from slimkit.errors import BadInputError
from slimkit.evaluate import top1
from slimkit.io import save_table
from slimkit.progress import progress
from slimkit.train import TrainConfig, train
from slimkit.zoo import SmallResNet

__all__ = ["METHODS", "MultiBitTableSettings", "multibit_table"]

METHODS = ("multiquant", "any-precision", "lsq")
_LABELS = {"multiquant": "MultiQuant (one network)", "any-precision": "Any-Precision (one network)",
           "lsq": "LSQ (one model per bit-width)"}  # fmt: skip


@dataclass
class MultiBitTableSettings:
    """Everything that decides a cell of the table (the ``arbitrary-quant table`` flags)."""

    data: str = "digits"
    image_size: int = 16
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    steps: int = 300
    batch_size: int = 64
    lr: float = 5e-3
    widths: tuple[int, ...] = (16, 32)
    groups: int = 4

    def __post_init__(self) -> None:
        self.bits = tuple(self.bits)
        self.widths = tuple(self.widths)
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise BadInputError("steps and batch size must be >= 1 and lr > 0")

    def command(self, seeds: Sequence[int], methods: Sequence[str]) -> str:
        return (
            f"arbitrary-quant table --data {self.data} --image-size {self.image_size} "
            f"--bits {','.join(map(str, self.bits))} --methods {','.join(methods)} "
            f"--seeds {','.join(map(str, seeds))} --steps {self.steps} --batch-size {self.batch_size} --lr {self.lr}"
        )


def _sets(s: MultiBitTableSettings, seed: int) -> tuple[Any, Any, int]:
    """(train, held-out, channels): digits keeps its val split (it has no test split), the generated sets their test split."""
    chans, held = (1, "val") if s.data == "digits" else (3, "test")
    return (resolve_dataset(s.data, "train", s.image_size, chans, seed),
            resolve_dataset(s.data, held, s.image_size, chans, seed), chans)  # fmt: skip


def _model(chans: int, num_classes: int, s: MultiBitTableSettings, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return SmallResNet(num_classes=num_classes, in_chans=chans, widths=s.widths)


def _fit(trained: nn.Module, data: Any, s: MultiBitTableSettings, seed: int, workdir: Path, **how: Any) -> None:
    config = TrainConfig(
        output_dir=str(workdir), max_steps=s.steps, batch_size=s.batch_size, lr=s.lr, seed=seed, cpu=True,
        progress=False, log_every=s.steps,
    )  # fmt: skip
    train(trained, data, config, **how)


def _run_seed(method: str, s: MultiBitTableSettings, seed: int, tmp: Path) -> dict[int, float]:
    """Top-1 per bit-width of one method at one seed."""
    train_set, held, chans = _sets(s, seed)
    classes = num_classes(train_set)
    workdir = tmp / f"{method}_{seed}"
    if method == "lsq":
        out = {}
        for bits in s.bits:
            model = quantize_(_model(chans, classes, s, seed), LSQConfig(w_bits=bits, a_bits=bits, seed=seed))
            init_lsq(model, first_inputs(train_set, s.batch_size))
            _fit(model, train_set, s, seed, workdir / str(bits))
            out[bits] = top1(model.eval(), held)
        return out
    if method == "multiquant":
        config: Any = MultiQuantConfig(groups=s.groups, bit_list=s.bits, seed=seed)
        model = quantize_(_model(chans, classes, s, seed), config)
        init_bounds(model, first_inputs(train_set, s.batch_size))
        how = {"loss_fn": multibit_loss(config.distill_weight), "optimizer_fn": multiquant_optimizer(model)}
    elif method == "any-precision":
        model = quantize_(_model(chans, classes, s, seed), AnyPrecisionConfig(bit_list=s.bits, seed=seed))
        how = {"loss_fn": recursive_loss()}
    else:
        raise BadInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    _fit(AllBitsForward(model, s.bits), train_set, s, seed, workdir, **how)
    model.eval()
    out = {}
    for bits in s.bits:
        set_bits(model, bits)
        out[bits] = top1(model, held)
    return out


def multibit_table(
    settings: MultiBitTableSettings | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    output: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train every method at every seed; rows of top-1 mean ± std per bit-width, markdown and the reproducing command."""
    s = settings or MultiBitTableSettings()
    if not seeds:
        raise BadInputError("give at least one seed")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInputError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    runs: list[dict[str, Any]] = []
    bar: Any = progress(total=len(seeds) * len(methods), desc="table", disable=not show_progress)
    with tempfile.TemporaryDirectory(prefix="arbitrary-quant-table-") as tmp:
        for seed in seeds:
            for method in methods:
                for bits, acc in _run_seed(method, s, seed, Path(tmp)).items():
                    runs.append({"method": method, "seed": seed, "bits": bits, "top1": acc})
                bar.update(1)
    bar.close()
    rows = []
    for method in methods:
        for bits in s.bits:
            accs = [r["top1"] for r in runs if r["method"] == method and r["bits"] == bits]
            mean, std = mean_std(accs)
            rows.append({"method": method, "bits": bits, "top1_mean": mean, "top1_std": std, "top1": accs})
    result: dict[str, Any] = {
        "command": s.command(seeds, methods), "settings": asdict(s), "seeds": list(seeds),
        "env": env_header(device=torch.device("cpu")), "rows": rows, "runs": runs,
        "markdown": _markdown(rows, s.bits, methods, len(seeds)),
    }  # fmt: skip
    if output is not None:
        save_table(output, result)
    return result


def _markdown(rows: list[dict[str, Any]], bits: Sequence[int], methods: Sequence[str], num_seeds: int) -> str:
    head = "| method | " + " | ".join(f"{b}-bit" for b in bits) + " |"
    lines = [head, "| --- |" + " --- |" * len(bits)]
    for method in methods:
        cells = {r["bits"]: r for r in rows if r["method"] == method}
        values = " | ".join(f"{100 * cells[b]['top1_mean']:.2f} ± {100 * cells[b]['top1_std']:.2f}" for b in bits)
        lines.append(f"| {_LABELS[method]} | {values} |")
    lines.append(f"\nTop-1 % on the held-out split, mean ± std over {num_seeds} seeds.")
    return "\n".join(lines)
