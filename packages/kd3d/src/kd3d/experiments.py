"""The README's comparison: a teacher, the S student from scratch and with each distillation method, over seeds.

CPU-sized on purpose (the paper trains for days on 8 V100s): the ``cpu`` grid (38.4 m square, 0.3 m voxels,
a 16 x 16 BEV map), the presets' widths at reduced depth (``CPU_ENCODER_LAYERS`` / ``CPU_BEV_LAYERS``),
simulated scenes with the objects inside that square. One teacher (seed 0) serves every student; each
student method runs once per seed. Results: ``results.json`` and ``table.md`` (``slimkit.io.save_table``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kd3d.config import KD_METHODS, DetectorConfig, preset
from kd3d.data import KittiScenes
from kd3d.detector import build_detector
from kd3d.flops import count_flops, count_params
from kd3d.simulate import SimConfig, write_splits
from kd3d.training import FitSettings, evaluate, fit, save_detector
from slimkit.bench import env_header, mean_std
from slimkit.io import save_table

__all__ = ["CPU_BEV_LAYERS", "CPU_ENCODER_LAYERS", "CPU_GRID", "cpu_preset", "cpu_sim", "run_table"]

CPU_GRID: dict[str, Any] = {"point_range": [-19.2, -19.2, -3.0, 19.2, 19.2, 1.8], "voxel_size": [0.3, 0.3, 0.2]}
CPU_ENCODER_LAYERS = [1, 1, 2, 2, 2, 1]
CPU_BEV_LAYERS = [2, 2]


def cpu_preset(name: str) -> DetectorConfig:
    """A preset's widths on the CPU grid at reduced depth."""
    return preset(name, **CPU_GRID, encoder_layers=list(CPU_ENCODER_LAYERS), bev_layers=list(CPU_BEV_LAYERS))


def cpu_sim() -> SimConfig:
    """Scenes whose objects lie inside the CPU grid."""
    return SimConfig(area=18.0, objects={"Car": [2, 6], "Pedestrian": [1, 3], "Cyclist": [1, 2]})


def run_table(output: str | Path, train_scenes: int = 64, val_scenes: int = 24, teacher_steps: int = 300,
              student_steps: int = 300, seeds: tuple[int, ...] = (0, 1, 2), methods: tuple[str, ...] = ("none", "logit", "feature", "sparsekd", "rdd"),
              student: str = "S", progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Simulate, train the teacher, train the student per method and seed, evaluate on the held-out split."""
    out = Path(output)
    data = write_splits(out / "data", train_scenes, val_scenes, seed=0, cfg=cpu_sim())
    t_cfg, s_cfg = cpu_preset("teacher"), cpu_preset(student)
    train_set = KittiScenes(out / "data" / "train", t_cfg.classes)
    val_set = KittiScenes(out / "data" / "val", t_cfg.classes)
    settings = FitSettings(steps=teacher_steps, batch_size=2, progress=progress, seed=0)
    teacher = build_detector(t_cfg, seed=0)
    fit(teacher, train_set, out / "runs" / "teacher", settings)
    save_detector(out / "teacher", teacher)
    rows: list[dict[str, Any]] = [{"model": "teacher", "method": "-", "seed": 0, **_scores(evaluate(teacher, val_set))}]
    pts = torch.cat([torch.zeros(len(val_set[0]["points"]), 1), val_set[0]["points"]], dim=1)
    ft, fs = count_flops(teacher, pts), count_flops(build_detector(s_cfg, seed=0), pts)
    ratios = {"flops_ratio": fs.total / ft.total, "params_ratio": count_params(build_detector(s_cfg)) / count_params(teacher)}
    settings_row = {"train_scenes": train_scenes, "val_scenes": val_scenes, "teacher_steps": teacher_steps,
                    "student_steps": student_steps, "seeds": list(seeds), "grid": CPU_GRID}  # fmt: skip
    result: dict[str, Any] = {}
    for seed in seeds:  # seed-major: after each seed the table covers every method (written as it grows)
        for method in methods:
            model = build_detector(s_cfg, seed=seed)
            kd = KD_METHODS[method]() if method != "none" else None
            st = FitSettings(steps=student_steps, batch_size=2, progress=progress, seed=seed)
            fit(model, train_set, out / "runs" / f"{student}-{method}-{seed}", st, teacher=teacher, kd=kd)
            rows.append({"model": student, "method": method, "seed": seed, **_scores(evaluate(model, val_set))})
            summary = _summarise(rows, methods, student)
            result = {"env": env_header(), "data": data, "rows": rows, "summary": summary, "ratios": ratios,
                      "settings": settings_row, "markdown": _markdown(summary, ratios, student)}  # fmt: skip
            save_table(out, result)
    return result


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ("mAP", "NDS", "mATE", "bev_AP_R40")}


def _summarise(rows: list[dict[str, Any]], methods: tuple[str, ...], student: str) -> list[dict[str, Any]]:
    out = [{"model": "teacher", "method": "-", **{k: rows[0][k] for k in ("mAP", "NDS", "bev_AP_R40")}, "n": 1}]
    for method in methods:
        these = [r for r in rows if r["model"] == student and r["method"] == method]
        if not these:
            continue
        row: dict[str, Any] = {"model": student, "method": method, "n": len(these)}
        for key in ("mAP", "NDS", "bev_AP_R40"):
            mean, std = mean_std([r[key] for r in these])
            row[key], row[f"{key}_std"] = mean, std
        out.append(row)
    return out


def _markdown(summary: list[dict[str, Any]], ratios: dict[str, float], student: str) -> str:
    lines = ["| model | KD | mAP | NDS-lite | BEV AP R40 | seeds |", "|---|---|---|---|---|---|"]
    for r in summary:
        cells = [f"{100 * r[k]:.1f} ± {100 * r.get(k + '_std', 0.0):.1f}" for k in ("mAP", "NDS", "bev_AP_R40")]
        lines.append(f"| {r['model']} | {r['method']} | {' | '.join(cells)} | {r['n']} |")
    lines.append(f"\n{student} / teacher: FLOPs {100 * ratios['flops_ratio']:.1f} %, parameters {100 * ratios['params_ratio']:.1f} %")
    return "\n".join(lines) + "\n"
