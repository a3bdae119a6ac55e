"""The DFSQ method table: DFSQ against MinMax and Percentile PTQ on a trained EDSR, over seeds.

Why: DFSQ's claims (on par with FP at 8 and 6 bits, a small drop at 4) are about a *trained* SR
network, and a single run cannot tell a 0.05 dB difference from noise. Per seed the table trains
one full-precision EDSR on the offline photo patches (:func:`arbitrary_quant.sr.sr_patches`,
training images), then quantizes a copy per bit-width and method, every method calibrated on the
same ``calibration_patches`` LR patches of the training images, and scores PSNR / SSIM on Y of the
held-out whole images (:data:`arbitrary_quant.sr.TEST_IMAGES`). Rows give mean ± std over seeds
(:func:`slimkit.bench.mean_std`), the FP row, and the gap to FP in dB (per seed ``method - FP``;
the row's mean gap is ``method mean - FP mean``, its std the paired per-seed std). A bicubic row
shows how far training got past plain interpolation.

The "selection" section checks DFSQ's K-means subset selection against the exhaustive search on
real activations: the normalized calibration inputs of the first residual block's two convs
(signed and post-ReLU) of the first seed's trained model, a few live channels each, subsampled to
``selection_values`` values, on a small universal subset (every ``selection_stride``-th value of
the 377-value set, plus 0) with ``selection_points`` points, so ``C(|U|, k)`` stays near 2e5 and the
exhaustive search takes about a second per channel. Both searches hold 0 (K-means pins a centre
there; the exhaustive one runs with ``include_zero``), so the SSE ratio compares like with like.

Default calibration (measured on a busy 2-core machine, one torch thread): a 4-block, 32-feature
x2 EDSR trains at about 0.16 s per step of 16 patches of 48x48 HR, so 600 steps take ~100 s and
reach 34.0 dB on the held-out images against 33.1 dB for bicubic; scoring the three full held-out
images takes ~5 s per cell and calibrating DFSQ 2-7 s (8 bits slowest), so one seed is ~2.6
minutes. The default table (3 seeds x (FP + 3 bit-widths x 3 methods) + selection) ran in 474 s
wall under that load (7.9 min; FP 34.01 ± 0.04 dB). 600 steps is what keeps the FP model clearly
past bicubic (+0.9 dB) with the table under 10 minutes; other step counts were not measured.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from arbitrary_quant.config import MAX_BITS, DFSQConfig
from arbitrary_quant.dfsq import dfsq, exhaustive_subset, kmeans_subset, quantization_sse, residual_block_convs
from arbitrary_quant.edsr import EDSR, SCALES
from arbitrary_quant.flags import settings_flags
from arbitrary_quant.reference import dfsq_normalize, dfsq_universal_set
from arbitrary_quant.sr import sr_eval_pairs, sr_patches
from arbitrary_quant.sr_training import evaluate_psnr, train_edsr
from slimkit.bench import env_header, mean_std, time_fn
from slimkit.data import first_inputs
from slimkit.errors import BadInputError
from slimkit.io import save_table
from slimkit.progress import progress
from slimkit.train import TrainConfig

__all__ = ["METHODS", "DFSQTableSettings", "dfsq_table", "selection_study"]

#: table method name -> ``DFSQConfig.activation``
METHODS: dict[str, str] = {"dfsq": "subset", "minmax": "minmax", "percentile": "percentile"}
_LABELS = {"fp": "FP32", "bicubic": "bicubic", "dfsq": "DFSQ", "minmax": "MinMax", "percentile": "Percentile"}


def _positive(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInputError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class DFSQTableSettings:
    """Everything one table depends on (the defaults are the measured table; see the module doc)."""

    blocks: int = 4
    features: int = 32
    scale: int = 2
    train_steps: int = 600
    lr: float = 1e-3
    batch_size: int = 16
    patch_size: int = 48  # HR side; LR patches are patch_size / scale
    train_patches: int = 4096  # distinct seeded (position, flip, rotation) draws
    calibration_patches: int = 32  # the official 2 x 16
    calibration_batch: int = 16
    bits: tuple[int, ...] = (8, 6, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("dfsq", "minmax", "percentile")
    eval_max_size: int | None = None  # centre-crop the held-out HR images (None: whole images)
    selection_channels: int = 3  # per layer (two layers)
    selection_values: int = 1000
    selection_stride: int = 8  # 377 values -> 48 + 0 = 49
    selection_points: int = 4

    def __post_init__(self) -> None:
        for name in ("blocks", "features", "train_steps", "batch_size", "train_patches", "calibration_patches",
                     "calibration_batch", "selection_channels", "selection_values", "selection_stride"):  # fmt: skip
            _positive(name, getattr(self, name))
        _positive("selection_points", self.selection_points, 2)
        if self.scale not in SCALES:
            raise BadInputError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.patch_size < self.scale or self.patch_size % self.scale:
            raise BadInputError(f"patch_size must be a positive multiple of scale={self.scale}, got {self.patch_size}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise BadInputError(f"lr must be a number > 0, got {self.lr!r}")
        if self.eval_max_size is not None:
            _positive("eval_max_size", self.eval_max_size, 16 * self.scale)
        self.bits, self.seeds, self.methods = tuple(self.bits), tuple(self.seeds), tuple(self.methods)
        for label, values in (("bits", self.bits), ("seeds", self.seeds), ("methods", self.methods)):
            if not values:
                raise BadInputError(f"give at least one of {label}")
            if len(set(values)) != len(values):
                raise BadInputError(f"{label} repeats a value: {list(values)}")
        for b in self.bits:
            if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= MAX_BITS:
                raise BadInputError(f"bits must be 2..{MAX_BITS}, got {b!r}")
        for seed in self.seeds:
            _positive("every seed", seed, 0)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BadInputError(f"unknown method(s) {', '.join(map(str, unknown))}; known: {', '.join(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists), so the returned result equals its results.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def command(self, output: str = "OUT") -> str:
        """The CLI line that reproduces this table: one ``--flag`` per field, lists comma-joined."""
        return f"arbitrary-quant dfsq-table {settings_flags(self)} -o {output}"

    def python_command(self, output: str = "OUT") -> str:
        """The same run without the CLI, as one ``python -c`` line."""
        args = ", ".join(f"{k}={v!r}" for k, v in asdict(self).items())
        return (
            'OMP_NUM_THREADS=1 python -c "from pathlib import Path; '
            "from arbitrary_quant.dfsq_table import DFSQTableSettings, dfsq_table; "
            f"dfsq_table(DFSQTableSettings({args}), Path('{output}'))\""
        )


# --------------------------------------------------------------------------- one seed


def _train_fp(seed: int, s: DFSQTableSettings, workdir: Path) -> tuple[EDSR, dict[str, Any]]:
    """Train one FP EDSR on seeded training-image patches; returns it with its loss and wall time."""
    torch.manual_seed(seed)
    model = EDSR(scale=s.scale, n_resblocks=s.blocks, n_feats=s.features)
    data = sr_patches("train", s.scale, s.patch_size, s.train_patches, seed=seed)
    config = TrainConfig(
        output_dir=str(workdir / f"train_{seed}"), max_steps=s.train_steps, batch_size=s.batch_size, lr=s.lr,
        warmup_steps=s.train_steps // 20, seed=seed, cpu=True, progress=False, log_every=max(1, s.train_steps // 10),
    )  # fmt: skip
    start = time.perf_counter()
    result = train_edsr(model, data, config)
    info = {"train_s": time.perf_counter() - start, "final_loss": result.final_loss,
            "first_loss": result.metrics[0]["loss"] if result.metrics else math.nan}  # fmt: skip
    return model.eval(), info


def _calibration_batches(seed: int, s: DFSQTableSettings) -> list[Tensor]:
    """LR patches of the training images at positions the training draw did not pick (own seed), no augmentation."""
    cal = sr_patches("train", s.scale, s.patch_size, s.calibration_patches, seed=seed + 10_000, augment=False)
    return list(first_inputs(cal).split(s.calibration_batch))


def _quantized_cell(
    model: EDSR, batches: list[Tensor], pairs: list[tuple[Tensor, Tensor]], method: str, bits: int, seed: int,
    scale: int,
) -> dict[str, Any]:  # fmt: skip
    q = copy.deepcopy(model)
    start = time.perf_counter()
    dfsq(q, batches, DFSQConfig(bits=bits, activation=METHODS[method], seed=seed))
    calib_s = time.perf_counter() - start
    start = time.perf_counter()
    score = evaluate_psnr(q, pairs, scale)
    return {**score, "calibrate_s": calib_s, "eval_s": time.perf_counter() - start}


# --------------------------------------------------------------------------- selection study


def _block_inputs(model: nn.Module, batches: list[Tensor], names: list[str]) -> dict[str, list[Tensor]]:
    """The FP inputs of the named convs on the calibration batches (forward hooks, no grad)."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            seen[name].append(inputs[0].detach().clone())

        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def selection_study(
    model: nn.Module, batches: list[Tensor], channels: int = 3, values: int = 1000, stride: int = 8, points: int = 4,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """K-means against exhaustive subset selection on real normalized activations (see the module doc).

    Per channel: wall time of each search (K-means: median of 5 after a warm-up), both SSEs and
    ``sse_ratio = kmeans / exhaustive`` (>= 1; 1 = K-means found the optimum). Medians over channels.
    """
    blocks = residual_block_convs(model)
    if not blocks:
        raise BadInputError("the selection study needs a model with residual blocks")
    names = list(blocks)[:2]  # the first block: signed input, then post-ReLU input
    captured = _block_inputs(model, batches, names)
    small = torch.unique(torch.cat([dfsq_universal_set()[::stride], torch.zeros(1)]))
    if not 1 <= points <= len(small):
        raise BadInputError(f"selection_points must be 1..{len(small)} (the small set's size), got {points}")
    gen = torch.Generator().manual_seed(seed)
    per_channel: list[dict[str, Any]] = []
    for name in names:
        inputs = captured[name]
        post = blocks[name] if blocks[name] is not None else all(bool((x >= 0).all()) for x in inputs)
        rows = torch.cat([dfsq_normalize(x, bool(post))[0].transpose(0, 1).reshape(x.shape[1], -1) for x in inputs], 1)
        live = [c for c in range(rows.shape[0]) if len(rows[c].unique()) > points]  # dead ReLU channels say nothing
        if not live:
            continue
        picks = sorted(
            {live[round(i * (len(live) - 1) / max(1, channels - 1))] for i in range(min(channels, len(live)))}
        )
        for c in picks:
            row = rows[c]
            v = row[torch.randperm(row.numel(), generator=gen)[:values]].contiguous()
            start = time.perf_counter()
            _, ex_sse = exhaustive_subset(v, small, points, include_zero=True)
            ex_s = time.perf_counter() - start
            timing = time_fn(functools.partial(kmeans_subset, v, small, points), warmup=1, repeats=5)
            km_sse = float(quantization_sse(v, kmeans_subset(v, small, points)).sum())
            ratio = km_sse / ex_sse if ex_sse > 0 else (1.0 if km_sse == 0 else math.inf)
            per_channel.append({"layer": name, "post_relu": bool(post), "channel": c, "values": int(v.numel()),
                                "kmeans_s": timing.median_s, "exhaustive_s": ex_s, "kmeans_sse": km_sse,
                                "exhaustive_sse": ex_sse, "sse_ratio": ratio})  # fmt: skip
    if not per_channel:
        raise BadInputError("no live channel to run the selection study on")
    return {
        "universal_size": len(small),
        "points": points,
        "subsets": math.comb(len(small), points),
        "full_set_subsets_4bit": float(math.comb(len(dfsq_universal_set()), 16)),
        "channels": per_channel,
        "median_kmeans_s": statistics.median(c["kmeans_s"] for c in per_channel),
        "median_exhaustive_s": statistics.median(c["exhaustive_s"] for c in per_channel),
        "median_sse_ratio": statistics.median(c["sse_ratio"] for c in per_channel),
        "max_sse_ratio": max(c["sse_ratio"] for c in per_channel),
        "median_speedup": statistics.median(c["exhaustive_s"] / c["kmeans_s"] for c in per_channel),
    }


# --------------------------------------------------------------------------- the table


def dfsq_table(
    settings: DFSQTableSettings | None = None, output: Path | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Train one FP EDSR per seed, quantize it per bit-width and method, score the held-out images.

    Returns ``rows`` (FP first, then per bit-width each method: PSNR / SSIM per seed, mean, std,
    ``gap_db``), ``runs`` (every cell with per-image scores and timings), ``train``, ``bicubic``,
    ``selection``, ``markdown``, ``command`` / ``python_command``, ``env`` and ``wall_s``. With
    ``output`` it writes ``results.json`` and ``table.md`` there, atomically.
    """
    s = settings or DFSQTableSettings()
    begin = time.perf_counter()
    pairs = sr_eval_pairs("test", s.scale, max_size=s.eval_max_size)
    bicubic = evaluate_psnr(nn.Upsample(scale_factor=s.scale, mode="bicubic", align_corners=False), pairs, s.scale)
    runs: list[dict[str, Any]] = []
    trained: list[dict[str, Any]] = []
    selection: dict[str, Any] = {}
    bar: Any = progress(total=len(s.seeds) * (2 + len(s.bits) * len(s.methods)), desc="dfsq table",
                        disable=not show_progress)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dfsq-table-") as tmp:
        for seed in s.seeds:
            model, info = _train_fp(seed, s, Path(tmp))
            trained.append({"seed": seed, **info})
            bar.update(1)
            batches = _calibration_batches(seed, s)
            start = time.perf_counter()
            runs.append({"seed": seed, "method": "fp", "bits": None, **evaluate_psnr(model, pairs, s.scale),
                         "calibrate_s": 0.0, "eval_s": time.perf_counter() - start})  # fmt: skip
            bar.update(1)
            if seed == s.seeds[0]:
                selection = selection_study(model, batches, s.selection_channels, s.selection_values,
                                            s.selection_stride, s.selection_points, seed)  # fmt: skip
            for bits in s.bits:
                for method in s.methods:
                    cell = _quantized_cell(model, batches, pairs, method, bits, seed, s.scale)
                    runs.append({"seed": seed, "method": method, "bits": bits, **cell})
                    bar.update(1)
    bar.close()
    rows = _rows(runs, s)
    result: dict[str, Any] = {
        "command": s.command(str(output) if output is not None else "OUT"),
        "python_command": s.python_command(str(output) if output is not None else "OUT"),
        "settings": s.to_dict(),
        "data": {"train": "sr_patches('train')", "eval": "sr_eval_pairs('test')", "images": len(pairs)},
        "env": env_header(device=torch.device("cpu")),
        "bicubic": {"psnr": bicubic["psnr"], "ssim": bicubic["ssim"]},
        "rows": rows,
        "train": trained,
        "runs": runs,
        "selection": selection,
        "wall_s": time.perf_counter() - begin,
    }
    result["markdown"] = _markdown(result, len(s.seeds))
    if output is not None:
        save_table(output, result)
    return result


def _rows(runs: list[dict[str, Any]], s: DFSQTableSettings) -> list[dict[str, Any]]:
    """FP row, then per bit-width one row per method; gaps are per seed ``method - FP`` (paired)."""
    fp = {r["seed"]: r for r in runs if r["method"] == "fp"}
    fp_mean, _ = mean_std([fp[seed]["psnr"] for seed in s.seeds])
    keys: list[tuple[str, int | None]] = [("fp", None)] + [(m, b) for b in s.bits for m in s.methods]
    rows = []
    for method, bits in keys:
        cells = [r for r in runs if r["method"] == method and r["bits"] == bits]
        psnrs, ssims = [c["psnr"] for c in cells], [c["ssim"] for c in cells]
        gaps = [c["psnr"] - fp[c["seed"]]["psnr"] for c in cells]
        psnr_mean, psnr_std = mean_std(psnrs)
        ssim_mean, ssim_std = mean_std(ssims)
        rows.append({"method": method, "bits": bits, "seeds": [c["seed"] for c in cells],
                     "psnr": psnrs, "psnr_mean": psnr_mean, "psnr_std": psnr_std,
                     "ssim": ssims, "ssim_mean": ssim_mean, "ssim_std": ssim_std,
                     "gap_db": gaps, "gap_mean": psnr_mean - fp_mean, "gap_std": mean_std(gaps)[1]})  # fmt: skip
    return rows


def _markdown(result: dict[str, Any], num_seeds: int) -> str:
    s = result["settings"]
    lines = [
        f"EDSR x{s['scale']} ({s['blocks']} blocks x {s['features']} features, {s['train_steps']} steps), "
        f"held-out images: {result['data']['images']}, Y-channel PSNR / SSIM, mean ± std over {num_seeds} seed(s). "
        f"Bicubic: {result['bicubic']['psnr']:.3f} dB / {result['bicubic']['ssim']:.4f}.",
        "",
        "| method | bits (W/A) | PSNR dB | SSIM | gap to FP dB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        bits = "32" if row["bits"] is None else f"{row['bits']}/{row['bits']}"
        gap = "-" if row["method"] == "fp" else f"{row['gap_mean']:+.3f} ± {row['gap_std']:.3f}"
        lines.append(f"| {_LABELS[row['method']]} | {bits} | {row['psnr_mean']:.3f} ± {row['psnr_std']:.3f} | "
                     f"{row['ssim_mean']:.4f} ± {row['ssim_std']:.4f} | {gap} |")  # fmt: skip
    sel = result["selection"]
    lines += [
        "",
        f"Subset selection, K-means vs exhaustive ({sel['universal_size']}-value universal subset, "
        f"{sel['points']} points incl. 0, C = {sel['subsets']} subsets; the full 377-value set at 4 bits "
        f"would be {sel['full_set_subsets_4bit']:.2e}):",
        "",
        "| layer | channel | values | K-means ms | exhaustive s | SSE ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in sel["channels"]:
        lines.append(f"| {c['layer']} | {c['channel']} | {c['values']} | {1e3 * c['kmeans_s']:.2f} | "
                     f"{c['exhaustive_s']:.2f} | {c['sse_ratio']:.4f} |")  # fmt: skip
    lines.append(f"| median | | | {1e3 * sel['median_kmeans_s']:.2f} | {sel['median_exhaustive_s']:.2f} | "
                 f"{sel['median_sse_ratio']:.4f} |")  # fmt: skip
    return "\n".join(lines)
