"""The detector, its configs and presets, targets / losses / decoding, and SparseKD-style FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from kd3d.api import tiny_config
from kd3d.config import PRESETS, DetectorConfig, check_student_fits, encoder_depth_out, preset
from kd3d.detector import DetectorOutput, build_detector
from kd3d.flops import active_pairs, count_flops, count_params
from kd3d.ops import voxelize_mean
from kd3d.sparse import SparseConvTensor
from kd3d.targets import build_targets, decode, detection_loss, focal_loss, gaussian_radius
from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, config_to_dict


def test_forward_shapes_and_logits(tiny_model, tiny_cfg) -> None:
    out = tiny_model(tiny_model.example_input())
    h, w = tiny_cfg.bev_shape
    assert out.heatmap.shape == (2, 3, h, w) and out.regression.shape == (2, 8, h, w)
    assert out.neck.shape == (2, tiny_cfg.neck_channels, h, w) and out.logits is out.heatmap
    assert tiny_model.encoder.out_depth == encoder_depth_out(tiny_cfg.grid_size[2]) == 2


def test_presets_scale_widths_as_sparsekd() -> None:
    t, s, xs, xxs = (preset(n) for n in PRESETS)
    assert t.encoder_channels == s.encoder_channels == [16, 16, 32, 64, 128, 128]
    assert xs.encoder_channels == [12, 12, 24, 48, 96, 96] and xxs.encoder_channels == [8, 8, 16, 32, 64, 64]
    assert (t.neck_channels, s.neck_channels, xs.neck_channels, xxs.neck_channels) == (512, 256, 256, 128)
    assert (t.head_channels, s.head_channels, xxs.head_channels) == (64, 32, 16)
    for student in (s, xs, xxs):
        check_student_fits(student, t)
    with pytest.raises(BadInputError, match="wider than its teacher"):
        check_student_fits(t, xxs)
    assert config_from_dict(DetectorConfig, config_to_dict(xs)) == xs


@pytest.mark.parametrize("bad", [{"voxel_size": [0.3, 0.3, 0.1]}, {"voxel_size": [0.4, 0.4, 0.5]}, {"encoder_layers": [1, 1]},
                                 {"classes": []}, {"nms_iou": 2.0}])  # fmt: skip
def test_config_validation(bad: dict) -> None:
    with pytest.raises(BadInputError):
        tiny_config(**bad)


def test_gaussian_radius_and_targets(tiny_cfg, boxes_data) -> None:
    r = gaussian_radius(3.0, 2.0, 0.1)
    assert 0 < r < 3.0
    t = build_targets(boxes_data["boxes"], boxes_data["labels"], tiny_cfg)
    assert t.num_objects == 2 and t.heatmap.max() == 1.0
    # the car at (1, -2): cell x = (1 + 6.4) / 3.2 = 2.3125, y = (-2 + 6.4) / 3.2 = 1.375 -> (row 1, col 2)
    assert t.heatmap[0, 0, 1, 2] == 1.0 and int(t.index[0, 0]) == 1 * 4 + 2
    torch.testing.assert_close(t.regression[0, 0, :3], torch.tensor([0.3125, 0.375, -1.0]))
    torch.testing.assert_close(t.regression[0, 0, 3:6], torch.log(torch.tensor([4.0, 1.8, 1.5])))
    torch.testing.assert_close(t.regression[0, 0, 6:], torch.tensor([math.cos(0.4), math.sin(0.4)]))


def test_boxes_without_a_size_are_skipped_not_crashing(tiny_cfg) -> None:
    """A label with a zero height (log size undefined) must not stop training with a math domain error."""
    boxes = torch.tensor([[1.0, -2.0, -1.0, 4.0, 1.8, 0.0, 0.4], [-3.0, 2.5, -1.0, 0.7, 0.0, 1.7, 0.0],
                          [-3.0, -3.0, -1.0, 0.7, 0.6, 1.7, 0.0]])  # fmt: skip
    t = build_targets([boxes], [torch.tensor([0, 1, 1])], tiny_cfg)
    assert t.num_objects == 1 and t.heatmap[0, 0].max() == 0.0


def _perfect_output(cfg, targets) -> DetectorOutput:
    b, _, h, w = targets.heatmap.shape
    heat = torch.logit(targets.heatmap.clamp(1e-6, 1 - 1e-6))
    reg = torch.zeros(b, 8, h, w)
    for i in range(b):
        for k in range(int(targets.mask[i].sum())):
            idx = int(targets.index[i, k])
            reg[i, :, idx // w, idx % w] = targets.regression[i, k]
    return DetectorOutput(heatmap=heat, regression=reg, neck=torch.zeros(b, 1, h, w))


def test_decoding_perfect_maps_recovers_the_boxes(tiny_cfg, boxes_data) -> None:
    data = boxes_data
    targets = build_targets(data["boxes"], data["labels"], tiny_cfg)
    out = _perfect_output(tiny_cfg, targets)
    dets = decode(out, tiny_cfg, top_k=1, score_threshold=0.5)
    for det, boxes, labels in zip(dets, data["boxes"], data["labels"], strict=True):
        assert det["labels"].tolist() == labels.tolist()
        assert det["scores"][0] == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(torch.from_numpy(det["boxes"]).float(), boxes, atol=1e-5, rtol=1e-5)
    _, parts = detection_loss(out, targets, tiny_cfg)
    assert parts["loss_reg"] == pytest.approx(0.0, abs=1e-6)
    assert focal_loss(out.heatmap, targets.heatmap) < focal_loss(torch.zeros_like(out.heatmap), targets.heatmap)


def test_detector_overfits_one_batch(tiny_cfg, boxes_data) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_cfg, seed=0)
    data = boxes_data
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.cat([torch.full((200, 1), float(b)), b_[:, :3] + torch.randn(200, 3, generator=g) * 0.5,
                                torch.rand(200, 1, generator=g)], 1) for b, b_ in enumerate(data["boxes"])])  # fmt: skip
    targets = build_targets(data["boxes"], data["labels"], tiny_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, _ = detection_loss(model(pts, 2), targets, tiny_cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_active_pairs_match_a_brute_force_count(tiny_model, tiny_cfg) -> None:
    x = tiny_model.example_input(500)
    feats, coords = voxelize_mean(x, tiny_cfg.point_range, tiny_cfg.voxel_size)
    sp = SparseConvTensor(feats, coords, tiny_model.encoder.sparse_shape, 2)
    occupied = (sp.dense().abs().sum(1, keepdim=True) > 0).float()
    occupied[coords[:, 0].long(), 0, coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()] = 1.0
    subm = tiny_model.encoder.stages[0][0][0]
    out = subm(sp)
    counted = active_pairs(out.indice_dict["subm1"].indice_pair_num, True, feats.shape[0])
    neighbours = F.conv3d(occupied, torch.ones(1, 1, 3, 3, 3), padding=1)  # occupied inputs around each site
    assert counted == int((neighbours * occupied).sum())
    strided = tiny_model.encoder.stages[2][0][0]
    out2 = strided(out)
    counted2 = active_pairs(out2.indice_dict["spconv2"].indice_pair_num, False, out.features.shape[0])
    assert counted2 == int(F.conv3d(occupied, torch.ones(1, 1, 3, 3, 3), stride=2, padding=1).sum())


def test_flops_ratios_student_below_teacher(tiny_cfg) -> None:
    teacher = build_detector(tiny_config(bev_channels=[16, 32], up_channels=[16, 16], head_channels=16), seed=0)
    student = build_detector(tiny_cfg, seed=0)
    x = teacher.example_input(500)
    ft, fs = count_flops(teacher, x), count_flops(student, x)
    assert ft.sparse == fs.sparse and fs.dense < ft.dense and ft.pairs == fs.pairs > 0
    assert count_params(student) < count_params(teacher)
    assert sum(r["macs"] for r in ft.layers) == ft.total
