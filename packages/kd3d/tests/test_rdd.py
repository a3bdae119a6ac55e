"""RDD's losses: zero for identical maps, disparity-weight sparsity, bilateral pairs, gradients to the student only."""

from __future__ import annotations

import pytest
import torch

from kd3d.api import tiny_config
from kd3d.config import RDDConfig
from kd3d.detector import DetectorOutput, build_detector
from kd3d.distillation import DistillLoss
from kd3d.rdd import channel_softmax, disparity_weights, gaussian_mi, pair_distance, proposal_rois, rdd_loss
from kd3d.reference import rotated_roi_sample_reference


def _maps(seed: int = 0, b: int = 2, c: int = 6, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, 3, h, w, generator=g), torch.randn(b, 8, h, w, generator=g)


def _rois() -> torch.Tensor:
    return torch.tensor([[0, 2.5, 3.0, 3.0, 2.0, 0.3], [1, 5.0, 5.0, 2.0, 2.0, -1.0], [0, 6.0, 1.5, 4.0, 1.0, 2.0],
                         [1, 1.0, 6.0, 1.0, 1.0, 0.0]])  # fmt: skip


def test_identical_student_and_teacher_give_zero_loss() -> None:
    feat, heat, _ = _maps()
    parts = rdd_loss(feat, feat.clone(), heat, heat.clone(), _rois(), RDDConfig(lam=0.0))
    assert parts.feat.item() == 0.0 and parts.logit.item() == 0.0 and parts.pairs == 4
    assert torch.equal(parts.weights, torch.ones(4))  # lambda = 0: every pair distilled equally


def test_channel_softmax_is_a_distribution_per_location() -> None:
    x = torch.randn(3, 5, 2, 2)
    p = channel_softmax(x, 4.0)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3, 2, 2))
    assert (channel_softmax(x, 100.0).std(dim=1) < p.std(dim=1)).all()  # a higher tau flattens


def test_disparity_weights_sparsity_grows_with_lambda() -> None:
    d = torch.tensor([0.0, 0.05, 0.2, 0.5, 0.9, 1.8])
    counts = [int((disparity_weights(d, lam) > 0).sum()) for lam in (0.0, 0.1, 0.3, 0.6, 0.99)]
    assert counts == [6, 4, 2, 1, 1]  # d / max = 0, .028, .11, .28, .5, 1
    assert counts == sorted(counts, reverse=True)
    soft = disparity_weights(d, 0.1, "soft")
    torch.testing.assert_close(soft, (d / 1.8 - 0.1).clamp(0, 1))
    assert disparity_weights(d, 0.5, "none").tolist() == [1.0] * 6
    mm = disparity_weights(d + 1.0, 0.5, "hard", "minmax")
    assert mm.tolist() == disparity_weights(d, 0.5).tolist()


def test_high_disparity_pairs_are_the_ones_selected() -> None:
    feat, heat, _ = _maps()
    student = feat.clone()
    student[1] += 5 * torch.randn_like(student[1])  # sample 1 is far from the teacher
    parts = rdd_loss(student, feat, heat, heat, _rois(), RDDConfig(lam=0.5))
    assert parts.weights.tolist() == [0.0, 1.0, 0.0, 1.0]  # rois 1 and 3 lie in sample 1
    gaussian = rdd_loss(student, feat, heat, heat, _rois(), RDDConfig(lam=0.5, mi_estimator="gaussian"))
    assert gaussian.weights[1] == 1.0 and gaussian.weights[0] == 0.0


def test_gradient_flows_only_to_the_student() -> None:
    feat, heat, _ = _maps()
    s_feat, s_heat = torch.randn_like(feat, requires_grad=True), torch.randn_like(heat, requires_grad=True)
    t_feat, t_heat = feat.requires_grad_(True), heat.requires_grad_(True)
    parts = rdd_loss(s_feat, t_feat, s_heat, t_heat, _rois(), RDDConfig(lam=0.0))
    (parts.feat + parts.logit).backward()
    assert s_feat.grad is not None and s_feat.grad.abs().sum() > 0 and s_heat.grad.abs().sum() > 0
    assert t_feat.grad is None and t_heat.grad is None


def test_pair_distance_and_gaussian_mi() -> None:
    a = torch.randn(4, 3, 2, 2, requires_grad=True)
    d = pair_distance(a, a.detach())
    assert d.tolist() == [0.0] * 4
    d.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a))  # exactly zero, no NaN from sqrt at 0
    b = torch.randn(4, 12)
    assert (gaussian_mi(b, 2 * b + 1) > gaussian_mi(b, torch.randn(4, 12))).all()


def test_proposals_are_decoded_rotated_boxes() -> None:
    cfg = tiny_config()
    heat = torch.full((1, 3, 4, 4), -9.0)
    heat[0, 1, 2, 3] = 4.0
    reg = torch.zeros(1, 8, 4, 4)
    reg[0, :, 2, 3] = torch.tensor([0.25, 0.5, -1.0, torch.log(torch.tensor(6.4)), torch.log(torch.tensor(3.2)), 0.0, 0.0, 1.0])
    rois = proposal_rois(heat, reg, cfg, k=5, score_threshold=0.5)
    assert rois.shape == (1, 6)
    torch.testing.assert_close(rois[0], torch.tensor([0.0, 3.25, 2.5, 2.0, 1.0, torch.pi / 2]))  # 3.2 m cells


def test_bilateral_pairs_count_both_sides() -> None:
    cfg = tiny_config()
    student, teacher = build_detector(cfg, seed=0), build_detector(cfg, seed=1)
    x = student.example_input()
    s, t = student(x), teacher(x)
    counts = {}
    for source in ("teacher", "student", "both"):
        kd = DistillLoss(student, teacher, RDDConfig(proposals=source, num_proposals=3, score_threshold=0.0, adapter="identity"))
        counts[source] = kd(s, t)[1]["kd_pairs"]
    assert counts == {"teacher": 6.0, "student": 6.0, "both": 12.0}  # 3 peaks x 2 samples per side
    same = DistillLoss(student, student, RDDConfig(score_threshold=0.0, adapter="identity", lam=0.0))
    loss, metrics = same(s, DetectorOutput(heatmap=s.heatmap.detach(), regression=s.regression.detach(), neck=s.neck.detach()))
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and metrics["kd_pairs"] > 0


def test_defaults_are_the_papers_and_the_loss_is_alpha_weighted() -> None:
    """tau 4, lambda 0.1, alpha1 = alpha2 = 0.2, bilateral pairs, hard weights on the L2 disparity (RDD Sec. 4)."""
    cfg = RDDConfig()
    assert (cfg.tau, cfg.lam, cfg.alpha_feat, cfg.alpha_logit) == (4.0, 0.1, 0.2, 0.2)
    assert (cfg.proposals, cfg.weighting, cfg.mi_estimator, cfg.adapter) == ("both", "hard", "l2", "conv")
    assert cfg.logit_reduction == "mean"  # the per-element mean over the patch (see RDDConfig; "sum" as an option)
    feat, heat, _ = _maps()
    student, s_heat = feat + torch.randn_like(feat), heat + torch.randn_like(heat)
    parts = rdd_loss(student, feat, s_heat, heat, _rois(), cfg)
    s, t = (channel_softmax(rotated_roi_sample_reference(x, _rois(), 7), 4.0) for x in (student, feat))
    dist = (s - t).flatten(1).norm(dim=1)
    m = (dist / dist.max() > 0.1).float()
    torch.testing.assert_close(parts.feat, (m * dist).sum() / 4)
    ps, pt = (rotated_roi_sample_reference(torch.sigmoid(x), _rois(), 7) for x in (s_heat, heat))
    torch.testing.assert_close(parts.logit, (m * (ps - pt).abs().flatten(1).mean(1)).sum() / 4)
    summed = rdd_loss(student, feat, s_heat, heat, _rois(), RDDConfig(logit_reduction="sum"))
    torch.testing.assert_close(summed.logit, (m * (ps - pt).abs().flatten(1).sum(1)).sum() / 4)
    cfg_model = tiny_config()
    a, b = build_detector(cfg_model, seed=0), build_detector(cfg_model, seed=1)
    x = a.example_input()
    sa, sb = a(x), b(x)
    kd = DistillLoss(a, b, RDDConfig(score_threshold=0.0, adapter="identity"))
    loss, metrics = kd(sa, sb)
    assert loss.item() == pytest.approx(0.2 * metrics["kd_feat"] + 0.2 * metrics["kd_logit"], rel=1e-5)
