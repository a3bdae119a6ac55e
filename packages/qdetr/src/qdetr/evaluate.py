"""DETR outputs to detections, and COCO box AP with pycocotools.

Why pycocotools and not a re-implementation: AP numbers are only comparable with papers when they
come from the reference protocol (101-point interpolated precision, IoU 0.50:0.95, area ranges,
crowd handling). The detections are fed to it from memory: no result file, no ``loadRes`` (which
fails on an empty list), and its prints are silenced.

* :func:`postprocess`: what Hugging Face's ``post_process_object_detection`` does with a threshold of
  0: softmax over the classes, drop the no-object column, keep each query's best class and score,
  boxes to absolute ``xyxy`` in each image's original ``(h, w)``.
* :func:`coco_eval`: detections (one dict per image) -> ``AP, AP50, AP75, APs, APm, APl, AR100``.
  Metrics are in ``[0, 1]``; ``-1.0`` is pycocotools' "no ground truth in that range" (say no large
  objects, so ``APl``). No detections at all scores 0 wherever ground truth exists.
* :func:`evaluate_model`: the two above over a :class:`~qdetr.data.CocoDetectionSet`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from torch.utils.data import DataLoader

from qdetr.boxes import cxcywh_to_xyxy, xyxy_to_xywh
from qdetr.data import CocoDetectionSet, collate
from slimkit.errors import BadInputError

__all__ = ["METRICS", "coco_eval", "evaluate_model", "postprocess"]

#: The metrics :func:`coco_eval` returns, and their index in ``COCOeval.stats``.
METRICS: dict[str, int] = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def postprocess(
    logits: Tensor,
    pred_boxes: Tensor,
    sizes: Sequence[Sequence[int]] | Tensor,
    threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """DETR outputs -> one ``{"scores" [n], "labels" [n], "boxes" [n, 4] absolute xyxy}`` per image.

    ``logits`` is ``[B, Q, K + 1]`` (the last class is no-object), ``pred_boxes`` ``[B, Q, 4]``
    normalised cxcywh, ``sizes`` ``B`` pairs ``(h, w)`` in pixels. Queries scoring below
    ``threshold`` are dropped (0 keeps all ``Q``, what COCO evaluation wants).
    """
    if logits.dim() != 3 or logits.shape[-1] < 2:
        raise BadInputError(f"logits must be [B, Q, K + 1] with K >= 1, got shape {tuple(logits.shape)}")
    if tuple(pred_boxes.shape) != (*logits.shape[:2], 4):
        raise BadInputError(
            f"pred_boxes must be [B, Q, 4] = {[*logits.shape[:2], 4]}, got shape {tuple(pred_boxes.shape)}"
        )
    hw = torch.as_tensor(sizes, dtype=torch.float32, device=logits.device)
    if tuple(hw.shape) != (logits.shape[0], 2):
        raise BadInputError(f"sizes must hold one (h, w) per image ({logits.shape[0]}), got shape {tuple(hw.shape)}")
    probs = logits.float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    scale = torch.stack((hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]), dim=-1)[:, None, :]
    boxes = cxcywh_to_xyxy(pred_boxes.float()) * scale
    out = []
    for b in range(logits.shape[0]):
        keep = scores[b] >= threshold
        out.append({"scores": scores[b][keep], "labels": labels[b][keep], "boxes": boxes[b][keep]})
    return out


def _as_list(values: Any) -> list[Any]:
    return values.detach().cpu().tolist() if isinstance(values, Tensor) else list(values)


def _results(
    dataset: CocoDetectionSet,
    detections: Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]],
    label_to_category: Mapping[int, int],
) -> list[dict[str, Any]]:
    """COCO result records (what ``loadRes`` would build) from per-image detection dicts."""
    if isinstance(detections, Mapping):
        unknown = sorted(set(detections) - set(dataset.image_ids))
        if unknown:
            raise BadInputError(f"detections for image id(s) {unknown[:5]} that are not in {dataset.folder}")
        pairs = list(detections.items())
    else:
        if len(detections) != len(dataset):
            raise BadInputError(f"got detections for {len(detections)} images, the dataset has {len(dataset)}")
        pairs = list(zip(dataset.image_ids, detections))
    records: list[dict[str, Any]] = []
    for image_id, det in pairs:
        missing = {"scores", "labels", "boxes"} - set(det)
        if missing:
            raise BadInputError(f"detections of image {image_id} lack {', '.join(sorted(missing))}")
        boxes = det["boxes"]
        xyxy = boxes.detach().cpu().double() if isinstance(boxes, Tensor) else torch.tensor(boxes, dtype=torch.float64)
        xywh = xyxy_to_xywh(xyxy.reshape(-1, 4)).tolist()
        scores, labels = _as_list(det["scores"]), _as_list(det["labels"])
        if not len(scores) == len(labels) == len(xywh):
            raise BadInputError(
                f"detections of image {image_id}: {len(scores)} scores, {len(labels)} labels, {len(xywh)} boxes"
            )
        for box, score, label in zip(xywh, scores, labels):
            category = label_to_category.get(int(label))
            if category is None:
                raise BadInputError(f"detections of image {image_id} hold label {label}, which maps to no category")
            records.append(
                {
                    "id": len(records) + 1,
                    "image_id": int(image_id),
                    "category_id": int(category),
                    "bbox": box,
                    "score": float(score),
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return records


def coco_eval(
    dataset: CocoDetectionSet,
    detections: Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]],
    label_to_category: Mapping[int, int] | None = None,
) -> dict[str, float]:
    """pycocotools box metrics of ``detections`` against ``dataset``'s ground truth.

    ``detections``: one ``{"scores", "labels", "boxes" (absolute xyxy in the original image)}`` per
    image, in ``dataset.image_ids`` order, or a mapping ``image_id -> dict``. ``labels`` are model
    labels, mapped to category ids by ``label_to_category`` (default: the dataset's). Returns
    :data:`METRICS`' keys; an empty set of detections scores 0 (no error).
    """
    mapping = dataset.label_to_category if label_to_category is None else label_to_category
    gt = dataset.coco
    dt = COCO()
    dt.dataset = {
        "info": {},
        "licenses": [],
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": _results(dataset, detections, mapping),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = list(dataset.image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(evaluator.stats[i]) for name, i in METRICS.items()}


def _outputs(out: Any) -> tuple[Tensor, Tensor]:
    """``(logits, pred_boxes)`` from a model output object or dict."""
    if isinstance(out, Mapping):
        logits, boxes = out.get("logits"), out.get("pred_boxes")
    else:
        logits, boxes = getattr(out, "logits", None), getattr(out, "pred_boxes", None)
    if not isinstance(logits, Tensor) or not isinstance(boxes, Tensor):
        raise BadInputError(f"the model must return .logits and .pred_boxes, got {type(out).__name__}")
    return logits, boxes


def _takes_mask(model: nn.Module) -> bool:
    params = inspect.signature(model.forward).parameters
    return "pixel_mask" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def evaluate_model(
    model: nn.Module,
    dataset: CocoDetectionSet,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """COCO box metrics of ``model`` on ``dataset`` (in eval mode, without gradients; the mode is restored).

    ``model`` is a Hugging Face ``DetrForObjectDetection`` or anything called as
    ``model(pixel_values=..., pixel_mask=...)`` (the mask only when its ``forward`` takes one) that
    returns ``.logits`` / ``.pred_boxes`` (or a dict of them). ``dataset`` must be built with
    ``train=False``: its random flips would move the boxes.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dataset.train:
        raise BadInputError("evaluate a CocoDetectionSet built with train=False (random flips would move the boxes)")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    with_mask = _takes_mask(model)
    was_training = model.training
    model.eval()
    detections: list[dict[str, Tensor]] = []
    try:
        with torch.no_grad():
            for batch in loader:
                inputs = {"pixel_values": batch["pixel_values"].to(device)}
                if with_mask:
                    inputs["pixel_mask"] = batch["pixel_mask"].to(device)
                logits, boxes = _outputs(model(**inputs))
                sizes = torch.stack([t["orig_size"] for t in batch["labels"]])
                detections.extend(
                    {k: v.cpu() for k, v in det.items()} for det in postprocess(logits, boxes, sizes.to(logits.device))
                )
    finally:
        model.train(was_training)
    return coco_eval(dataset, detections)
