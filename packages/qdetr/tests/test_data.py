"""COCO folders: the shapes/coins generators (tight boxes, overlap limit, determinism, atomic writes)
and CocoDetectionSet (hand-checked targets, padding, one-line validation errors)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import measure

import qdetr.data as qdata
from qdetr.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoDetectionSet,
    collate,
    make_coins,
    make_shapes,
    make_shapes_splits,
)
from slimkit.errors import BadInputError, CorruptFileError


def _coco(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "annotations.json").read_text())


def _pixels(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "images" / name).convert("RGB"))


def _iou(a: list[int], b: list[int]) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "set"
    make_shapes(out, 16, seed=3)
    return out


# --------------------------------------------------------------------------- make_shapes


def test_each_box_is_the_tight_box_of_exactly_one_drawn_object(shapes: Path) -> None:
    coco = _coco(shapes)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert [names[i] for i in sorted(names)] == ["square", "disk", "triangle"]
    assert {c["id"] for c in coco["categories"]} == {1, 2, 3}
    for img in coco["images"]:
        pixels = _pixels(shapes, img["file_name"])
        assert pixels.shape == (64, 64, 3) and (img["width"], img["height"]) == (64, 64)
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        background = colours[counts.argmax()]
        foreground = (pixels != background).any(-1)
        regions = measure.regionprops(measure.label(foreground, connectivity=2))
        found = {(r.bbox[1], r.bbox[0], r.bbox[3] - r.bbox[1], r.bbox[2] - r.bbox[0]): r for r in regions}
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        # Objects never touch, so the 8-connected blobs of non-background pixels are the objects, one to one.
        assert sorted(found) == sorted(tuple(a["bbox"]) for a in anns)
        for ann in anns:
            region = found[tuple(ann["bbox"])]
            x, y, w, h = ann["bbox"]
            assert ann["area"] == region.area and ann["iscrowd"] == 0
            assert len(np.unique(pixels[region.coords[:, 0], region.coords[:, 1]], axis=0)) == 1  # one colour
            fill = region.area / (w * h)
            shape = names[ann["category_id"]]
            if shape == "square":
                assert w == h and fill == 1.0
            elif shape == "disk":
                assert w == h and 0.7 < fill < 0.85  # pi / 4 on a pixel grid
            else:
                assert max(w, h) - min(w, h) <= 1 and 0.4 < fill < 0.62  # half the box
            assert 12 <= max(w, h) <= 32 and x + w <= 64 and y + h <= 64


def test_object_counts_and_overlap_limit(shapes: Path, tmp_path: Path) -> None:
    coco = _coco(shapes)
    per_image = {
        img["id"]: [a["bbox"] for a in coco["annotations"] if a["image_id"] == img["id"]] for img in coco["images"]
    }
    assert all(1 <= len(boxes) <= 3 for boxes in per_image.values())
    assert {len(b) for b in per_image.values()} == {1, 2, 3}
    pairs = [_iou(a, b) for boxes in per_image.values() for a, b in itertools.combinations(boxes, 2)]
    assert pairs and max(pairs) <= 0.1 and max(pairs) > 0  # some boxes do overlap, none beyond max_iou

    summary = make_shapes(
        tmp_path / "apart", 10, seed=1, min_objects=2, max_objects=4, min_size=8, max_size=16, max_iou=0.0
    )
    apart = _coco(tmp_path / "apart")
    boxes = {
        img["id"]: [a["bbox"] for a in apart["annotations"] if a["image_id"] == img["id"]] for img in apart["images"]
    }
    assert all(2 <= len(b) <= 4 for b in boxes.values())
    assert all(_iou(a, b) == 0.0 for bs in boxes.values() for a, b in itertools.combinations(bs, 2))
    assert summary["images"] == 10 and summary["annotations"] == len(apart["annotations"])
    assert sum(summary["per_category"].values()) == summary["annotations"]


def test_one_class_subset_is_category_one(tmp_path: Path) -> None:
    make_shapes(tmp_path / "disks", 3, seed=0, classes=("disk",))
    coco = _coco(tmp_path / "disks")
    assert coco["categories"] == [{"id": 1, "name": "disk", "supercategory": "shape"}]
    assert {a["category_id"] for a in coco["annotations"]} == {1}


def test_same_seed_same_bytes_and_a_longer_set_extends_a_shorter_one(tmp_path: Path) -> None:
    make_shapes(tmp_path / "a", 4, seed=5)
    make_shapes(tmp_path / "b", 4, seed=5)
    make_shapes(tmp_path / "c", 4, seed=6)
    make_shapes(tmp_path / "d", 2, seed=5)
    a, b, c, d = (_files(tmp_path / n) for n in "abcd")
    assert a == b
    assert len({v for k, v in a.items() if k.startswith("images/")}) == 4  # every image is a new draw
    assert a["annotations.json"] != c["annotations.json"]
    assert all(a[k] != c[k] for k in a if k.startswith("images/"))
    assert {k: v for k, v in d.items() if k.startswith("images/")} == {
        k: v for k, v in a.items() if k in ("images/000000.png", "images/000001.png")
    }
    assert sorted(a) == [".slimkit-output.json", "annotations.json", *[f"images/00000{i}.png" for i in range(4)]]


def test_rerun_replaces_the_folder_a_failed_run_leaves_it_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "set"
    make_shapes(out, 4, seed=0)
    make_shapes(out, 2, seed=1)  # same kind: replaced whole, no stale images
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    before = _files(out)

    real = qdata._shapes_image

    def dies_on_third(p: Any, seq: np.random.SeedSequence) -> Any:
        if seq.spawn_key[-1] == 2:
            raise KeyboardInterrupt  # a killed run, after two images were written
        return real(p, seq)

    monkeypatch.setattr(qdata, "_shapes_image", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        make_shapes(out, 5, seed=2)
    with pytest.raises(KeyboardInterrupt):
        make_shapes(tmp_path / "fresh", 5, seed=2)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no fresh folder, no staging leftovers


def test_refuses_a_foreign_folder_and_bad_parameters(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(BadInputError, match="not empty"):
        make_shapes(tmp_path / "mine", 2, seed=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    for kwargs, message in [
        ({"classes": ("square", "hexagon")}, "unknown shape"),
        ({"min_size": 20, "max_size": 10}, "max_size"),
        ({"max_size": 65}, "max_size"),
        ({"max_iou": 1.5}, "max_iou"),
        ({"min_objects": 0}, "min_objects"),
        ({"seed": -1}, "seed"),
    ]:
        args = {"seed": 0, **kwargs}
        with pytest.raises(BadInputError, match=message):
            make_shapes(tmp_path / "bad", 2, **args)
    with pytest.raises(BadInputError, match="could not place 3"):
        make_shapes(tmp_path / "bad", 1, seed=0, image_size=16, min_objects=3, min_size=12, max_size=12)
    assert not (tmp_path / "bad").exists()


def test_splits_are_two_different_coco_folders(tmp_path: Path) -> None:
    summary = make_shapes_splits(tmp_path / "s", 3, 2, seed=0)
    assert (summary["train"]["images"], summary["val"]["images"]) == (3, 2)
    train, val = _files(tmp_path / "s" / "train"), _files(tmp_path / "s" / "val")
    assert not {v for k, v in train.items() if k.startswith("images/")} & {
        v for k, v in val.items() if k.startswith("images/")
    }
    assert len(CocoDetectionSet(tmp_path / "s" / "train")) == 3 and len(CocoDetectionSet(tmp_path / "s" / "val")) == 2
    make_shapes_splits(tmp_path / "t", 3, 2, seed=0)
    assert _files(tmp_path / "s") == _files(tmp_path / "t")


# --------------------------------------------------------------------------- make_coins


def test_coin_labelling_finds_the_24_coins() -> None:
    photo, labels = qdata._coin_labels()
    assert photo.shape == labels.shape == (303, 384)
    assert len(np.unique(labels[labels > 0])) == 24


def test_make_coins_is_deterministic_and_boxes_fit(tmp_path: Path) -> None:
    summary = make_coins(tmp_path / "a", 3, seed=0, image_size=64)
    make_coins(tmp_path / "b", 3, seed=0, image_size=64)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    coco = _coco(tmp_path / "a")
    assert coco["categories"] == [{"id": 1, "name": "coin", "supercategory": "coin"}]
    assert summary["annotations"] == len(coco["annotations"]) >= 3
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and 16 <= ann["area"] <= w * h
    img = _pixels(tmp_path / "a", "000000.png")
    assert img.shape == (64, 64, 3) and (img[..., 0] == img[..., 2]).all()
    ds = CocoDetectionSet(tmp_path / "a")
    assert ds.categories == [1] and len(ds) == 3


# --------------------------------------------------------------------------- CocoDetectionSet


def _write_folder(folder: Path, coco: dict[str, Any], sizes: dict[str, tuple[int, int]]) -> None:
    """A COCO folder by hand: ``sizes`` maps file name -> (width, height) of a deterministic image."""
    (folder / "images").mkdir(parents=True)
    for k, (name, (w, h)) in enumerate(sizes.items()):
        arr = (np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) * (7 + k)) % 251
        Image.fromarray(arr.astype(np.uint8)).save(folder / "images" / name)
    (folder / "annotations.json").write_text(json.dumps(coco))


def _hand_coco() -> dict[str, Any]:
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 4, "file_name": "b.png", "width": 20, "height": 50},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2.5, 3.0, 10.0, 6.25], "area": 62.5, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [5, 5, 5, 5], "area": 25, "iscrowd": 1},
            {"id": 5, "image_id": 4, "category_id": 3, "bbox": [1.0, 17.5, 18.0, 30.5]},
        ],
    }


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    folder = tmp_path / "hand"
    _write_folder(folder, _hand_coco(), {"a.png": (40, 30), "b.png": (20, 50)})
    return folder


def _cxcywh(bbox: list[float], width: int, height: int) -> list[float]:
    x, y, w, h = bbox
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]


def test_targets_are_normalised_cxcywh_by_hand(hand: Path) -> None:
    ds = CocoDetectionSet(hand)
    assert ds.categories == [3, 7] and ds.label_to_category == {0: 3, 1: 7} and ds.category_to_label == {3: 0, 7: 1}
    assert ds.category_names == {3: "dog", 7: "cat"} and ds.num_labels == 2 and ds.image_ids == [10, 4]
    pixels, target = ds[0]
    assert set(target) == {"class_labels", "boxes", "image_id", "orig_size", "size"}
    assert target["class_labels"].tolist() == [1, 0]  # the crowd box is left out
    expected = [_cxcywh([2.5, 3.0, 10.0, 6.25], 40, 30), [0.5, 0.5, 1.0, 1.0]]
    assert target["boxes"].dtype == torch.float32 and torch.equal(target["boxes"], torch.tensor(expected))
    assert target["image_id"].tolist() == [10] and target["orig_size"].tolist() == [30, 40]
    raw = torch.from_numpy(np.array(Image.open(hand / "images" / "a.png"))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert pixels.shape == (3, 30, 40) and torch.allclose(pixels, (raw - mean) / std, atol=1e-6)
    _, second = ds[1]
    assert torch.equal(second["boxes"], torch.tensor([_cxcywh([1.0, 17.5, 18.0, 30.5], 20, 50)]))
    assert second["class_labels"].tolist() == [0] and second["orig_size"].tolist() == [50, 20]
    # pycocotools' index holds every annotation, with area filled in where the file had none.
    assert sorted(ds.coco.getAnnIds()) == [1, 2, 3, 5] and ds.coco.anns[5]["area"] == 18.0 * 30.5
    assert ds.coco.anns[3]["iscrowd"] == 1


def test_resize_keeps_aspect_and_normalised_boxes(hand: Path) -> None:
    plain, small = CocoDetectionSet(hand), CocoDetectionSet(hand, image_size=25)
    for i, hw in [(0, [19, 25]), (1, [25, 10])]:
        pixels, target = small[i]
        assert list(pixels.shape[1:]) == hw and target["size"].tolist() == hw
        assert torch.equal(target["boxes"], plain[i][1]["boxes"])
        assert target["orig_size"].tolist() == plain[i][1]["orig_size"].tolist()


def test_train_flip_mirrors_pixels_and_box_centres(hand: Path) -> None:
    plain, train = CocoDetectionSet(hand), CocoDetectionSet(hand, train=True)
    pixels, target = plain[0]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        p, t = train[0]
        flipped = not torch.equal(p, pixels)
        seen.add(flipped)
        if flipped:
            assert torch.equal(p, pixels.flip(-1))
            assert torch.equal(t["boxes"][:, 0], 1.0 - target["boxes"][:, 0])
            assert torch.equal(t["boxes"][:, 1:], target["boxes"][:, 1:])
    assert seen == {True, False}


def test_collate_pads_bottom_right_and_masks(hand: Path) -> None:
    ds = CocoDetectionSet(hand)
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 50, 40) and batch["pixel_mask"].dtype == torch.int64
    assert batch["pixel_mask"].sum(dim=(1, 2)).tolist() == [30 * 40, 50 * 20]
    assert torch.equal(batch["pixel_values"][0, :, :30, :40], ds[0][0])
    assert torch.equal(batch["pixel_values"][1, :, :50, :20], ds[1][0])
    assert batch["pixel_values"][0, :, 30:].abs().sum() == 0 and batch["pixel_values"][1, :, :, 20:].abs().sum() == 0
    assert [t["image_id"].item() for t in batch["labels"]] == [10, 4]
    with pytest.raises(BadInputError):
        collate([])


def _broken(coco: dict[str, Any], change: str) -> dict[str, Any]:
    anns = coco["annotations"]
    if change == "outside":
        anns[0]["bbox"] = [35, 3, 10, 5]
    elif change == "category":
        anns[0]["category_id"] = 9
    elif change == "size":
        anns[3]["bbox"] = [1, 1, 0, 4]
    elif change == "image_id":
        anns[0]["image_id"] = 99
    elif change == "bbox":
        anns[0]["bbox"] = [1, 2, 3]
    elif change == "dims":
        coco["images"][0]["width"] = 41
    elif change == "duplicate":
        anns[1]["id"] = 1
    return coco


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("outside", BadInputError, r"annotation 1: bbox \[35, 3, 10, 5\] lies outside its image 10 \(a.png, 40x30\)"),
        ("category", BadInputError, r"annotation 1 has category_id 9, which is not in categories \(3, 7\)"),
        ("size", BadInputError, r"annotation 5 has a non-positive width or height"),
        ("image_id", BadInputError, r"annotation 1 refers to image_id 99"),
        ("bbox", CorruptFileError, r"annotation 1: bbox must be 4 numbers"),
        ("dims", CorruptFileError, r"a.png is 40x30 pixels but .*annotations.json says 41x30"),
        ("duplicate", CorruptFileError, r"annotation id 1 appears twice"),
    ],
)
def test_bad_annotations_are_one_line_errors(tmp_path: Path, change: str, error: type, message: str) -> None:
    folder = tmp_path / "bad"
    _write_folder(folder, _broken(_hand_coco(), change), {"a.png": (40, 30), "b.png": (20, 50)})
    with pytest.raises(error, match=message) as info:
        CocoDetectionSet(folder)
    assert "\n" not in str(info.value) and "annotations.json" in str(info.value)


def test_bad_files_are_one_line_errors(hand: Path, tmp_path: Path) -> None:
    (hand / "images" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(CorruptFileError, match=r"unreadable image .*b\.png"):
        CocoDetectionSet(hand)
    (hand / "images" / "b.png").unlink()
    with pytest.raises(BadInputError, match=r"image 4 file not found: .*b\.png"):
        CocoDetectionSet(hand)
    (hand / "annotations.json").write_text('{"images": [')
    with pytest.raises(CorruptFileError, match=r"annotations\.json is not valid JSON"):
        CocoDetectionSet(hand)
    (hand / "annotations.json").write_text("[]")
    with pytest.raises(CorruptFileError, match="expected a JSON object"):
        CocoDetectionSet(hand)
    (hand / "annotations.json").unlink()
    with pytest.raises(BadInputError, match=r"has no annotations\.json"):
        CocoDetectionSet(hand)
    with pytest.raises(BadInputError, match="COCO folder not found"):
        CocoDetectionSet(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="image_size"):
        CocoDetectionSet(tmp_path, image_size=0)
