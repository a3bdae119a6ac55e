from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.data import digits, image_folder, resolve_dataset, sample_images, stratified_split
from slimkit.errors import BadInputError


def test_digits_split_is_stratified_and_disjoint() -> None:
    train, val = digits("train"), digits("val")
    assert len(train) + len(val) == 1797
    counts = torch.bincount(val.tensors[1], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~20% of each ~180-image class
    labels = np.arange(100) % 4
    a, b = stratified_split(labels, 0.25, 0)
    assert not set(a) & set(b) and len(a) + len(b) == 100


def test_digits_upsampled_rgb() -> None:
    ds = digits("val", size=32, channels=3)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_sample_images() -> None:
    imgs = sample_images(["astronaut", "camera"], size=64)
    assert imgs["astronaut"].shape == (64, 64, 3) and imgs["camera"].dtype == np.uint8
    with pytest.raises(BadInputError, match="unknown scikit-image sample"):
        sample_images(["nope"])


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = image_folder(tmp_path, 16)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"]
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and y == 1
    (tmp_path / "dog" / "bad.png").write_bytes(b"not an image")
    ds = image_folder(tmp_path, 16)
    with pytest.raises(BadInputError, match="unreadable image"):
        ds[len(ds) - 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        image_folder(tmp_path / "missing", 8)
    with pytest.raises(BadInputError, match="no class subfolders"):
        image_folder(tmp_path, 8)
    (tmp_path / "a").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        resolve_dataset(str(tmp_path))


def test_read_image(tmp_path: Path) -> None:
    from PIL import Image

    from slimkit.data import read_image

    Image.fromarray(np.full((5, 6), 200, np.uint8)).save(tmp_path / "g.png")  # grayscale -> RGB
    arr = read_image(tmp_path / "g.png")
    assert arr.shape == (5, 6, 3) and arr.dtype == np.uint8 and int(arr.max()) == 200
    with pytest.raises(BadInputError, match="image not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(BadInputError, match="unreadable image"):
        read_image(tmp_path / "bad.png")
