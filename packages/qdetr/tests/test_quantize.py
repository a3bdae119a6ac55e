"""apply_qdetr: exactly which layers are quantized at which bits, the two stages, calibration, undo."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from qdetr.api import dequantize, quantize, quantize_report
from qdetr.attention import QuantAttention
from qdetr.config import QDetrConfig
from qdetr.quantize import attention_modules, calibrate, quantizers
from slimkit.errors import BadInputError
from slimkit.opcount import count_ops
from slimkit.qlayers import LSQLayer
from slimkit.wrappers import wrapped_modules


def _convs_and_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_default_plan_quantizes_everything_but_the_released_codes_fp_layers(detr: Any) -> None:
    names = _convs_and_linears(detr)
    report = quantize_report(detr, QDetrConfig())
    fp = {n for n, _ in report.kept_fp}
    assert fp == {n for n in names if "shortcut" in n} | {
        "model.input_projection", "class_labels_classifier", *(f"bbox_predictor.layers.{i}" for i in range(3))}  # fmt: skip
    bits = {n: (w, a) for n, w, a in report.layers}
    assert set(bits) == set(names) - fp
    assert bits.pop("model.backbone.model.embedder.embedder.convolution") == (8, 8)  # the stem at stem_bits
    assert set(bits.values()) == {(4, 4)}
    assert len(report.attentions) == 2 + 2 * 2  # 2 encoder self, 2 x (decoder self + cross)
    assert report.aligned == ["model.decoder.layers.0.encoder_attn", "model.decoder.layers.1.encoder_attn"]
    for name, w_bits, a_bits in report.layers:
        layer = detr.get_submodule(name)
        assert isinstance(layer, LSQLayer) and (layer.w_bits, layer.a_bits) == (w_bits, a_bits)


@pytest.mark.parametrize("alignment,expected", [("none", []), ("both", ["self_attn", "encoder_attn"])])
def test_alignment_choice_selects_decoder_attentions_only(detr: Any, alignment: str, expected: list[str]) -> None:
    report = quantize_report(detr, QDetrConfig(alignment=alignment))
    assert report.aligned == [f"model.decoder.layers.{i}.{a}" for i in range(2) for a in expected]
    aligned = {n for n, m in attention_modules(detr) if m.alignment is not None}
    assert aligned == set(report.aligned)


def test_backbone_stage_then_all_keeps_the_trained_backbone(detr: Any) -> None:
    report = quantize_report(detr, QDetrConfig(scope="backbone"))
    assert all(n.startswith("model.backbone.") for n, _, _ in report.layers) and not report.attentions
    stem = detr.get_submodule("model.backbone.model.embedder.embedder.convolution")
    with torch.no_grad():  # stands for stage-1 training
        stem.latent_weight.add_(0.5)
    stage1 = stem.latent_weight.detach().clone()
    fp_linear = detr.model.encoder.layers[0].mlp.fc1.weight.detach().clone()
    report2 = quantize_report(detr, QDetrConfig(scope="all"))
    assert not any(n.startswith("model.backbone.") for n, _, _ in report2.layers)
    assert detr.get_submodule("model.backbone.model.embedder.embedder.convolution") is stem
    assert torch.equal(stem.latent_weight, stage1)
    fc1 = detr.model.encoder.layers[0].mlp.fc1
    assert isinstance(fc1, LSQLayer) and torch.equal(fc1.latent_weight, fp_linear)  # stage-1 FP weights carry over
    with pytest.raises(BadInputError, match="already quantized"):
        quantize(detr, QDetrConfig())


def test_calibration_initialises_every_quantizer_and_training_moves_their_steps(detr: Any, batch: dict) -> None:
    frozen_name = "model.backbone.model.encoder.stages.0.layers.0.layer.0.convolution"
    detr.get_submodule(frozen_name).weight.requires_grad_(False)  # as HF freezes a pretrained ResNet's first stage
    report = quantize_report(detr, QDetrConfig())
    all_q = list(quantizers(detr))
    assert len(all_q) == 2 * len(report.layers) + 4 * len(report.attentions)  # weight + input per layer, 4 per attention
    assert sum(bool(q.initialized) for q in all_q) == len(report.layers)  # the weights' at wrap time, inputs' from data
    assert calibrate(detr, [batch["pixel_values"]]) == 1 and all(bool(q.initialized) for q in all_q)
    detr.train()
    out = detr(pixel_values=batch["pixel_values"], labels=batch["labels"])
    out.loss.backward()
    attention = attention_modules(detr)[-1][1]
    assert attention.q_quant.step.grad is not None and attention.alignment is not None
    assert attention.alignment.gamma.grad is not None and float(attention.alignment.gamma.grad.abs().sum()) > 0
    frozen = detr.get_submodule(frozen_name)
    assert not frozen.latent_weight.requires_grad and frozen.latent_weight.grad is None  # wrapping keeps it frozen


def test_undo_is_exact_and_training_never_touches_the_wrapped_originals(detr: Any, batch: dict) -> None:
    x = batch["pixel_values"]
    detr.eval()
    with torch.no_grad():
        before = detr(pixel_values=x).logits
    state = copy.deepcopy(detr.state_dict())
    report = quantize_report(detr, QDetrConfig())
    dequantize(detr)
    with torch.no_grad():
        assert torch.equal(detr(pixel_values=x).logits, before)
    quantize(detr, QDetrConfig())
    calibrate(detr, [x])
    opt = torch.optim.SGD([p for p in detr.parameters() if p.requires_grad], lr=0.1)
    detr.train()
    detr(pixel_values=x, labels=batch["labels"]).loss.backward()
    opt.step()
    dequantize(detr)
    assert not wrapped_modules(detr) and not any(isinstance(m, QuantAttention) for m in detr.modules())
    after = detr.state_dict()
    wrapped = [n for n, _, _ in report.layers]
    originals = [k for k in state if any(k.startswith(n + ".") for n in wrapped)]
    assert len(originals) >= len(wrapped) and all(torch.equal(state[k], after[k]) for k in originals)
    assert not torch.equal(state["class_labels_classifier.weight"], after["class_labels_classifier.weight"])


def test_op_count_sees_4_bit_layers_and_8_bit_attention(detr: Any, batch: dict) -> None:
    quantize(detr, QDetrConfig())
    x = batch["pixel_values"]
    calibrate(detr, [x])
    rows = count_ops(detr, pixel_values=x).rows
    matmuls = [r for r in rows if r.kind == "matmul"]
    assert len(matmuls) == 6 and all(r.calls == 2 and (r.w_bits, r.a_bits) == (8, 8) for r in matmuls)  # QK^T, AV
    linear = next(r for r in rows if r.name.endswith("mlp.fc1"))
    assert (linear.w_bits, linear.a_bits) == (4, 4) and linear.bops == linear.macs * 16


def test_refuses_what_it_cannot_quantize() -> None:
    with pytest.raises(BadInputError, match="has no DETR attention"):
        quantize(nn.Sequential(nn.Linear(2, 2)))
