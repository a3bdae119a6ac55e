"""The demo: simulate a few scenes, train a tiny teacher, distil a narrower student with RDD, score both, draw one.

Sized to finish in about a minute on a 2-core CPU; the numbers show the pipeline works end to end, not
RDD's gain (see the README's table for the CPU-sized comparison).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kd3d.config import RDDConfig, check_student_fits
from kd3d.data import KittiScenes
from kd3d.detector import build_detector
from kd3d.experiments import cpu_preset, cpu_sim
from kd3d.flops import count_flops, count_params
from kd3d.simulate import write_splits
from kd3d.training import FitSettings, evaluate, fit, predict, save_detector
from kd3d.visualize import bev_png
from slimkit.train import clear_run

__all__ = ["run"]


def run(output: str | Path, steps: int = 30, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Demo in ``output`` (a folder the caller claimed): data/, teacher/, student/, bev.png, the scores."""
    out = Path(output)
    data = write_splits(out / "data", 6, 2, seed=seed, cfg=cpu_sim())
    layers, bev = [1, 1, 1, 1, 1, 1], [1, 1]  # one conv per stage: a demo, not a benchmark
    t_cfg = replace(cpu_preset("XS"), encoder_layers=layers, bev_layers=bev, preset="teacher-demo")
    s_cfg = replace(cpu_preset("XXS"), encoder_layers=layers, bev_layers=bev, preset="student-demo")
    check_student_fits(s_cfg, t_cfg)
    train_set = KittiScenes(out / "data" / "train", t_cfg.classes)
    val_set = KittiScenes(out / "data" / "val", t_cfg.classes)
    teacher, student = build_detector(t_cfg, seed=seed), build_detector(s_cfg, seed=seed + 1)
    for run_dir in ("runs/teacher", "runs/student"):
        clear_run(out / run_dir)
    fit(teacher, train_set, out / "runs" / "teacher", FitSettings(steps=steps, progress=progress, seed=seed))
    fit(student, train_set, out / "runs" / "student", FitSettings(steps=steps, progress=progress, seed=seed),
        teacher=teacher, kd=RDDConfig())  # fmt: skip
    save_detector(out / "teacher", teacher)
    save_detector(out / "student", student)
    preds, gts = predict(student, val_set)
    bev_png(out / "bev.png", val_set[0]["points"].numpy(), gts[0]["boxes"], preds[0], s_cfg.point_range,
            "demo student (RDD) on a held-out scene", s_cfg.classes)  # fmt: skip
    probe = torch.cat([torch.zeros(len(val_set[0]["points"]), 1), val_set[0]["points"]], dim=1)
    return {
        "output": str(out), "data": data, "teacher": evaluate(teacher, val_set), "student": evaluate(student, val_set),
        "flops_ratio": count_flops(student, probe).total / count_flops(teacher, probe).total,
        "params_ratio": count_params(student) / count_params(teacher), "bev_png": str(out / "bev.png"),
        "what": f"{steps} steps each on 6 simulated scenes; scored on 2 held-out scenes",
    }  # fmt: skip
