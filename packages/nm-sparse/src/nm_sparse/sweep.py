"""The accuracy sweep behind ``nm-sparse table``, with SpRe / Bi-Mask diagnostics.

Every method x pattern x seed is trained for the same number of steps on one offline data set
(``digits``, or the harder generated ``crops`` / ``cluttered-digits`` of :mod:`slimkit.datasets`),
top-1 on the held-out split (digits: its val split; the generated sets: their test split).
asp and unstructured follow the prune-after-training recipe (dense for the first half of the
steps, then one-shot pruning and fine-tuning with a fixed mask; each phase is its own run with
the same warm-up and cosine schedule, since pruning restarts the optimizer); the dynamic
methods (srste, spre, bimask, and transposable: Hubara et al.'s dynamic from-scratch variant,
Bi-Mask's comparison) train sparse from the first step, as in their papers.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nm_sparse.bimask import BiMaskLayer
from nm_sparse.checkpoints import ModelSpec
from nm_sparse.config import NMConfig
from nm_sparse.deploy import deploy
from nm_sparse.fitting import evaluate, fit
from nm_sparse.ops import nm_mask, permutation_scores
from nm_sparse.reference import to_gemm_matrix
from nm_sparse.sparsify import nm_layers
from slimkit.bench import env_header, mean_std
from slimkit.data import resolve_dataset
from slimkit.io import save_table
from slimkit.progress import progress
from slimkit.train import TrainConfig, train

__all__ = ["PRUNE_AFTER_DENSE", "accuracy_table", "bimask_backward_stats", "spre_deploy_stats"]

PRUNE_AFTER_DENSE = ("asp", "unstructured")


def _train_one(
    method: str, pattern: str, seed: int, spec: Any, train_set: Any, val_set: Any, opts: dict[str, Any], workdir: Path
) -> tuple[float, torch.nn.Module]:
    torch.manual_seed(seed)
    model = spec.build()
    steps = int(opts["steps"])

    def tc(name: str, max_steps: int) -> TrainConfig:
        return TrainConfig(
            output_dir=str(workdir / f"{method}_{pattern.replace(':', 'of')}_{seed}_{name}"),
            max_steps=max_steps,
            batch_size=int(opts["batch_size"]),
            lr=float(opts["lr"]),
            optimizer=str(opts["optimizer"]),
            weight_decay=float(opts["weight_decay"]),
            warmup_steps=int(opts["warmup_steps"]),
            seed=seed,
            progress=False,
            log_every=max_steps,
            cpu=opts["device"].type == "cpu",
        )

    config = NMConfig(
        method=method,
        pattern=pattern,
        seed=seed,
        bimask_interval=int(opts["bimask_interval"]),
        bimask_candidates=int(opts["bimask_candidates"]),
    )
    if method in PRUNE_AFTER_DENSE:
        dense_steps = steps // 2
        train(model, train_set, tc("dense", dense_steps))
        fit(model, train_set, tc("sparse", steps - dense_steps), config)
    else:
        fit(model, train_set, tc("train", steps), config)
    model.to(opts["device"])
    acc = evaluate(model, val_set, device=opts["device"])
    return acc, model.cpu()


def spre_deploy_stats(model: torch.nn.Module, x: Tensor) -> dict[str, Any]:
    """Eval-mode output gap between a SpRe-trained model and its deployed copy, plus the check."""
    model = model.eval()
    deployed = copy.deepcopy(model)
    report = deploy(deployed)
    with torch.no_grad():
        diff = float((model(x) - deployed(x)).abs().max())
        scale = float(model(x).abs().max())
    return {
        "max_abs_diff": diff,
        "output_max_abs": scale,
        "all_valid": report.check.all_valid,
        "max_nonzeros_per_group": max((layer.max_nonzeros_per_group for layer in report.check.layers), default=0),
        "layers": len(report.layers),
    }


@torch.no_grad()
def bimask_backward_stats(model: torch.nn.Module, candidates: int = 100, seed: int = 0) -> dict[str, Any]:
    """On trained weights: is M_b valid, and what share of forward-kept weights does it keep?

    ``share_identity`` scores the identity row order, ``share_layer`` the order the layer
    holds after training, ``share_search`` the best of ``candidates`` fresh random orders
    (official scoring, "kept").
    """
    gen = torch.Generator().manual_seed(seed)
    totals = {"forward_kept": 0.0, "identity": 0.0, "layer": 0.0, "search": 0.0}
    valid = True
    layers = 0
    for _, layer in nm_layers(model):
        if not isinstance(layer, BiMaskLayer):
            continue
        layers += 1
        n, m = layer.n, layer.m
        mat = to_gemm_matrix(layer.dense_weight.detach(), layer.layout)
        mask_f = nm_mask(mat, n, m)
        mask_b = to_gemm_matrix(layer.backward_mask(), layer.layout)
        perm = layer.current_perm
        per_col = mask_b[perm].reshape(mat.shape[0] // m, m, -1).sum(1)
        valid = valid and bool((per_col <= n).all()) and bool((mask_b <= mask_f).all())
        masked = mat.abs() * mask_f
        rows = mat.shape[0]
        rand = torch.stack([torch.randperm(rows, generator=gen) for _ in range(candidates)])
        scores = permutation_scores(masked, torch.cat([torch.arange(rows)[None], perm[None].cpu(), rand]), n, m)
        totals["forward_kept"] += float(mask_f.sum())
        totals["identity"] += float(scores[0])
        totals["layer"] += float(scores[1])
        totals["search"] += float(scores[2:].max())
    kept = max(totals["forward_kept"], 1.0)
    return {
        "layers": layers,
        "backward_mask_valid": valid,
        "candidates": candidates,
        "share_identity": totals["identity"] / kept,
        "share_layer": totals["layer"] / kept,
        "share_search": totals["search"] / kept,
    }



def accuracy_table(
    methods: list[str],
    patterns: list[str],
    seeds: list[int],
    model: str = "small_resnet",
    data: str = "digits",
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-2,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    bimask_interval: int = 50,
    bimask_candidates: int = 10,
    device: torch.device | None = None,
    output: Path | None = None,
) -> dict[str, Any]:
    """Train every (method, pattern, seed) on ``data``; mean ± std top-1 and SpRe/Bi-Mask diagnostics."""
    dev = device or torch.device("cpu")
    digits_small = data == "digits" and model.startswith("small_resnet")  # 8x8 grey digits, as in 0.1
    size, chans = (8, 1) if digits_small else (32, 3)
    eval_split = "val" if data == "digits" else "test"
    classes = getattr(resolve_dataset(data, "val", size, chans, seeds[0] if seeds else 0), "classes", None)
    spec = ModelSpec(model, len(classes) if classes else 10, chans, size)
    opts = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "bimask_interval": bimask_interval, "bimask_candidates": bimask_candidates,
        "device": dev,
    }  # fmt: skip
    jobs = [("dense", "-")] if "dense" in methods else []
    jobs += [(meth, pat) for pat in patterns for meth in methods if meth != "dense"]
    rows: list[dict[str, Any]] = []
    diagnostics: dict[str, list[dict[str, Any]]] = {"spre_deploy": [], "bimask_backward": []}
    bar: Any = progress(total=len(jobs) * len(seeds), desc="table")
    with tempfile.TemporaryDirectory(prefix="nm-sparse-table-") as tmp:
        for method, pattern in jobs:
            accs = []
            for seed in seeds:
                sets = (resolve_dataset(data, "train", spec.image_size, spec.in_chans, seed),
                        resolve_dataset(data, eval_split, spec.image_size, spec.in_chans, seed))  # fmt: skip
                acc, trained = _train_one(
                    method, "2:4" if pattern == "-" else pattern, seed, spec, *sets, opts, Path(tmp)
                )
                accs.append(acc)
                if method == "spre":
                    x = torch.stack([sets[1][i][0] for i in range(64)])
                    diagnostics["spre_deploy"].append(
                        {"pattern": pattern, "seed": seed, **spre_deploy_stats(trained, x)}
                    )
                if method == "bimask":
                    stats = bimask_backward_stats(trained, candidates=100, seed=seed)
                    diagnostics["bimask_backward"].append({"pattern": pattern, "seed": seed, **stats})
                bar.update(1)
            mean, std = mean_std(accs)
            rows.append({"method": method, "pattern": pattern, "top1_mean": mean, "top1_std": std, "top1": accs})
    bar.close()
    command = (
        f"nm-sparse table --methods {','.join(methods)} --patterns {','.join(patterns)} "
        f"--seeds {','.join(str(s) for s in seeds)} --model {model} --data {data} --steps {steps} --batch-size {batch_size} "
        f"--lr {lr} --optimizer {optimizer} --weight-decay {weight_decay} --warmup-steps {warmup_steps} "
        f"--bimask-interval {bimask_interval} --bimask-candidates {bimask_candidates}"
    )
    result: dict[str, Any] = {
        "command": command,
        "data": data,
        "eval_split": eval_split,
        "env": env_header(device=dev),
        "rows": rows,
        "diagnostics": diagnostics,
        "markdown": _markdown(rows, patterns, len(seeds), f"{data} ({eval_split})"),
    }
    if output is not None:
        save_table(output, result)
    return result


def _markdown(rows: list[dict[str, Any]], patterns: list[str], num_seeds: int, data: str = "digits") -> str:
    """Methods down, patterns across; cells 'mean ± std' in percent."""
    cells: dict[str, dict[str, str]] = {}
    for row in rows:
        text = f"{100 * row['top1_mean']:.2f} ± {100 * row['top1_std']:.2f}"
        if row["pattern"] == "-":
            cells.setdefault(row["method"], {p: text for p in patterns})
        else:
            cells.setdefault(row["method"], {})[row["pattern"]] = text
    head = f"| method | {' | '.join(patterns)} |"
    rule = "|" + " --- |" * (len(patterns) + 1)
    body = [f"| {meth} | " + " | ".join(vals.get(p, "") for p in patterns) + " |" for meth, vals in cells.items()]
    return "\n".join([f"{data} top-1 (%), mean ± std over {num_seeds} seed(s)", "", head, rule, *body])
