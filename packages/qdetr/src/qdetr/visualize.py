"""Pictures of a quantized DETR: the decoder queries before and after distribution alignment, and detections.

* :func:`query_distribution_png`: the paper's figure of the cross-attention queries. Histograms
  of the values of one decoder layer's cross-attention queries (``encoder_attn.q_proj``'s output)
  in the FP model, in the quantized model before distribution alignment (DA), and after it (the
  output of :class:`~qdetr.attention.DistributionAlignment`, the tensor the query quantizer
  sees). Captured with forward hooks in one eval forward of each model; returns each curve's
  mean and standard deviation.
* :func:`detections_png`: a grid of images of a COCO folder with the model's boxes above a score
  threshold (red, with class and score) and the ground truth (green, dashed).

Both render with Agg through :func:`slimkit.plot.save_png` (atomic; nothing is written when a
check fails), leave the models' train/eval mode as it was and change no model state.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qdetr.attention import QuantAttention
from qdetr.boxes import cxcywh_to_xyxy
from qdetr.data import IMAGENET_MEAN, IMAGENET_STD, CocoDetectionSet, collate
from qdetr.evaluate import postprocess
from slimkit.errors import BadInputError
from slimkit.paths import check_output_file
from slimkit.plot import save_png
from slimkit.quant import LSQQuantizer

__all__ = ["CURVES", "check_query_models", "detections_png", "query_distribution_png"]

#: The curves of :func:`query_distribution_png`, in drawing order, with their legend labels.
CURVES: dict[str, str] = {
    "fp": "full precision",
    "quantized": "quantized, before DA",
    "aligned": "quantized, after DA",
}
_COLOURS = {"fp": "tab:blue", "quantized": "tab:orange", "aligned": "tab:green"}
_DECODER_LAYER = re.compile(r"(^|\.)decoder\.layers\.\d+$")
_BINS = 80
_TAIL = 0.001  # the histogram range leaves out this fraction of the pooled values at each end


# --------------------------------------------------------------------------- query distributions


def _decoder_layers(model: nn.Module, what: str) -> list[nn.Module]:
    layers = [m for n, m in model.named_modules() if _DECODER_LAYER.search(n) and hasattr(m, "encoder_attn")]
    if not layers:
        raise BadInputError(f"{what} has no DETR decoder layers with a cross-attention (encoder_attn)")
    return layers


def check_query_models(fp_model: nn.Module, quantized_model: nn.Module, layer: int = -1) -> int:
    """Check the pair :func:`query_distribution_png` compares; returns the decoder layer's index (``-1`` resolved).

    Refused (one-line :class:`BadInputError`): a quantized ``fp_model``, an unquantized
    ``quantized_model``, a different number of decoder layers, ``layer`` out of range, and a
    quantized model whose quantizers were never calibrated (its forward would initialise them).
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise BadInputError(f"layer must be an integer decoder layer index, got {layer!r}")
    fp_layers = _decoder_layers(fp_model, "the FP model")
    q_layers = _decoder_layers(quantized_model, "the quantized model")
    if len(fp_layers) != len(q_layers):
        raise BadInputError(f"the FP model has {len(fp_layers)} decoder layers, the quantized one {len(q_layers)}")
    if not -len(q_layers) <= layer < len(q_layers):
        raise BadInputError(f"layer must be in [{-len(q_layers)}, {len(q_layers) - 1}], got {layer}")
    index = layer % len(q_layers)
    if isinstance(fp_layers[index].encoder_attn, QuantAttention):
        raise BadInputError("the FP model is quantized; compare the quantized model with its full-precision teacher")
    if not isinstance(q_layers[index].encoder_attn, QuantAttention):
        raise BadInputError("the quantized model's decoder cross-attention is not quantized (qdetr.quantize it first)")
    if not all(bool(q.initialized) for q in quantized_model.modules() if isinstance(q, LSQQuantizer)):
        raise BadInputError("the quantized model is not calibrated: run qdetr.calibrate on it first")
    return index


def _stats(values: Tensor) -> dict[str, float]:
    v = values.detach().double().reshape(-1)
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=False)), "count": int(v.numel())}


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def _capture(model: nn.Module, pixel_values: Tensor, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The outputs of ``modules`` (name -> module) in one eval forward of ``model``; the mode is restored."""
    found: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def save(_module: nn.Module, _inputs: Any, output: Any) -> None:
            found[name] = (output[0] if isinstance(output, tuple) else output).detach().float().cpu()

        return save

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was = model.training
    model.eval()
    try:
        model(pixel_values=pixel_values.to(_device(model)))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    missing = sorted(set(modules) - set(found))
    if missing:
        raise BadInputError(f"the forward pass never ran {', '.join(missing)}")
    return found


def query_distribution_png(
    fp_model: nn.Module,
    quantized_model: nn.Module,
    pixel_values: Tensor,
    path: str | os.PathLike[str],
    layer: int = -1,
) -> dict[str, dict[str, float]]:
    """Histograms of decoder layer ``layer``'s cross-attention queries: FP, quantized before DA, after DA.

    ``pixel_values`` (``[B, 3, H, W]``) runs once through each model in eval mode. The curves
    (:data:`CURVES`): ``"fp"`` is the FP model's ``encoder_attn.q_proj`` output, ``"quantized"``
    the quantized model's (its LSQ ``q_proj``, before DA), ``"aligned"`` the DA output (per-head
    standardized, times ``gamma`` plus ``beta``), absent when the model has no DA
    (``alignment="none"``). Returns ``{curve: {"mean", "std" (population), "count"}}`` over all
    values of the batch; writes the PNG to ``path``.
    """
    target = check_output_file(path, (".png",))
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4 or not pixel_values.is_floating_point():
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
        raise BadInputError(f"pixel_values must be a float [B, 3, H, W] tensor, got {shape}")
    index = check_query_models(fp_model, quantized_model, layer)
    fp_attn: Any = _decoder_layers(fp_model, "the FP model")[index].encoder_attn
    q_attn: Any = _decoder_layers(quantized_model, "the quantized model")[index].encoder_attn
    values = _capture(fp_model, pixel_values, {"fp": fp_attn.q_proj})
    taps = {"quantized": q_attn.base_layer.q_proj}
    if q_attn.alignment is not None:
        taps["aligned"] = q_attn.alignment
    values.update(_capture(quantized_model, pixel_values, taps))
    stats = {name: _stats(values[name]) for name in CURVES if name in values}
    _plot_queries(values, stats, index, target)
    return stats


def _plot_queries(values: dict[str, Tensor], stats: dict[str, dict[str, float]], index: int, path: os.PathLike[str]) -> None:
    from matplotlib.figure import Figure

    arrays = {k: values[k].reshape(-1).double().numpy() for k in CURVES if k in values}
    pooled = np.concatenate(list(arrays.values()))
    lo, hi = np.quantile(pooled, [_TAIL, 1 - _TAIL])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, _BINS + 1)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name, arr in arrays.items():
        s = stats[name]
        ax.hist(np.clip(arr, lo, hi), bins=edges.tolist(), density=True, histtype="step", linewidth=1.6,
                color=_COLOURS[name], label=f"{CURVES[name]} (mean {s['mean']:.3f}, std {s['std']:.3f})")  # fmt: skip
    ax.set_title(f"Decoder layer {index}: cross-attention query values")
    ax.set_xlabel("query value (values beyond the range pile up at its ends)")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_png(fig, path)


# --------------------------------------------------------------------------- detections


def _check_indices(indices: Sequence[int], n: int) -> list[int]:
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise BadInputError(f"indices must be a list of image indices, got {type(indices).__name__}")
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise BadInputError(f"indices must be integers, got {i!r}")
        if not 0 <= int(i) < n:
            raise BadInputError(f"image index {int(i)} is out of range: the dataset has {n} images")
        out.append(int(i))
    if not out:
        raise BadInputError("indices is empty: give at least one image index")
    return out


def _label_name(dataset: CocoDetectionSet, label: int) -> str:
    category = dataset.label_to_category.get(label)
    return dataset.category_names.get(category, str(label)) if category is not None else str(label)


@torch.no_grad()
def detections_png(
    model: nn.Module,
    dataset: CocoDetectionSet,
    indices: Sequence[int],
    path: str | os.PathLike[str],
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """A grid of ``dataset``'s images ``indices`` with ``model``'s boxes scoring ``>= threshold`` and the ground truth.

    ``dataset`` must be built with ``train=False`` (flips would move the boxes). Boxes are drawn on
    the images as the model saw them (after the dataset's resizing). Returns one dict per image:
    ``index``, ``image_id``, ``scores``, ``labels``, ``boxes`` (``[x0, y0, x1, y1]`` in those pixels,
    from :func:`qdetr.evaluate.postprocess`) and ``ground_truth`` (``labels``, ``boxes``).
    """
    target = check_output_file(path, (".png",))
    if not isinstance(dataset, CocoDetectionSet):
        raise BadInputError(f"dataset must be a qdetr.data.CocoDetectionSet, got {type(dataset).__name__}")
    if dataset.train:
        raise BadInputError("draw a CocoDetectionSet built with train=False (random flips would move the boxes)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise BadInputError(f"threshold must be a number in [0, 1], got {threshold!r}")
    chosen = _check_indices(indices, len(dataset))
    items = [dataset[i] for i in chosen]
    batch = collate(items)
    device = _device(model)
    was = model.training
    model.eval()
    try:
        out = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
    finally:
        model.train(was)
    logits, boxes = getattr(out, "logits", None), getattr(out, "pred_boxes", None)
    if not isinstance(logits, Tensor) or not isinstance(boxes, Tensor):
        raise BadInputError(f"the model must return .logits and .pred_boxes, got {type(out).__name__}")
    sizes = torch.stack([t["size"] for _, t in items])
    found = postprocess(logits.cpu(), boxes.cpu(), sizes, threshold=float(threshold))
    results = []
    for i, (_, t), det in zip(chosen, items, found):
        h, w = (float(s) for s in t["size"])
        gt = cxcywh_to_xyxy(t["boxes"].double()) * torch.tensor([w, h, w, h], dtype=torch.float64)
        results.append({
            "index": i, "image_id": int(t["image_id"][0]), "scores": det["scores"].tolist(),
            "labels": det["labels"].tolist(), "boxes": det["boxes"].tolist(),
            "ground_truth": {"labels": t["class_labels"].tolist(), "boxes": gt.tolist()},
        })  # fmt: skip
    _plot_detections(dataset, [p for p, _ in items], results, float(threshold), target)
    return results


def _plot_detections(dataset: CocoDetectionSet, pixels: list[Tensor], results: list[dict[str, Any]],
                     threshold: float, path: os.PathLike[str]) -> None:  # fmt: skip
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    n = len(results)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for k, ax in enumerate(axes.reshape(-1)):
        ax.set_axis_off()
        if k >= n:
            continue
        r = results[k]
        image = (pixels[k].cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(image, interpolation="nearest")
        for x0, y0, x1, y1 in r["ground_truth"]["boxes"]:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5, linestyle="--"))
        for (x0, y0, x1, y1), label, score in zip(r["boxes"], r["labels"], r["scores"]):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.2))
            ax.text(x0, y0, f"{_label_name(dataset, label)} {score:.2f}", color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": "red", "alpha": 0.7, "pad": 1, "linewidth": 0})  # fmt: skip
        ax.set_title(f"image {r['image_id']}: {len(r['scores'])} box(es)", fontsize=8)
    handles = [Line2D([], [], color="lime", linestyle="--", label="ground truth"),
               Line2D([], [], color="red", label=f"predicted, score >= {threshold:g}")]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize="small")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_png(fig, path)
