"""``qdetr demo``: the whole workflow in CPU minutes on generated shapes.

Writes a small shapes set (train / val), trains the tiny FP DETR (the teacher), then a 4-4-8
Q-DETR student from it in the paper's two stages with DA and DRD, and scores both with
pycocotools on the held-out split. The printed table is the FP and 4-bit AP / AP50.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from qdetr.checkpoints import save_model_folder
from qdetr.config import DRDConfig, QDetrConfig
from qdetr.data import CocoDetectionSet, collate, make_shapes_splits
from qdetr.evaluate import evaluate_model
from qdetr.models import tiny_detr
from qdetr.training import FitSettings, fit
from slimkit.io import config_to_dict, save_json
from slimkit.train import clear_run

__all__ = ["run"]


def run(out: Path, steps: int = 300, seed: int = 0, n_train: int = 64, n_val: int = 24, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out`` (data/, fp/, qdetr/, result.json); returns the summary (``what``,
    ``figure``, ``files`` for ``make demo``'s table, and both models' metrics)."""
    for run_dir in ("fp", "qdetr/stage1", "qdetr/stage2"):  # the demo owns its folder: start afresh
        clear_run(out / run_dir)
    data = make_shapes_splits(out / "data", n_train, n_val, seed)
    train_set = CocoDetectionSet(out / "data" / "train", train=True)
    val_set = CocoDetectionSet(out / "data" / "val")
    torch.manual_seed(seed)
    teacher = tiny_detr(train_set.num_labels)
    settings = FitSettings(steps=steps, backbone_steps=0, batch_size=8, seed=seed, progress=progress)
    fit(teacher, train_set, "fp", out / "fp", settings)
    fp_metrics = evaluate_model(teacher, val_set)
    categories = train_set.label_categories  # what each label index stands for, recorded in both model folders
    save_model_folder(out / "fp" / "model", teacher, None, {"val": fp_metrics}, categories=categories)
    student = copy.deepcopy(teacher)
    quant, drd = QDetrConfig(), DRDConfig()
    q_settings = FitSettings(steps=max(2, steps // 2), backbone_steps=max(1, steps // 6), batch_size=8, seed=seed,
                             progress=progress)  # fmt: skip
    calibration = collate([train_set[i] for i in range(min(8, len(train_set)))])["pixel_values"]
    fit(student, train_set, "qdetr", out / "qdetr", q_settings, quant, teacher, drd, calibration)
    q_metrics = evaluate_model(student, val_set)
    save_model_folder(out / "qdetr" / "model", student, quant, {"val": q_metrics}, categories=categories)
    figure = (f"val AP50 FP {100 * fp_metrics['AP50']:.1f}, Q-DETR 4-4-8 {100 * q_metrics['AP50']:.1f} "
              f"(AP {100 * fp_metrics['AP']:.1f} / {100 * q_metrics['AP']:.1f})")  # fmt: skip
    summary = {
        "what": f"tiny DETR on {n_train} generated shapes images; FP {steps} steps, then 4-4-8 Q-DETR (DA + DRD)",
        "figure": figure, "files": [str(out / "fp" / "model"), str(out / "qdetr" / "model"), str(out / "result.json")],
        "data": data, "fp": fp_metrics, "qdetr": q_metrics, "quant": config_to_dict(quant), "drd": config_to_dict(drd),
        "steps": {"fp": steps, "qdetr": q_settings.steps, "backbone": q_settings.backbone_steps},
    }  # fmt: skip
    save_json(out / "result.json", summary)
    return summary
