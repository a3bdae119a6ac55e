"""COCO-format detection data: two offline generators and a validating reader for DETR training.

Why generators: DETR needs a detection set that builds offline in seconds and whose boxes are exact,
so a failing run points at the model, not at the labels.

* :func:`make_shapes` draws squares, disks and triangles on a flat background. Every box is the tight
  box of the object's pixels (computed from the drawn mask), objects never touch (a one-pixel gap,
  8-connected), and two boxes overlap by at most ``max_iou`` IoU. Image ``i`` depends only on the seed
  and ``i`` (``numpy.random.SeedSequence(seed, spawn_key=(stream, i))``), so the same seed gives
  byte-identical files and a larger set starts with the smaller one.
* :func:`make_coins` cuts, flips and rescales scikit-image's ``coins`` photo; boxes come from region
  labelling (background flattened by a grey opening, Otsu, closing, hole filling, opening,
  ``skimage.measure.label``) carried through the same crop/flip/resize as the pixels.

Both write a COCO folder atomically (built in a hidden sibling folder, renamed into place)::

    out_dir/
      annotations.json        images, annotations (bbox [x, y, w, h] in pixels, area, iscrowd 0),
                              categories (ids 1..K), info, licenses
      images/000000.png ...   RGB PNG
      .slimkit-output.json    slimkit's output marker (a re-run may replace the folder)

:class:`CocoDetectionSet` reads any such folder (``annotations.json`` + ``images/<file_name>``), checks
it up front (one-line :class:`~slimkit.errors.BadInputError` naming the file or annotation), and yields
DETR inputs: ImageNet-normalised pixels and Hugging Face labels (normalised cxcywh boxes, contiguous
class labels). Boxes are normalised by the image's own size, before any batch padding (as the original
DETR does), so predictions scale back to pixels with the image's ``orig_size``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from scipy import ndimage as ndi
from skimage import data as skdata
from skimage import filters, measure, morphology
from skimage.transform import resize
from torch import Tensor
from torch.utils.data import Dataset

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import current_umask, load_json, save_json
from slimkit.paths import OUTPUT_MARKER, check_input_dir, check_output_dir

__all__ = [
    "ANNOTATIONS_FILE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGES_DIR",
    "SHAPES",
    "CocoDetectionSet",
    "collate",
    "make_coins",
    "make_shapes",
    "make_shapes_splits",
]

SHAPES = ("square", "disk", "triangle")
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GENERATOR_VERSION = 1

SHAPES_KIND = "qdetr-shapes"
SPLITS_KIND = "qdetr-shapes-splits"
COINS_KIND = "qdetr-coins"

_MIN_CONTRAST = 80  # an object's colour differs from the background by this much in some channel
_TRIES_PER_OBJECT = 200
_EDGE_TOLERANCE = 0.01  # pixels a box may poke out of its image (float rounding in user files)
_COIN_MIN_AREA_FULL = 300  # regions smaller than this in the full photo are specks, not coins

# Streams of SeedSequence spawn keys: make_shapes, the two splits and make_coins never share images.
_STREAM_SHAPES, _STREAM_TRAIN, _STREAM_VAL, _STREAM_COINS = 0, 1, 2, 3


# --------------------------------------------------------------------------- argument checks


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadInputError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise BadInputError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInputError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise BadInputError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class _ShapeParams:
    image_size: int
    classes: tuple[str, ...]
    min_objects: int
    max_objects: int
    min_size: int
    max_size: int
    max_iou: float

    @classmethod
    def checked(
        cls,
        image_size: int,
        classes: Sequence[str],
        min_objects: int,
        max_objects: int,
        min_size: int,
        max_size: int,
        max_iou: float,
    ) -> _ShapeParams:
        image_size = _check_int("image_size", image_size, 8)
        if isinstance(classes, str) or not classes:
            raise BadInputError(f"classes must be a non-empty list of shape names from {', '.join(SHAPES)}")
        names = tuple(classes)
        unknown = [c for c in names if c not in SHAPES]
        if unknown:
            raise BadInputError(f"unknown shape class(es) {', '.join(map(repr, unknown))}; known: {', '.join(SHAPES)}")
        if len(set(names)) != len(names):
            raise BadInputError(f"classes must not repeat a shape, got {', '.join(names)}")
        min_objects = _check_int("min_objects", min_objects, 1)
        max_objects = _check_int("max_objects", max_objects, min_objects)
        min_size = _check_int("min_size", min_size, 4, image_size)
        max_size = _check_int("max_size", max_size, min_size, image_size)
        max_iou = _check_float("max_iou", max_iou, 0.0, 1.0)
        return cls(image_size, names, min_objects, max_objects, min_size, max_size, max_iou)

    def info(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "classes": list(self.classes)}


# --------------------------------------------------------------------------- atomic COCO folders


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out``; an existing (checked) ``out`` goes away whole."""
    try:
        os.replace(staging, out)  # a missing or empty ``out``
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _staged_folder(out_dir: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``out_dir``; when the block succeeds it becomes ``out_dir``.

    A killed run leaves only the hidden staging folder, never a half-written ``out_dir``.
    """
    out = check_output_dir(out_dir, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        yield staging
        save_json(staging / OUTPUT_MARKER, {"kind": kind})
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _png_bytes(img: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class _CocoWriter:
    """Collects one COCO folder's records and writes its images as they come."""

    def __init__(self, folder: Path, categories: Sequence[str], supercategory: str) -> None:
        self.folder = folder
        (folder / IMAGES_DIR).mkdir(parents=True)
        self.categories = [{"id": i + 1, "name": n, "supercategory": supercategory} for i, n in enumerate(categories)]
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, img: np.ndarray, objects: Sequence[tuple[int, tuple[int, int, int, int], int]]) -> None:
        """One RGB uint8 image and its objects as ``(category_id, (x, y, w, h), area)``."""
        image_id = len(self.images) + 1
        name = f"{image_id - 1:06d}.png"
        (self.folder / IMAGES_DIR / name).write_bytes(_png_bytes(img))
        h, w = img.shape[:2]
        self.images.append({"id": image_id, "file_name": name, "width": int(w), "height": int(h)})
        for category_id, box, area in objects:
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [int(v) for v in box],
                    "area": int(area),
                    "iscrowd": 0,
                }
            )

    def finish(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``annotations.json`` and return the folder's summary."""
        save_json(
            self.folder / ANNOTATIONS_FILE,
            {
                "info": dict(info),
                "licenses": [],
                "images": self.images,
                "annotations": self.annotations,
                "categories": self.categories,
            },
        )
        names = {c["id"]: c["name"] for c in self.categories}
        per_category = dict.fromkeys(names.values(), 0)
        for ann in self.annotations:
            per_category[names[ann["category_id"]]] += 1
        return {"images": len(self.images), "annotations": len(self.annotations), "per_category": per_category}


# --------------------------------------------------------------------------- shapes


def _shape_mask(kind: str, size: int, quarter_turns: int) -> np.ndarray:
    """A boolean mask of one shape drawn in a ``size`` square, cropped to its tight extent."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    half = size / 2.0
    if kind == "square":
        mask = np.ones((size, size), dtype=bool)
    elif kind == "disk":
        mask = (xx - half) ** 2 + (yy - half) ** 2 <= half**2
    else:  # triangle: apex at the top centre, base along the bottom edge, then turned
        mask = np.rot90(2.0 * np.abs(xx - half) <= yy, k=quarter_turns)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _colour(rng: np.random.Generator, avoid: np.ndarray | None) -> np.ndarray:
    while True:
        c = rng.integers(0, 256, size=3)
        if avoid is None or int(np.abs(c - avoid).max()) >= _MIN_CONTRAST:
            return c.astype(np.uint8)


def _shapes_image(
    p: _ShapeParams, seq: np.random.SeedSequence
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], int]]]:
    """One image and its objects ``(category_id, (x, y, w, h), area)``; a pure function of ``seq``."""
    rng = np.random.default_rng(seq)
    size = p.image_size
    background = _colour(rng, None)
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = background
    taken = np.zeros((size + 2, size + 2), dtype=bool)  # object pixels, padded by one on every side
    ring = np.ones((3, 3), dtype=bool)
    wanted = int(rng.integers(p.min_objects, p.max_objects + 1))
    objects: list[tuple[int, tuple[int, int, int, int], int]] = []
    for _ in range(_TRIES_PER_OBJECT * wanted):
        if len(objects) == wanted:
            break
        label = int(rng.integers(len(p.classes)))
        side = int(rng.integers(p.min_size, p.max_size + 1))
        mask = _shape_mask(p.classes[label], side, int(rng.integers(4)))
        h, w = mask.shape
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = (x, y, w, h)
        if any(_box_iou(box, other) > p.max_iou for _, other, _ in objects):
            continue
        grown = ndi.binary_dilation(np.pad(mask, 1), structure=ring)
        if (taken[y : y + h + 2, x : x + w + 2] & grown).any():
            continue
        img[y : y + h, x : x + w][mask] = _colour(rng, background)
        taken[y + 1 : y + h + 1, x + 1 : x + w + 1] |= mask
        objects.append((label + 1, box, int(mask.sum())))
    if len(objects) < p.min_objects:
        raise BadInputError(
            f"could not place {p.min_objects} non-touching objects of {p.min_size}-{p.max_size} px with IoU <= "
            f"{p.max_iou} in a {size}x{size} image; lower min_objects or max_size, or raise image_size"
        )
    return img, objects


def _write_shapes(folder: Path, n_images: int, seed: int, stream: int, p: _ShapeParams) -> dict[str, Any]:
    writer = _CocoWriter(folder, p.classes, "shape")
    for i in range(n_images):
        img, objects = _shapes_image(p, np.random.SeedSequence(seed, spawn_key=(stream, i)))
        writer.add(img, objects)
    info = {
        "description": "qdetr synthetic shapes",
        "generator": "qdetr.data.make_shapes",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "stream": stream,
        "params": p.info(),
    }
    return {"folder": str(folder), "seed": seed, **writer.finish(info)}


def make_shapes(
    out_dir: str | os.PathLike[str],
    n_images: int,
    seed: int,
    image_size: int = 64,
    classes: Sequence[str] = SHAPES,
    min_objects: int = 1,
    max_objects: int = 3,
    min_size: int = 12,
    max_size: int = 32,
    max_iou: float = 0.1,
) -> dict[str, Any]:
    """Write a synthetic shapes COCO folder (see the module docstring); returns a summary dict.

    Each image holds ``min_objects..max_objects`` shapes of side ``min_size..max_size`` pixels in
    random colours; categories are ``classes`` in order, ids ``1..K``; an annotation's ``area`` is its
    object's pixel count.
    """
    p = _ShapeParams.checked(image_size, classes, min_objects, max_objects, min_size, max_size, max_iou)
    n_images = _check_int("n_images", n_images, 1)
    seed = _check_int("seed", seed, 0)
    with _staged_folder(out_dir, SHAPES_KIND) as staging:
        summary = _write_shapes(staging, n_images, seed, _STREAM_SHAPES, p)
    return {**summary, "folder": os.fspath(out_dir)}


def make_shapes_splits(
    out_dir: str | os.PathLike[str],
    n_train: int,
    n_val: int,
    seed: int,
    image_size: int = 64,
    classes: Sequence[str] = SHAPES,
    min_objects: int = 1,
    max_objects: int = 3,
    min_size: int = 12,
    max_size: int = 32,
    max_iou: float = 0.1,
) -> dict[str, Any]:
    """Write ``out_dir/train`` and ``out_dir/val`` shapes folders (disjoint random streams of ``seed``).

    Both land together, atomically; returns ``{"train": summary, "val": summary}``.
    """
    p = _ShapeParams.checked(image_size, classes, min_objects, max_objects, min_size, max_size, max_iou)
    n_train = _check_int("n_train", n_train, 1)
    n_val = _check_int("n_val", n_val, 1)
    seed = _check_int("seed", seed, 0)
    with _staged_folder(out_dir, SPLITS_KIND) as staging:
        train = _write_shapes(staging / "train", n_train, seed, _STREAM_TRAIN, p)
        val = _write_shapes(staging / "val", n_val, seed, _STREAM_VAL, p)
    out = Path(out_dir)
    return {"train": {**train, "folder": str(out / "train")}, "val": {**val, "folder": str(out / "val")}}


# --------------------------------------------------------------------------- coins


@functools.cache
def _coin_labels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``coins`` photo (grey uint8) and its coin label image (int32, 0 = background)."""
    photo = np.asarray(skdata.coins(), dtype=np.uint8)
    grey = photo.astype(np.float64)
    flat = grey - ndi.grey_opening(grey, size=(61, 61))  # remove the uneven lighting
    mask = flat > filters.threshold_otsu(flat)
    mask = ndi.binary_fill_holes(morphology.closing(mask, morphology.disk(2)))
    mask = morphology.opening(mask, morphology.disk(3))
    labels = measure.label(mask).astype(np.int32)
    for region in measure.regionprops(labels):
        if region.area < _COIN_MIN_AREA_FULL:
            labels[labels == region.label] = 0
    return photo, labels


def _coins_image(
    seq: np.random.SeedSequence, image_size: int, min_crop: float, min_area: int
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], int]]]:
    photo, labels = _coin_labels()
    rng = np.random.default_rng(seq)
    height, width = photo.shape
    side = max(1, round(float(rng.uniform(min_crop, 1.0)) * min(height, width)))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = photo[top : top + side, left : left + side]
    lab = labels[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop, lab = crop[:, ::-1], lab[:, ::-1]
    if rng.random() < 0.5:
        crop, lab = crop[::-1], lab[::-1]
    shape = (image_size, image_size)
    grey = resize(crop.astype(np.float64), shape, order=1, anti_aliasing=True, preserve_range=True)
    lab = resize(lab, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    img = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    objects = []
    for region in measure.regionprops(lab):
        if region.area < min_area:
            continue
        r0, c0, r1, c1 = region.bbox
        objects.append((1, (int(c0), int(r0), int(c1 - c0), int(r1 - r0)), int(region.area)))
    return img, objects


def make_coins(
    out_dir: str | os.PathLike[str],
    n_images: int,
    seed: int,
    image_size: int = 128,
    min_crop: float = 0.5,
    min_area: int = 16,
) -> dict[str, Any]:
    """Write a one-class ("coin") COCO folder of crops of scikit-image's ``coins`` photo.

    Each image is a random square crop (side ``min_crop..1`` of the photo's height), flipped at random
    either way and resized to ``image_size``; a coin's box is the tight box of its label region after
    the same transform (cut coins keep the box of their visible part); regions under ``min_area``
    output pixels are dropped. Returns a summary dict.
    """
    n_images = _check_int("n_images", n_images, 1)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 16)
    min_crop = _check_float("min_crop", min_crop, 0.05, 1.0)
    min_area = _check_int("min_area", min_area, 1)
    with _staged_folder(out_dir, COINS_KIND) as staging:
        writer = _CocoWriter(staging, ["coin"], "coin")
        for i in range(n_images):
            seq = np.random.SeedSequence(seed, spawn_key=(_STREAM_COINS, i))
            writer.add(*_coins_image(seq, image_size, min_crop, min_area))
        info = {
            "description": "crops of scikit-image's coins photo, boxes from region labelling",
            "generator": "qdetr.data.make_coins",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "params": {"image_size": image_size, "min_crop": min_crop, "min_area": min_area},
        }
        summary = writer.finish(info)
    return {"folder": os.fspath(out_dir), "seed": seed, **summary}


# --------------------------------------------------------------------------- reading and validation


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _records(data: Any, key: str, where: Path) -> list[dict[str, Any]]:
    items = data.get(key)
    if not isinstance(items, list):
        raise CorruptFileError(f"{where}: '{key}' must be a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CorruptFileError(f"{where}: {key}[{i}] must be an object, got {type(item).__name__}")
    return items


def _check_categories(data: Any, where: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for i, cat in enumerate(_records(data, "categories", where)):
        cid = cat.get("id")
        if not _is_int(cid):
            raise CorruptFileError(f"{where}: categories[{i}] has no integer id")
        if cid in names:
            raise CorruptFileError(f"{where}: category id {cid} appears twice")
        names[cid] = str(cat.get("name", cid))
    if not names:
        raise BadInputError(f"{where}: no categories")
    return names


def _image_size_on_disk(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; unreadable files are a CorruptFileError naming them."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise CorruptFileError(f"unreadable image {path}: {exc}") from None


def _check_images(data: Any, where: Path, image_dir: Path) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, rec in enumerate(_records(data, "images", where)):
        iid, name, width, height = rec.get("id"), rec.get("file_name"), rec.get("width"), rec.get("height")
        if not _is_int(iid):
            raise CorruptFileError(f"{where}: images[{i}] has no integer id")
        if iid in seen:
            raise CorruptFileError(f"{where}: image id {iid} appears twice")
        seen.add(iid)
        if not isinstance(name, str) or not name:
            raise CorruptFileError(f"{where}: image {iid} has no file_name")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise CorruptFileError(f"{where}: image {iid} needs positive integer width and height")
        path = image_dir / name
        if not path.is_file():
            raise BadInputError(f"{where}: image {iid} file not found: {path}")
        found = _image_size_on_disk(path)
        if found != (width, height):
            raise CorruptFileError(
                f"{path} is {found[0]}x{found[1]} pixels but {where} says {width}x{height} (image {iid})"
            )
        images.append({"id": iid, "file_name": name, "width": width, "height": height})
    if not images:
        raise BadInputError(f"{where}: no images")
    return images


def _check_annotations(
    data: Any, where: Path, images: Mapping[int, dict[str, Any]], categories: Mapping[int, str]
) -> list[dict[str, Any]]:
    anns: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, rec in enumerate(_records(data, "annotations", where)):
        aid = rec.get("id")
        if not _is_int(aid):
            raise CorruptFileError(f"{where}: annotations[{i}] has no integer id")
        if aid in seen:
            raise CorruptFileError(f"{where}: annotation id {aid} appears twice")
        seen.add(aid)
        what = f"{where}: annotation {aid}"
        iid = rec.get("image_id")
        image = images.get(iid) if _is_int(iid) else None
        if image is None:
            raise BadInputError(f"{what} refers to image_id {rec.get('image_id')!r}, which is not in images")
        cid = rec.get("category_id")
        if not _is_int(cid) or cid not in categories:
            known = ", ".join(str(c) for c in sorted(categories))
            raise BadInputError(f"{what} has category_id {cid!r}, which is not in categories ({known})")
        bbox = rec.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise CorruptFileError(f"{what}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise BadInputError(f"{what} has a non-positive width or height: bbox {bbox}")
        width, height = image["width"], image["height"]
        tol = _EDGE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise BadInputError(
                f"{what}: bbox {bbox} lies outside its image {image['id']} ({image['file_name']}, {width}x{height})"
            )
        area, crowd = rec.get("area", w * h), rec.get("iscrowd", 0)
        if not _is_number(area) or area < 0:
            raise CorruptFileError(f"{what}: area must be a non-negative number, got {area!r}")
        if crowd not in (0, 1) or isinstance(crowd, bool):
            raise CorruptFileError(f"{what}: iscrowd must be 0 or 1, got {crowd!r}")
        anns.append(
            {
                "id": aid,
                "image_id": image["id"],
                "category_id": cid,
                "bbox": [x, y, w, h],
                "area": area,
                "iscrowd": crowd,
            }
        )
    return anns


def _coco_index(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _resized_hw(height: int, width: int, image_size: int | None) -> tuple[int, int]:
    """The longer side becomes ``image_size``; the aspect ratio is kept."""
    if image_size is None:
        return height, width
    scale = image_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class CocoDetectionSet(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """A COCO folder as DETR inputs, validated when built.

    ``folder`` holds ``annotations.json`` and ``images/<file_name>``. ``image_size`` (optional) resizes
    each image so its longer side is that many pixels (aspect kept); ``train=True`` adds a random
    horizontal flip (drawn from torch's global generator). Item ``i``: ``(pixel_values [3, H, W]``
    ImageNet-normalised, ``target)`` with ``class_labels`` (``[n]`` int64, index into
    :attr:`categories`), ``boxes`` (``[n, 4]`` float32 normalised cxcywh), ``image_id`` (``[1]``),
    ``orig_size`` and ``size`` (``[2]`` = ``(h, w)`` before and after resizing). Crowd annotations
    are left out of the targets but kept in :attr:`coco` (pycocotools ignores matches to them).
    """

    def __init__(self, folder: str | os.PathLike[str], image_size: int | None = None, train: bool = False) -> None:
        self.folder = check_input_dir(folder, "COCO folder")
        if image_size is not None:
            image_size = _check_int("image_size", image_size, 1)
        self.image_size = image_size
        self.train = bool(train)
        where = self.folder / ANNOTATIONS_FILE
        if not where.is_file():
            raise BadInputError(f"{self.folder} has no {ANNOTATIONS_FILE} (a COCO folder holds it and {IMAGES_DIR}/)")
        data = load_json(where)
        if not isinstance(data, dict):
            raise CorruptFileError(f"{where}: expected a JSON object with images, annotations and categories")
        names = _check_categories(data, where)
        images = _check_images(data, where, self.folder / IMAGES_DIR)
        by_id = {img["id"]: img for img in images}
        anns = _check_annotations(data, where, by_id, names)

        self.categories: list[int] = sorted(names)
        self.category_names: dict[int, str] = {c: names[c] for c in self.categories}
        self.label_to_category: dict[int, int] = dict(enumerate(self.categories))
        self.category_to_label: dict[int, int] = {c: i for i, c in enumerate(self.categories)}
        self.image_ids: list[int] = [img["id"] for img in images]
        self._images = images
        self._anns: dict[int, list[dict[str, Any]]] = {iid: [] for iid in self.image_ids}
        for ann in anns:
            self._anns[ann["image_id"]].append(ann)
        self.coco = _coco_index(
            {
                "info": data.get("info", {}) if isinstance(data.get("info"), dict) else {},
                "licenses": data.get("licenses", []) if isinstance(data.get("licenses"), list) else [],
                "images": images,
                "annotations": anns,
                "categories": [{"id": c, "name": names[c]} for c in self.categories],
            }
        )
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def num_labels(self) -> int:
        """K, the number of object classes (DETR adds the no-object class K)."""
        return len(self.categories)

    @property
    def label_categories(self) -> list[tuple[int, str]]:
        """``(COCO category id, name)`` of each label index, in label order (what a model trained on it predicts)."""
        return [(c, self.category_names[c]) for c in self.categories]

    def _read(self, rec: Mapping[str, Any]) -> Tensor:
        path = self.folder / IMAGES_DIR / rec["file_name"]
        try:
            with Image.open(path) as im:
                arr = np.array(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise CorruptFileError(f"unreadable image {path}: {exc}") from None
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def targets(self, index: int) -> tuple[Tensor, Tensor]:
        """``(class_labels [n], boxes [n, 4] normalised cxcywh)`` of image ``index``, unflipped."""
        rec = self._images[index]
        width, height = float(rec["width"]), float(rec["height"])
        labels, boxes = [], []
        for ann in self._anns[rec["id"]]:
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            if x < 0 or y < 0 or x + w > width or y + h > height:  # within the tolerance: clip
                x1, y1 = min(x + w, width), min(y + h, height)
                x, y = max(x, 0.0), max(y, 0.0)
                w, h = x1 - x, y1 - y
            boxes.append([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
            labels.append(self.category_to_label[ann["category_id"]])
        box_t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4).to(torch.float32)
        return torch.tensor(labels, dtype=torch.int64), box_t

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self._images[index]
        pixels = self._read(rec)
        height, width = int(rec["height"]), int(rec["width"])
        new_hw = _resized_hw(height, width, self.image_size)
        if new_hw != (height, width):
            pixels = F.interpolate(pixels[None], size=new_hw, mode="bilinear", align_corners=False, antialias=True)[0]
        labels, boxes = self.targets(index)
        if self.train and bool(torch.rand(()) < 0.5):
            pixels = pixels.flip(-1)
            boxes = boxes.clone()
            boxes[:, 0] = 1.0 - boxes[:, 0]
        pixels = (pixels - self._mean) / self._std
        target = {
            "class_labels": labels,
            "boxes": boxes,
            "image_id": torch.tensor([rec["id"]], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor(new_hw, dtype=torch.int64),
        }
        return pixels, target


def collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> dict[str, Any]:
    """Stack a batch for DETR: pixels zero-padded bottom/right to the largest image, and the mask of real pixels.

    Returns ``{"pixel_values": [B, 3, H, W], "pixel_mask": [B, H, W] int64 (1 = image), "labels": [target, ...]}``.
    """
    if not batch:
        raise BadInputError("cannot collate an empty batch")
    height = max(int(p.shape[-2]) for p, _ in batch)
    width = max(int(p.shape[-1]) for p, _ in batch)
    first = batch[0][0]
    pixel_values = first.new_zeros((len(batch), first.shape[0], height, width))
    pixel_mask = torch.zeros((len(batch), height, width), dtype=torch.int64)
    for i, (pixels, _) in enumerate(batch):
        h, w = pixels.shape[-2:]
        pixel_values[i, :, :h, :w] = pixels
        pixel_mask[i, :h, :w] = 1
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": [t for _, t in batch]}
