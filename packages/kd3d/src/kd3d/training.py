"""Training through :func:`slimkit.train.train` (accelerate, exact resume, checkpoints), evaluation, model folders.

``fit(model, scenes, settings, teacher=None, kd=None)`` trains a detector on a :class:`kd3d.data.KittiScenes`
with CenterPoint's loss, plus a distillation term when a teacher and a KD config are given (the teacher is
frozen; the student's adapter, if any, trains with it). ``evaluate`` scores a model on a scene folder with
the nuScenes-style and KITTI-style metrics of :mod:`kd3d.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd3d.config import DetectorConfig, KDConfig
from kd3d.data import KittiScenes, collate
from kd3d.detector import CenterPointVoxel, build_detector
from kd3d.distillation import ADAPTER_NAME, DistillLoss, detach, distill
from kd3d.metrics import kitti_ap, nuscenes_metrics
from kd3d.targets import build_targets, decode, detection_loss
from slimkit.errors import BadInputError
from slimkit.io import (
    config_from_dict,
    config_to_dict,
    load_into,
    load_model_files,
    save_json,
    save_model,
    save_state_dict,
)
from slimkit.train import TrainConfig, TrainResult, train

__all__ = ["FitSettings", "evaluate", "fit", "load_detector", "make_loss", "predict", "save_detector"]

LossFn = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, float]]]


@dataclasses.dataclass
class FitSettings:
    """AdamW (weight decay 0.01 as RDD), cosine schedule with warm-up, gradient clip 10 (SparseKD)."""

    steps: int = 200
    batch_size: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    max_grad_norm: float = 10.0
    checkpoint_every: int = 0
    seed: int = 0
    cpu: bool = True
    progress: bool = True
    resume: str | None = None

    def train_config(self, output_dir: Path) -> TrainConfig:
        return TrainConfig(
            output_dir=str(output_dir), max_steps=self.steps, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, warmup_steps=min(self.warmup_steps, self.steps), scheduler="cosine",
            max_grad_norm=self.max_grad_norm, checkpoint_every=self.checkpoint_every, seed=self.seed, cpu=self.cpu,
            progress=self.progress, resume_from=self.resume, log_every=max(1, self.steps // 20),
        )  # fmt: skip


def make_loss(config: DetectorConfig, kd: DistillLoss | None = None) -> LossFn:
    """``loss_fn(model, batch)`` for :func:`slimkit.train.train`: CenterPoint's loss (+ the KD term)."""

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        points = batch["points"].to(device)
        out = model(points, batch["batch_size"])
        targets = build_targets(batch["boxes"], batch["labels"], config)
        loss, metrics = detection_loss(out, targets, config)
        if kd is not None:
            t_out = kd.teacher(points, batch["batch_size"])
            kd_loss, kd_metrics = kd(out, t_out, targets)
            loss = loss + kd_loss
            metrics = {**metrics, **kd_metrics, "loss_kd": float(kd_loss.detach())}
        return loss, metrics

    return loss_fn


def fit(
    model: CenterPointVoxel, scenes: KittiScenes, output_dir: str | Path, settings: FitSettings,
    teacher: CenterPointVoxel | None = None, kd: KDConfig | None = None,
) -> TrainResult:  # fmt: skip
    """Train ``model`` in place (with ``kd`` from ``teacher`` when both are given); the adapter is removed at the end."""
    loss_module = None
    if kd is not None:
        if teacher is None:
            raise BadInputError(f"{type(kd).__name__} distils from a teacher; give one")
        loss_module = distill(model, teacher, kd)
    try:
        return train(model, scenes, settings.train_config(Path(output_dir)), loss_fn=make_loss(model.config, loss_module),
                     collate_fn=collate)  # fmt: skip
    finally:
        detach(model)


@torch.no_grad()
def predict(model: CenterPointVoxel, scenes: KittiScenes, batch_size: int = 4, device: torch.device | None = None,
            nms_iou: float | None = None, progress: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Decoded predictions and ground truths of every scene (eval mode restored afterwards); the model is moved
    to ``device`` when one is given (else it runs where its parameters are)."""
    was = model.training
    model.eval()
    device = device or next(model.parameters()).device
    model.to(device)
    preds, gts = [], []
    loader = DataLoader(scenes, batch_size=batch_size, shuffle=False, collate_fn=collate)
    batches = loader if progress is None else progress(loader, desc="eval")
    try:
        for batch in batches:
            out = model(batch["points"].to(device), batch["batch_size"])
            preds.extend(decode(out, model.config, nms_iou=nms_iou))
            for boxes, labels in zip(batch["boxes"], batch["labels"], strict=True):
                gts.append({"boxes": boxes.numpy().astype(np.float64), "labels": labels.numpy()})
    finally:
        model.train(was)
    return preds, gts


def _in_range(items: list[dict[str, Any]], config: DetectorConfig) -> list[dict[str, Any]]:
    r = config.point_range
    out = []
    for item in items:
        b = np.asarray(item["boxes"]).reshape(-1, 7)
        keep = (b[:, 0] >= r[0]) & (b[:, 0] < r[3]) & (b[:, 1] >= r[1]) & (b[:, 1] < r[4])
        out.append({k: (np.asarray(v)[keep] if k in ("boxes", "labels", "scores") else v) for k, v in item.items()})
    return out


def evaluate(model: CenterPointVoxel, scenes: KittiScenes, batch_size: int = 4, device: torch.device | None = None,
             progress: Any = None) -> dict[str, Any]:  # fmt: skip
    """nuScenes-style mAP / NDS-lite / TP errors and KITTI-style BEV and 3D AP|R40 (ground truth inside the grid)."""
    preds, gts = predict(model, scenes, batch_size, device, progress=progress)
    gts = _in_range(gts, model.config)
    classes = model.config.classes
    nus = nuscenes_metrics(preds, gts, classes)
    bev, box3d = kitti_ap(preds, gts, classes, "bev"), kitti_ap(preds, gts, classes, "3d")
    return {"mAP": nus["mAP"], "NDS": nus["NDS"], "mATE": nus["mATE"], "mASE": nus["mASE"], "mAOE": nus["mAOE"],
            "bev_AP_R40": bev["mAP"], "3d_AP_R40": box3d["mAP"], "classes": nus["classes"], "bev_classes": bev["classes"],
            "3d_classes": box3d["classes"], "scenes": len(scenes)}  # fmt: skip


def save_detector(folder: str | Path, model: CenterPointVoxel, extra: dict[str, Any] | None = None) -> Path:
    """``folder/model.safetensors`` + ``config.json`` (the detector config; adapters are not saved)."""
    if ADAPTER_NAME not in model._modules:
        return save_model(folder, model, model.config, {"kind": "kd3d detector", **(extra or {})})
    out = Path(folder)  # a student mid-distillation: its adapter is training-only, left out
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": config_to_dict(model.config), "kind": "kd3d detector", **(extra or {})}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(ADAPTER_NAME + ".")}
    save_state_dict(out / "model.safetensors", state, meta)
    save_json(out / "config.json", meta)
    return out


def load_detector(folder: str | Path, what: str = "model folder") -> tuple[CenterPointVoxel, dict[str, Any]]:
    """A detector written by :func:`save_detector` and its ``config.json``."""
    d = Path(folder)
    if not d.exists():
        raise BadInputError(f"{what} not found: {d}")
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise BadInputError(f"{what} {d} is not a kd3d model folder (no config.json / model.safetensors)")
    state, meta = load_model_files(d)
    if meta.get("kind") != "kd3d detector" or not isinstance(meta.get("config"), dict):
        raise BadInputError(f"{what} {d} is not a kd3d model folder (config.json kind {meta.get('kind')!r})")
    config = config_from_dict(DetectorConfig, meta["config"])
    model = build_detector(config)
    load_into(model, state)
    return model, meta
