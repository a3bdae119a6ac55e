"""nuScenes-style and KITTI-style metrics: perfect, shifted and missing predictions."""

from __future__ import annotations

import numpy as np
import pytest

from kd3d.metrics import kitti_ap, nuscenes_metrics
from slimkit.errors import BadInputError

CLASSES = ["Car", "Pedestrian"]


def _gts(n_scenes: int = 4, per_scene: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_scenes):
        xy = np.stack([np.arange(per_scene) * 8.0 - 16.0, rng.uniform(-10, 10, per_scene)], axis=1)
        boxes = np.c_[xy, np.full(per_scene, -1.0), np.tile([4.0, 1.8, 1.5], (per_scene, 1)), rng.uniform(-3, 3, per_scene)]
        out.append({"boxes": boxes, "labels": np.arange(per_scene) % 2})
    return out


def _perfect(gts: list[dict]) -> list[dict]:
    return [{"boxes": g["boxes"].copy(), "labels": g["labels"].copy(), "scores": np.linspace(1.0, 0.5, len(g["labels"]))}
            for g in gts]  # fmt: skip


def test_perfect_predictions_score_one() -> None:
    gts = _gts()
    m = nuscenes_metrics(_perfect(gts), gts, CLASSES)
    assert m["mAP"] == pytest.approx(1.0) and m["NDS"] == pytest.approx(1.0)
    assert m["mATE"] == pytest.approx(0.0) and m["mASE"] == pytest.approx(0.0, abs=1e-12) and m["mAOE"] == pytest.approx(0.0)
    assert kitti_ap(_perfect(gts), gts, CLASSES, "bev")["mAP"] == pytest.approx(1.0)
    assert kitti_ap(_perfect(gts), gts, CLASSES, "3d")["mAP"] == pytest.approx(1.0)
    with pytest.raises(BadInputError, match="kind must be 'bev' or '3d'"):
        kitti_ap(_perfect(gts), gts, CLASSES, "BEV")


@pytest.mark.parametrize("shift", [0.3, 0.7])
def test_shifted_boxes_give_the_shift_as_ate(shift: float) -> None:
    gts = _gts()
    preds = _perfect(gts)
    for p in preds:
        p["boxes"][:, 1] += shift
    m = nuscenes_metrics(preds, gts, CLASSES)
    assert m["mATE"] == pytest.approx(shift)
    for row in m["classes"].values():
        assert row["AP@0.5"] == (pytest.approx(1.0) if shift < 0.5 else 0.0)
        assert row["AP@1"] == pytest.approx(1.0)
    expected_map = 1.0 if shift < 0.5 else 0.75
    assert m["mAP"] == pytest.approx(expected_map)
    assert m["NDS"] == pytest.approx((5 * expected_map + (1 - shift) + 1 + 1) / 8)


def test_missing_predictions_lower_recall_exactly() -> None:
    gts = _gts(n_scenes=5, per_scene=4)
    preds = _perfect(gts)
    for p in preds[:3]:  # drop every prediction of 3 of 5 scenes: 40 % of the objects stay found
        p["boxes"], p["labels"], p["scores"] = p["boxes"][:0], p["labels"][:0], p["scores"][:0]
    m = nuscenes_metrics(preds, gts, CLASSES)
    for row in m["classes"].values():
        assert row["max_recall"] == pytest.approx(0.4)
        # precision 1 up to recall 0.4 (bins 11..40 of 101), 0 after: AP = 30 / 90
        assert row["AP"] == pytest.approx(30 / 90)
    assert kitti_ap(preds, gts, CLASSES)["mAP"] == pytest.approx(16 / 40)  # recall points 1/40 .. 16/40


def test_false_positives_lower_precision_and_rotation_counts_in_aoe() -> None:
    gts = _gts(n_scenes=2, per_scene=2)
    preds = _perfect(gts)
    for p in preds:
        p["boxes"][:, 6] += 0.25
    m = nuscenes_metrics(preds, gts, CLASSES)
    assert m["mAOE"] == pytest.approx(0.25)
    assert m["mAP"] == pytest.approx(1.0)
    far = [{"boxes": np.r_[p["boxes"], [[40.0, 40.0, -1, 4, 1.8, 1.5, 0]]], "labels": np.r_[p["labels"], 0],
            "scores": np.r_[p["scores"], 2.0]} for p in preds]  # fmt: skip
    assert nuscenes_metrics(far, gts, CLASSES)["classes"]["Car"]["AP"] < 1.0
