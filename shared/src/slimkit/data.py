"""Offline data: datasets that ship inside wheels, plus users' own image folders.

Nothing here downloads. ``digits`` is scikit-learn's 1,797 labelled 8x8 digits,
optionally upsampled so a ViT gets dozens of patches; ``crops`` and ``cluttered-digits``
are harder 32x32 RGB benchmark sets generated from bundled data and cached on disk
(:mod:`slimkit.datasets`); ``sample_images`` are scikit-image's bundled photos;
``image_folder`` reads class subfolders. :func:`resolve_dataset` maps a CLI ``--data``
value (a name in :data:`DATASETS` or a folder) to a dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from slimkit.datasets import (
    CLUTTERED_DIGITS,
    CROPS,
    GENERATED,
    ImageSet,
    cluttered_digits,
    generated_set,
    natural_crops,
    resized,
)
from slimkit.errors import BadInputError

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "ImageSet",
    "SKIMAGE_SAMPLES",
    "cluttered_digits",
    "digits",
    "first_inputs",
    "image_folder",
    "image_to_tensor",
    "natural_crops",
    "num_classes",
    "read_image",
    "resolve_dataset",
    "sample_images",
    "stratified_split",
]

#: Names a CLI's ``--data`` takes besides a folder: the bundled digits and the generated sets.
DATASETS: tuple[str, ...] = ("digits", CROPS, CLUTTERED_DIGITS)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SPLITS = ("train", "val", "all")


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class random split, so both halves keep the class balance."""
    if not 0.0 < val_fraction < 1.0:
        raise BadInputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if seed < 0:  # numpy refuses a negative seed with a ValueError (a traceback in a CLI)
        raise BadInputError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction))
        val_idx.extend(idx[:n_val].tolist())
        train_idx.extend(idx[n_val:].tolist())
    return np.sort(np.array(train_idx)), np.sort(np.array(val_idx))


def digits(
    split: str = "train",
    size: int = 8,
    channels: int = 1,
    val_fraction: float = 0.2,
    seed: int = 0,
    normalize: bool = True,
) -> TensorDataset:
    """scikit-learn digits as ``(images [N,C,size,size] float32, labels int64)``."""
    from sklearn.datasets import load_digits

    if split not in _SPLITS:
        raise BadInputError(f"split must be one of {_SPLITS}, got {split!r}")
    if size < 8:
        raise BadInputError(f"size must be >= 8 (the digits are 8x8), got {size}")
    if channels not in (1, 3):
        raise BadInputError(f"channels must be 1 or 3, got {channels}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels_np = bunch.target.astype(np.int64)
    if split != "all":
        train_idx, val_idx = stratified_split(labels_np, val_fraction, seed)
        keep = train_idx if split == "train" else val_idx
        images, labels_np = images[torch.from_numpy(keep)], labels_np[keep]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if normalize:
        images = (images - 0.5) / 0.5
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(images.contiguous(), torch.from_numpy(labels_np))


def _sklearn_sample(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    found = {Path(f).stem: img for f, img in zip(bunch.filenames, bunch.images, strict=True)}
    if name not in found:
        raise BadInputError(f"unknown scikit-learn sample image {name!r}; known: {', '.join(found)}")
    return np.asarray(found[name])


SKIMAGE_SAMPLES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "checkerboard", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip
"""scikit-image's single photos that ship inside its wheel (uint8, grey or RGB(A)): no download, no stacks."""


def sample_images(names: Sequence[str] | None = None, size: int | None = None) -> dict[str, np.ndarray]:
    """The bundled photos as RGB uint8 HWC arrays (optionally resized square): scikit-image's by name,
    scikit-learn's as ``"sklearn:china"`` / ``"sklearn:flower"``."""
    from skimage import data as skdata

    default = ("astronaut", "coffee", "chelsea", "rocket")
    chosen = tuple(names) if names else default
    out: dict[str, np.ndarray] = {}
    for name in chosen:
        if name.startswith("sklearn:"):
            out[name] = _sklearn_sample(name.split(":", 1)[1]).astype(np.uint8)
            continue
        if name not in SKIMAGE_SAMPLES:  # skimage.data also holds downloaders and image stacks
            raise BadInputError(f"unknown scikit-image sample {name!r}; use one of {', '.join(SKIMAGE_SAMPLES)}")
        img = np.asarray(getattr(skdata, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = img[..., :3]
        if size is not None:
            img = _resize_uint8(img, size)
        out[name] = img.astype(np.uint8)
    return out


def _resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def image_to_tensor(img: np.ndarray, size: int, channels: int = 3) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1], resized square: the transform digits also use."""
    arr = _resize_uint8(img if img.ndim == 3 else np.stack([img] * 3, -1), size)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
    if channels == 1:
        t = t.mean(0, keepdim=True)
    return (t - 0.5) / 0.5


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as RGB uint8 HWC; a missing or unreadable file is a BadInputError naming it."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInputError(f"unreadable image {p}: {exc}") from None


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """``root/<class>/<image>`` with the digits transform; fails early and clearly."""

    def __init__(self, root: str | os.PathLike[str], image_size: int, channels: int = 3) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise BadInputError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise BadInputError(f"expected a folder of class subfolders, got a file: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise BadInputError(f"no class subfolders in {self.root} (expected root/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            for path in sorted((self.root / cls).rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    self.samples.append((path, label))
        if not self.samples:
            raise BadInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return image_to_tensor(read_image(path), self.image_size, self.channels), label


def num_classes(data: Dataset[Any]) -> int:
    """Classes of a labelled set: its ``classes`` list (image folders, generated sets), else a tensor
    set's largest label + 1 (digits); anything else is a BadInputError naming its type."""
    classes = getattr(data, "classes", None)
    if classes:
        return len(classes)
    tensors = getattr(data, "tensors", None)
    if tensors is None:
        raise BadInputError(f"cannot tell the number of classes of {type(data).__name__}")
    return int(tensors[1].max()) + 1


def first_inputs(data: Dataset[Any], n: int | None = None) -> torch.Tensor:
    """The inputs of the first ``n`` items (every item with ``None``) stacked into one batch.

    Why: calibration and quantizer initialisation need one fixed batch that every process of a
    multi-process run reads the same way, whatever sampler the training uses.
    """
    count = len(data) if n is None else min(n, len(data))  # type: ignore[arg-type]
    return torch.stack([data[i][0] for i in range(count)])


def image_folder(path: str | os.PathLike[str], image_size: int, channels: int = 3) -> ImageFolder:
    """Users' own labelled images, one subfolder per class."""
    return ImageFolder(path, image_size, channels)


def resolve_dataset(
    spec: str,
    split: str = "train",
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset[tuple[torch.Tensor, int]]:
    """A name in :data:`DATASETS` (split by ``split``) or a folder path (used whole).

    ``digits`` has ``train``/``val``/``all``; the generated sets (``crops``, ``cluttered-digits``,
    default parameters) have ``train``/``val``/``test``/``all``, made at ``image_size`` up to 64
    pixels and resized per item above that; their cache lives in ``cache_dir``
    (default ``$SLIMKIT_CACHE`` or ``~/.cache/slimkit``).
    """
    if spec == "digits":
        if split == "test":
            raise BadInputError("digits has no test split (use train, val or all); crops and cluttered-digits do")
        return digits(split=split, size=image_size, channels=channels, seed=seed)  # type: ignore[return-value]
    if spec in GENERATED:
        if image_size < 8:
            raise BadInputError(f"image size must be >= 8 for {spec}, got {image_size}")
        native = min(image_size, 64)
        data = generated_set(spec, split, channels=channels, seed=seed, cache_dir=cache_dir, size=native)
        return resized(data, image_size)  # type: ignore[return-value]
    return image_folder(spec, image_size, channels)
