"""Timings behind ``qdetr bench``: this package's ops against plain PyTorch, and one training step per method.

* FQM's pairing score (:func:`qdetr.ops.match_score`) vs the way DETR's matcher builds its cost:
  torchvision's ``generalized_box_iou`` on corners plus ``torch.cdist(p=1)``;
* DA + LSQ+ on decoder queries (:func:`qdetr.ops.aligned_quantize`) vs unfused PyTorch
  (``F.layer_norm`` with the affine, then :func:`slimkit.quant.lsq_fake_quant`);
* one optimizer step of the tiny DETR: full precision, LSQ at 4-4-8, and Q-DETR (4-4-8 with the
  frozen teacher's forward and the DRD loss), so users see what distillation costs per step.

On CPU the ops run their PyTorch references, so CPU numbers compare two PyTorch implementations;
the Triton kernels are timed only on a GPU. Ratios are medians over interleaved rounds
(:func:`slimkit.bench.compare`); ``> 1`` = faster than the baseline.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from qdetr import ops
from qdetr.boxes import cxcywh_to_xyxy
from qdetr.config import DRDConfig, QDetrConfig
from qdetr.data import CocoDetectionSet, collate, make_shapes
from qdetr.models import tiny_detr
from qdetr.quantize import apply_qdetr, calibrate
from qdetr.reference import DA_EPS, MU_GIOU, MU_L1
from qdetr.training import LossFn, detr_loss, qdetr_loss
from slimkit.bench import compare, env_header, section_rows
from slimkit.quant import lsq_fake_quant

__all__ = ["BenchSizes", "detr_matcher_score", "run_benchmarks", "unfused_aligned_quantize"]


@dataclass
class BenchSizes:
    """Problem sizes; :meth:`quick` is small enough for tests and a busy laptop."""

    boxes: int = 1000  #: student and teacher boxes in the pairing score (e.g. 10 images x 100 queries)
    query_rows: int = 8 * 100 * 6  #: decoder query vectors (batch 8, 100 queries, 6 layers) for DA + LSQ+
    d_model: int = 256
    step_batch: int = 4  #: images per training step (64 x 64 shapes)

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(boxes=64, query_rows=64, d_model=32, step_batch=2)


def detr_matcher_score(student: Tensor, teacher: Tensor, mu_giou: float, mu_l1: float) -> Tensor:
    """The pairing score as DETR's Hungarian matcher computes its cost terms (torchvision GIoU, cdist L1)."""
    giou = generalized_box_iou(cxcywh_to_xyxy(student), cxcywh_to_xyxy(teacher))
    return mu_giou * giou - mu_l1 * torch.cdist(student, teacher, p=1)


def unfused_aligned_quantize(q: Tensor, gamma: Tensor, beta: Tensor, step: Tensor, offset: Tensor, qmax: int) -> Tensor:
    """DA as a layer norm with affine, then LSQ+ fake quant: two passes over the queries."""
    y = F.layer_norm(q, (q.shape[-1],), gamma, beta, eps=DA_EPS)
    return lsq_fake_quant(y, step, -qmax - 1, qmax, offset=offset)


def _random_boxes(n: int, gen: torch.Generator) -> Tensor:
    centre = torch.rand(n, 2, generator=gen) * 0.8 + 0.1
    size = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def _step_fn(model: nn.Module, loss_fn: LossFn, batch: dict[str, Any]) -> Callable[[], None]:
    """One AdamW step of ``model`` on ``batch`` (forward, backward, update), as training runs it."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step() -> None:  # compare() times under inference_mode: a training step leaves it
        with torch.inference_mode(False), torch.enable_grad():
            _step(model, loss_fn, batch, optimizer)

    return step


def _step(model: nn.Module, loss_fn: LossFn, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    loss, _ = loss_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _training_steps(sizes: BenchSizes, repeats: int, warmup: int) -> list[dict[str, Any]]:
    """FP vs LSQ 4-4-8 vs Q-DETR 4-4-8 steps of the tiny DETR on a generated shapes batch (CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes(Path(tmp) / "d", sizes.step_batch, seed=0)
        data = CocoDetectionSet(Path(tmp) / "d")
        batch = collate([data[i] for i in range(len(data))])
    torch.manual_seed(0)
    fp = tiny_detr(data.num_labels)
    lsq, distilled = copy.deepcopy(fp), copy.deepcopy(fp)
    for quantized, alignment in ((lsq, "none"), (distilled, "cross")):  # the LSQ baseline has no DA (as train --method lsq)
        apply_qdetr(quantized, QDetrConfig(w_bits=4, a_bits=4, attn_bits=8, alignment=alignment))
        calibrate(quantized, [batch["pixel_values"]])
    steps = {
        "fp": _step_fn(fp, detr_loss, batch),
        "lsq_4_4_8": _step_fn(lsq, detr_loss, batch),
        "qdetr_4_4_8": _step_fn(distilled, qdetr_loss(copy.deepcopy(fp).eval(), DRDConfig()), batch),
    }
    shape = f"tiny DETR, {sizes.step_batch} images 64x64"
    return section_rows("train_step", shape, compare(steps, baseline="fp", warmup=warmup, repeats=repeats))


def run_benchmarks(
    device: torch.device | str = "cpu", sizes: BenchSizes | None = None, repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Run every section; returns ``{"env", "dtype", "rows"}`` (JSON-ready). Training steps run on CPU only."""
    sizes = sizes or BenchSizes()
    dev = torch.device(device)
    dt = torch.float16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []

    student, teacher = (_random_boxes(sizes.boxes, gen).to(dev, dt) for _ in range(2))
    mu_g, mu_l = MU_GIOU, MU_L1
    rows += section_rows(
        "match_score", f"{sizes.boxes}x{sizes.boxes} boxes",
        compare({"detr_matcher": lambda: detr_matcher_score(student.float(), teacher.float(), mu_g, mu_l),
                 "match_score": lambda: ops.match_score(student, teacher, mu_g, mu_l)},
                baseline="detr_matcher", warmup=warmup, repeats=repeats),
    )  # fmt: skip

    d = sizes.d_model
    q = torch.randn(sizes.query_rows, d, generator=gen).to(dev, dt)
    gamma = (torch.rand(d, generator=gen) + 0.5).to(dev, dt)
    beta = (torch.randn(d, generator=gen) * 0.1).to(dev, dt)
    step = torch.full((d,), 0.25, device=dev, dtype=dt)
    offset = torch.zeros(d, device=dev, dtype=dt)
    qmax = 127
    rows += section_rows(
        "aligned_quantize", f"{sizes.query_rows}x{d} queries, 8 bits",
        compare({"unfused_torch": lambda: unfused_aligned_quantize(q, gamma, beta, step, offset, qmax),
                 "aligned_quantize": lambda: ops.aligned_quantize(q, gamma, beta, step, offset, -qmax - 1, qmax)},
                baseline="unfused_torch", warmup=warmup, repeats=repeats),
    )  # fmt: skip

    if dev.type == "cpu":
        rows += _training_steps(sizes, repeats, warmup)
    return {"env": env_header(device=dev), "dtype": str(dt).replace("torch.", ""), "rows": rows}
