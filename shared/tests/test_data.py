from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from slimkit.data import (
    DATASETS,
    digits,
    first_inputs,
    image_folder,
    num_classes,
    resolve_dataset,
    sample_images,
    stratified_split,
)
from slimkit.datasets import (
    CLUTTERED_DIGITS,
    CROP_SOURCES,
    CROPS,
    SPLITS,
    ImageSet,
    _digit_pools,
    _params_for,
    build_arrays,
    cache_path,
    cache_stats,
    cluttered_digits,
    default_cache_dir,
    generated_set,
    natural_crops,
)
from slimkit.errors import BadInputError


def test_digits_split_is_stratified_and_disjoint() -> None:
    train, val = digits("train"), digits("val")
    assert len(train) + len(val) == 1797
    counts = torch.bincount(val.tensors[1], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~20% of each ~180-image class
    labels = np.arange(100) % 4
    a, b = stratified_split(labels, 0.25, 0)
    assert not set(a) & set(b) and len(a) + len(b) == 100
    # numpy refuses a negative seed with a ValueError: a CLI's --seed -1 printed a traceback
    with pytest.raises(BadInputError, match=r"^seed must be >= 0, got -1$"):
        digits("train", seed=-1)


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
    for not_a_photo in ("download_all", "lfw_subset", "cells3d"):  # a downloader, a stack of faces, a 3-D stack
        with pytest.raises(BadInputError, match="unknown scikit-image sample"):
            sample_images([not_a_photo])


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


# --------------------------------------------------------------------------- generated sets (crops, cluttered-digits)

SMALL_CROPS = {"size": 16, "num_classes": 4, "train_size": 40, "val_size": 12, "test_size": 12}
SMALL_DIGITS = {"size": 16, "train_size": 40, "val_size": 20, "test_size": 20, "clutter": 2}


def _arrays(name: str, seed: int = 0, **params: object) -> dict[str, torch.Tensor]:
    small = SMALL_CROPS if name == CROPS else SMALL_DIGITS
    return build_arrays(name, _params_for(name, **{**small, **params}), seed)


def test_dataset_names() -> None:
    assert DATASETS == ("digits", "crops", "cluttered-digits")
    assert len(CROP_SOURCES) == len(set(CROP_SOURCES)) >= 12


@pytest.mark.parametrize("name", [CROPS, CLUTTERED_DIGITS])
def test_generated_sets_are_deterministic_balanced_and_sized(name: str) -> None:
    a, b, other = _arrays(name, seed=3), _arrays(name, seed=3), _arrays(name, seed=4)
    small = SMALL_CROPS if name == CROPS else SMALL_DIGITS
    classes = small.get("num_classes", 10)
    for split in SPLITS:
        x, y = a[f"{split}.images"], a[f"{split}.labels"]
        assert torch.equal(x, b[f"{split}.images"]) and torch.equal(y, b[f"{split}.labels"])
        assert not torch.equal(x, other[f"{split}.images"])
        n = small[f"{split}_size"]
        assert x.shape == (n, 3, 16, 16) and x.dtype == torch.uint8 and y.shape == (n,) and y.dtype == torch.int64
        counts = torch.bincount(y, minlength=classes)
        assert len(counts) == classes and int(counts.max() - counts.min()) <= 1
        assert int(x.float().std()) > 10  # not blank
    # no image is in two splits
    seen = [{bytes(img.numpy().tobytes()) for img in a[f"{s}.images"]} for s in SPLITS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # val and test depend on the seed and their own size only
    bigger = _arrays(name, seed=3, train_size=small["train_size"] + 8)
    assert torch.equal(bigger["val.images"], a["val.images"]) and torch.equal(bigger["test.labels"], a["test.labels"])


def test_cluttered_digit_pools_are_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(10), 20)
    pools = _digit_pools(labels, np.random.default_rng(0))
    assert sum(len(p) for p in pools) == 200 and len(set(np.concatenate(pools).tolist())) == 200
    for pool, share in zip(pools, (14, 3, 3), strict=True):
        assert np.bincount(labels[pool], minlength=10).tolist() == [share] * 10


def test_generated_set_cache_hit_corrupt_rebuild_and_key(tmp_path: Path) -> None:
    before = cache_stats()
    first = natural_crops("val", cache_dir=tmp_path, **SMALL_CROPS)
    files = list(tmp_path.glob("crops-v*.safetensors"))
    assert len(files) == 1 and cache_stats()["built"] == before["built"] + 1
    mtime = files[0].stat().st_mtime_ns
    again = generated_set(CROPS, "val", cache_dir=tmp_path, **SMALL_CROPS)
    assert cache_stats()["built"] == before["built"] + 1 and cache_stats()["loaded"] == before["loaded"] + 1
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(first.tensors[0], again.tensors[0])
    assert again.classes == list(CROP_SOURCES[:4]) and again.split == "val"
    # truncated: rebuilt with a warning, same data
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="rebuilding corrupt"):
        rebuilt = generated_set(CROPS, "val", cache_dir=tmp_path, **SMALL_CROPS)
    assert torch.equal(rebuilt.tensors[0], first.tensors[0]) and cache_stats()["rebuilt"] == before["rebuilt"] + 1
    assert files[0].read_bytes() == data
    # one flipped pixel byte (header intact): the checksum catches it
    files[0].write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    with pytest.warns(RuntimeWarning, match="checksum"):
        generated_set(CROPS, "val", cache_dir=tmp_path, **SMALL_CROPS)
    assert files[0].read_bytes() == data
    # the key covers parameters, seed and generator version
    params = _params_for(CROPS, **SMALL_CROPS)
    key = cache_path(CROPS, params, 0, tmp_path)
    assert key == files[0]
    assert cache_path(CROPS, _params_for(CROPS, **{**SMALL_CROPS, "jitter": 0.5}), 0, tmp_path) != key
    assert cache_path(CROPS, params, 1, tmp_path) != key
    assert cache_path(CLUTTERED_DIGITS, _params_for(CLUTTERED_DIGITS, **SMALL_DIGITS), 0, tmp_path) != key
    import slimkit.datasets as datasets_module

    old = datasets_module.GENERATOR_VERSION
    try:
        datasets_module.GENERATOR_VERSION = old + 1
        assert cache_path(CROPS, params, 0, tmp_path) != key
    finally:
        datasets_module.GENERATOR_VERSION = old


def test_generated_set_cache_env_and_unwritable_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="cannot write"):
        ds = generated_set(CROPS, "test", cache_dir=blocker / "sub", **SMALL_CROPS)
    assert len(ds) == 12


def test_resolve_dataset_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("slimkit.data.generated_set", _small_generated)
    ds = resolve_dataset("cluttered-digits", "test", image_size=16, channels=1, seed=0)
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and 0 <= int(y) < 10
    assert ds.classes == [str(d) for d in range(10)]  # type: ignore[attr-defined]
    big = resolve_dataset("crops", "all", image_size=80, channels=3)
    assert big[0][0].shape == (3, 80, 80) and len(big) == 64 and big.classes == list(CROP_SOURCES[:4])  # type: ignore[attr-defined]
    with pytest.raises(BadInputError, match="no test split"):
        resolve_dataset("digits", "test")
    with pytest.raises(BadInputError, match="image size"):
        resolve_dataset("crops", image_size=4)


def _small_generated(name: str, split: str, channels: int, seed: int, cache_dir: object, size: int) -> ImageSet:
    small = SMALL_CROPS if name == CROPS else SMALL_DIGITS
    return generated_set(name, split, channels, seed, use_cache=False, **{**small, "size": min(size, 16)})


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        (CROPS, {"num_classes": 1}, "num_classes"),
        (CROPS, {"num_classes": 99}, "num_classes"),
        (CROPS, {"size": 4}, "size"),
        (CROPS, {"scale": (0.9, 0.1)}, "scale"),
        (CROPS, {"val_size": 2}, "val_size"),
        (CROPS, {"jitter": -1.0}, "jitter"),
        (CROPS, {"colour": 1}, "no parameter"),
        (CLUTTERED_DIGITS, {"clutter": 2.5}, "clutter must be an integer"),
        (CLUTTERED_DIGITS, {"digit_scale": (0.1,)}, "digit_scale"),
        ("nope", {}, "unknown generated data set"),
    ],
)
def test_generated_set_bad_parameters(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        _params_for(name, **params)


def test_generated_set_bad_split_channels_seed(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="split"):
        generated_set(CROPS, "nope", cache_dir=tmp_path, **SMALL_CROPS)
    with pytest.raises(BadInputError, match="channels"):
        cluttered_digits("train", channels=2, cache_dir=tmp_path)
    with pytest.raises(BadInputError, match="seed"):
        generated_set(CROPS, "train", seed=-1, cache_dir=tmp_path, **SMALL_CROPS)
    assert not list(tmp_path.iterdir())


def test_num_classes_and_first_inputs_of_every_kind_of_set(tmp_path: Path) -> None:
    train = digits("train")
    assert num_classes(train) == 10 == int(train.tensors[1].max()) + 1
    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(tmp_path / c / "x.png")
    folder = image_folder(tmp_path, 8)
    assert num_classes(folder) == 3
    with pytest.raises(BadInputError, match="cannot tell the number of classes of list"):
        num_classes([])  # type: ignore[arg-type]
    batch = first_inputs(train, 5)
    assert torch.equal(batch, train.tensors[0][:5])
    assert first_inputs(folder).shape == (3, 3, 8, 8) and first_inputs(folder, 99).shape[0] == 3


def test_sample_images_also_serve_the_scikit_learn_photos() -> None:
    photos = sample_images(["sklearn:china", "sklearn:flower", "coins"])
    bunch = load_sample_images()
    assert np.array_equal(photos["sklearn:china"], bunch.images[0]) and photos["sklearn:china"].dtype == np.uint8
    assert photos["sklearn:flower"].shape == (427, 640, 3) and photos["coins"].shape[2] == 3
    with pytest.raises(BadInputError, match="unknown scikit-learn sample image 'tiger'; known: china, flower"):
        sample_images(["sklearn:tiger"])
