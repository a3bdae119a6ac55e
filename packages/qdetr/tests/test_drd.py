"""FQM selection and pairing on hand-built boxes, the DRD loss, the co-attended tap, and the full loss."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from qdetr.api import quantize
from qdetr.config import DRDConfig, QDetrConfig
from qdetr.drd import CoAttendedTap, drd_loss, drd_pairs, fqm_match, fqm_select
from qdetr.quantize import calibrate
from qdetr.training import detr_loss, logit_kd_loss, qdetr_loss
from slimkit.errors import BadInputError

GT = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])  # two objects, cxcywh
STUDENT = torch.tensor([
    [0.25, 0.25, 0.2, 0.2],   # exactly object 0: GIoU 1 (G_0 = 1)
    [0.27, 0.25, 0.2, 0.2],   # slightly off object 0: IoU 0.18/0.22 = 0.818...
    [0.75, 0.78, 0.2, 0.2],   # best on object 1 (G_1 = IoU 0.17/0.23 = 0.739...)
    [0.50, 0.50, 0.05, 0.05], # between both: negative GIoU with each
])  # fmt: skip


def test_fqm_keeps_queries_above_tau_times_the_best_giou_per_object() -> None:
    assert fqm_select(STUDENT, GT, tau=0.5).tolist() == [True, True, True, False]
    assert fqm_select(STUDENT, GT, tau=0.8).tolist() == [True, True, True, False]
    assert fqm_select(STUDENT, GT, tau=0.85).tolist() == [True, False, True, False]  # 0.818 < 0.85 * 1
    assert fqm_select(STUDENT, GT, tau=1.0).tolist() == [False, False, False, False]  # strict ">": nobody beats G_i
    assert fqm_select(STUDENT, GT, tau=0.0).tolist() == [True, True, True, False]  # GIoU > 0: overlaps an object
    # "for all i": no query is near both objects at once
    assert fqm_select(STUDENT, GT, tau=0.5, select="all").tolist() == [False] * 4
    assert fqm_select(STUDENT, GT[:0], tau=0.5).tolist() == [False] * 4  # an image without objects


def test_pairing_argmax_may_reuse_a_teacher_query_hungarian_does_not() -> None:
    teacher = torch.tensor([[0.268, 0.25, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    students = STUDENT[:2]  # both closest to teacher query 0
    s, t = fqm_match(students, teacher, pairing="argmax")
    assert s.tolist() == [0, 1] and t.tolist() == [0, 0]
    s, t = fqm_match(students, teacher, pairing="hungarian")
    assert sorted(zip(s.tolist(), t.tolist())) == [(0, 1), (1, 0)]  # student 1 (0.27) is nearer 0.268
    s, t = fqm_match(students[:0], teacher)
    assert s.numel() == t.numel() == 0


def test_drd_loss_is_the_mean_l2_distance_and_zero_without_pairs() -> None:
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    loss = drd_loss(a, b)
    assert float(loss.detach()) == pytest.approx((5.0 + 1.0) / 2)
    loss.backward()
    assert a.grad is not None
    empty = torch.zeros(0, 8, requires_grad=True)
    zero = drd_loss(empty, torch.zeros(0, 8))
    zero.backward()
    assert float(zero.detach()) == 0.0 and not torch.isnan(zero)
    assert float(drd_loss(b, b)) == 0.0
    with pytest.raises(BadInputError, match="student features"):
        drd_loss(a, b[:1])


def test_tap_reads_the_cross_attention_output_projection_input(detr: Any, batch: dict) -> None:
    detr.eval()
    with CoAttendedTap(detr, [0, -1]) as tap:
        out = detr(pixel_values=batch["pixel_values"])
        assert tap.layers == [0, 1] and set(tap.features) == {0, 1}
        d_last = tap.features[1]
        assert d_last.shape == (2, 10, 64)
        o_proj = detr.model.decoder.layers[1].encoder_attn.o_proj
        assert out.logits.shape == (2, 10, 4) and torch.isfinite(o_proj(d_last)).all()
    assert not o_proj._forward_pre_hooks  # closed: the hooks are gone
    with pytest.raises(BadInputError, match=r"decoder layers \[2\] out of range"):
        CoAttendedTap(detr, [2])
    with pytest.raises(BadInputError, match=r"decoder layers \[-1, 1\] name one layer twice in a 2-layer decoder"):
        CoAttendedTap(detr, [-1, 1])  # the DRD mean would count that layer twice


def test_drd_of_a_student_identical_to_its_teacher_is_exactly_zero(detr: Any, batch: dict) -> None:
    with torch.no_grad():  # spread the random queries' boxes apart, so each box has one exact twin: its own slot
        detr.model.query_position_embeddings.weight.mul_(20.0)
    teacher = copy.deepcopy(detr).eval()
    student = detr.eval()  # same weights, eval: same boxes, so each query pairs with its own teacher slot
    loss, metrics = qdetr_loss(teacher, DRDConfig(tau=0.0))(student, batch)
    assert metrics["loss_drd"] == 0.0 and metrics["drd_pairs"] >= 1
    det, _ = detr_loss(student, batch)
    assert float(loss.detach()) == pytest.approx(float(det.detach()))
    kd_total, kd_metrics = logit_kd_loss(teacher)(student, batch)
    assert abs(kd_metrics["loss_kd"]) < 1e-6 and float(kd_total.detach()) == pytest.approx(float(det.detach()), abs=1e-5)


def test_qdetr_loss_trains_a_quantized_student_from_its_fp_teacher(detr: Any, batch: dict) -> None:
    teacher = copy.deepcopy(detr).eval()
    student = quantize(detr, QDetrConfig())
    calibrate(student, [batch["pixel_values"]])
    student.train()
    loss_fn = qdetr_loss(teacher, DRDConfig(tau=0.0, weight=2.0, layers=[0, 1]))
    loss, metrics = loss_fn(student, batch)
    det = metrics["loss_ce"] * 1 + metrics["loss_bbox"] * 5 + metrics["loss_giou"] * 2
    assert metrics["loss_drd"] > 0 and metrics["drd_pairs"] > 0 and det > 0
    loss.backward()
    cross = student.model.decoder.layers[0].encoder_attn
    assert cross.alignment.gamma.grad is not None and float(cross.alignment.gamma.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    pairs = drd_pairs(student(pixel_values=batch["pixel_values"]).pred_boxes, teacher(pixel_values=batch["pixel_values"]).pred_boxes, batch["labels"], DRDConfig(tau=0.0))
    assert len(pairs) == 2 and all(s.shape == t.shape for s, t in pairs)
