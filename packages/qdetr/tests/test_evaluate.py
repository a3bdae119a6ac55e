"""postprocess against a hand softmax; pycocotools AP for exact, shifted, mislabelled and missing detections;
evaluate_model end to end with an oracle model and with a tiny Hugging Face DETR."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from qdetr.data import CocoDetectionSet, make_shapes
from qdetr.evaluate import METRICS, coco_eval, evaluate_model, postprocess
from slimkit.errors import BadInputError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> CocoDetectionSet:
    folder = tmp_path_factory.mktemp("eval") / "set"
    make_shapes(folder, 6, seed=11)
    return CocoDetectionSet(folder)


# --------------------------------------------------------------------------- postprocess


def test_postprocess_matches_a_hand_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 5, 4, generator=g)
    logits[0, 0, -1] = 20.0  # no-object wins this query: its score is still the best real class's
    boxes = 0.1 + 0.5 * torch.rand(2, 5, 4, generator=g)
    sizes = [(30, 40), (50, 20)]
    out = postprocess(logits, boxes, sizes)
    kept = postprocess(logits, boxes, torch.tensor(sizes), threshold=0.5)
    for b, (h, w) in enumerate(sizes):
        assert out[b]["scores"].shape == (5,) and out[b]["boxes"].shape == (5, 4)
        hand_scores = []
        for q in range(5):
            exps = [math.exp(v) for v in logits[b, q].tolist()]
            probs = [e / sum(exps) for e in exps[:-1]]
            best = max(range(3), key=probs.__getitem__)
            hand_scores.append(probs[best])
            assert int(out[b]["labels"][q]) == best
            assert float(out[b]["scores"][q]) == pytest.approx(probs[best], rel=1e-5, abs=1e-9)
            cx, cy, bw, bh = boxes[b, q].tolist()
            hand = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            assert out[b]["boxes"][q].tolist() == pytest.approx(hand, rel=1e-6, abs=1e-5)
        keep = [q for q in range(5) if hand_scores[q] >= 0.5]
        assert torch.equal(kept[b]["labels"], out[b]["labels"][keep])
        assert torch.equal(kept[b]["boxes"], out[b]["boxes"][keep])
    assert float(out[0]["scores"][0]) < 1e-6


def test_postprocess_refuses_mismatched_shapes() -> None:
    with pytest.raises(BadInputError, match="pred_boxes"):
        postprocess(torch.zeros(2, 5, 4), torch.zeros(2, 4, 4), [(1, 1), (1, 1)])
    with pytest.raises(BadInputError, match="sizes"):
        postprocess(torch.zeros(2, 5, 4), torch.zeros(2, 5, 4), [(1, 1)])
    with pytest.raises(BadInputError, match="logits"):
        postprocess(torch.zeros(5, 4), torch.zeros(5, 4), [(1, 1)])


# --------------------------------------------------------------------------- coco_eval


def _truth(ds: CocoDetectionSet, shift: float = 0.0, label_of: Any = None) -> list[dict[str, Tensor]]:
    """The ground truth as detections (score 1), each box moved right by ``shift`` of its width."""
    label_of = label_of or ds.category_to_label
    out = []
    for image_id in ds.image_ids:
        anns = ds.coco.imgToAnns[image_id]
        boxes = [[x + shift * w, y, x + (1 + shift) * w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            }
        )
    return out


def test_exact_detections_score_one(shapes: CocoDetectionSet) -> None:
    metrics = coco_eval(shapes, _truth(shapes))
    assert list(metrics) == list(METRICS)
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["APs"] == metrics["AR100"] == 1.0
    assert metrics["APl"] == -1.0  # no object above 96^2 pixels: pycocotools' "undefined"
    by_id = dict(zip(shapes.image_ids, _truth(shapes)))
    assert coco_eval(shapes, by_id) == metrics


def test_shifted_boxes_lose_the_strict_thresholds(shapes: CocoDetectionSet) -> None:
    # Moving a box by f of its width gives IoU (1 - f) / (1 + f) with its ground truth.
    tenth = coco_eval(shapes, _truth(shapes, 0.1))  # IoU 0.818: matched at 0.50 ... 0.80, 7 of 10 thresholds
    assert tenth["AP"] == pytest.approx(0.7, abs=1e-12) and tenth["AR100"] == pytest.approx(0.7, abs=1e-12)
    assert tenth["AP50"] == tenth["AP75"] == 1.0
    third = coco_eval(shapes, _truth(shapes, 0.3))  # IoU 0.538: matched at 0.50 only
    assert third["AP"] == pytest.approx(0.1, abs=1e-12) and third["AP50"] == 1.0 and third["AP75"] == 0.0


def test_labels_go_through_the_category_mapping(shapes: CocoDetectionSet) -> None:
    k = shapes.num_labels
    rotated = {c: (label + 1) % k for c, label in shapes.category_to_label.items()}
    wrong = coco_eval(shapes, _truth(shapes, label_of=rotated))
    assert wrong["AP"] == wrong["AP50"] == wrong["AR100"] == 0.0
    mapping = {label: c for c, label in rotated.items()}
    assert coco_eval(shapes, _truth(shapes, label_of=rotated), mapping)["AP"] == 1.0


def test_no_detections_score_zero_without_raising(shapes: CocoDetectionSet) -> None:
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    for detections in ([empty] * len(shapes), {}):
        metrics = coco_eval(shapes, detections)
        assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["APs"] == metrics["AR100"] == 0.0
        assert metrics["APl"] == -1.0


def test_coco_eval_refuses_detections_that_do_not_fit(shapes: CocoDetectionSet) -> None:
    truth = _truth(shapes)
    with pytest.raises(BadInputError, match="detections for 5 images, the dataset has 6"):
        coco_eval(shapes, truth[:5])
    with pytest.raises(BadInputError, match="not in"):
        coco_eval(shapes, {999: truth[0]})
    bad = [dict(d) for d in truth]
    bad[0]["labels"] = torch.full_like(bad[0]["labels"], 7)
    with pytest.raises(BadInputError, match="label 7, which maps to no category"):
        coco_eval(shapes, bad)
    with pytest.raises(BadInputError, match="lack scores"):
        coco_eval(shapes, [{"boxes": d["boxes"], "labels": d["labels"]} for d in truth])


# --------------------------------------------------------------------------- evaluate_model


class _Oracle(nn.Module):
    """Answers each image, in dataset order, with its own ground truth (extra queries say no-object)."""

    def __init__(self, ds: CocoDetectionSet, queries: int = 5) -> None:
        super().__init__()
        self.targets = [ds[i][1] for i in range(len(ds))]
        self.k, self.queries, self.pos = ds.num_labels, queries, 0
        self.calls: list[tuple[tuple[int, ...], bool, bool, bool]] = []

    def answer(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b = pixel_values.shape[0]
        self.calls.append((tuple(pixel_values.shape), pixel_mask is not None, self.training, torch.is_grad_enabled()))
        logits = torch.full((b, self.queries, self.k + 1), -4.0)
        logits[..., self.k] = 4.0
        boxes = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(b, self.queries, 1)
        for i, t in enumerate(self.targets[self.pos : self.pos + b]):
            n = len(t["class_labels"])
            logits[i, :n, self.k] = -4.0
            logits[i, torch.arange(n), t["class_labels"]] = 4.0
            boxes[i, :n] = t["boxes"]
        self.pos += b
        return logits, boxes

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> Any:
        logits, boxes = self.answer(pixel_values, pixel_mask)
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


class _MasklessOracle(_Oracle):
    def forward(self, pixel_values: Tensor) -> Any:  # type: ignore[override]
        logits, boxes = self.answer(pixel_values, None)
        return {"logits": logits, "pred_boxes": boxes}


def test_evaluate_model_scales_predictions_back_to_the_original_pixels(shapes: CocoDetectionSet) -> None:
    small = CocoDetectionSet(shapes.folder, image_size=32)  # the model sees 32 px, the truth is at 64 px
    oracle = _Oracle(small)
    oracle.train()
    metrics = evaluate_model(oracle, small, batch_size=4)
    assert metrics["AP"] == metrics["AP50"] == metrics["AR100"] == 1.0
    assert oracle.calls == [((4, 3, 32, 32), True, False, False), ((2, 3, 32, 32), True, False, False)]
    assert oracle.training  # mode restored
    maskless = _MasklessOracle(small)
    assert evaluate_model(maskless, small, batch_size=6)["AP"] == 1.0
    assert maskless.calls == [((6, 3, 32, 32), False, False, False)]


def test_evaluate_model_runs_a_hugging_face_detr(shapes: CocoDetectionSet, detr: Any) -> None:
    metrics = evaluate_model(detr, shapes, batch_size=3)
    assert list(metrics) == list(METRICS)
    assert all(-1.0 <= v <= 1.0 and math.isfinite(v) for v in metrics.values())


def test_evaluate_model_refuses_a_training_set(shapes: CocoDetectionSet) -> None:
    train = CocoDetectionSet(shapes.folder, train=True)
    with pytest.raises(BadInputError, match="train=False"):
        evaluate_model(_Oracle(train), train)
    with pytest.raises(BadInputError, match="batch_size"):
        evaluate_model(_Oracle(shapes), shapes, batch_size=0)


def test_shapes_folder_round_trip(tmp_path: Path) -> None:
    make_shapes(tmp_path / "one", 2, seed=0, classes=("triangle", "square"))
    ds = CocoDetectionSet(tmp_path / "one")
    assert ds.category_names == {1: "triangle", 2: "square"}
    assert coco_eval(ds, _truth(ds))["AP"] == 1.0
