"""Offline SR data (splits, bicubic LR, patches, folders) and Y-channel PSNR / SSIM against scikit-image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from arbitrary_quant.edsr import EDSR
from arbitrary_quant.sr import (
    TEST_IMAGES,
    TRAIN_IMAGES,
    SRPatches,
    bicubic_downsample,
    evaluate_sr,
    image_to_tensor,
    load_hr_folder,
    mod_crop,
    psnr,
    rgb_to_y,
    sr_eval_pairs,
    sr_images,
    sr_patches,
    ssim,
)
from slimkit.errors import BadInputError

# --------------------------------------------------------------------------- data


def test_train_and_test_images_are_disjoint_rgb() -> None:
    assert not set(TRAIN_IMAGES) & set(TEST_IMAGES)
    test = sr_images("test")
    assert list(test) == list(TEST_IMAGES)
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for img in test.values())
    with pytest.raises(BadInputError, match="split"):
        sr_images("val")


def test_bicubic_downsample_shape_range_and_flat_image() -> None:
    hr = torch.rand(3, 25, 30)
    lr = bicubic_downsample(hr, 4)
    assert lr.shape == (3, 6, 7) and float(lr.min()) >= 0 and float(lr.max()) <= 1
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(bicubic_downsample(flat, 2), torch.full((1, 3, 8, 8), 0.3), atol=1e-6)
    assert mod_crop(hr, 4).shape == (3, 24, 28)


def test_patches_are_aligned_deterministic_and_seeded() -> None:
    a = sr_patches("test", scale=2, patch_size=32, num_patches=6, seed=0)
    b = sr_patches("test", scale=2, patch_size=32, num_patches=6, seed=0)
    c = sr_patches("test", scale=2, patch_size=32, num_patches=6, seed=1)
    lr, hr = a[4]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 32, 32)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(6))
    assert any(not torch.equal(a[i][1], c[i][1]) for i in range(6))
    plain = SRPatches([np.asarray(sr_images("test")["coins"])], scale=2, patch_size=32, num_patches=3, augment=False)
    for i in range(3):  # an un-augmented patch is the LR image's crop at the HR crop's position / scale
        k, top, left, _, _ = plain.index[i]
        lr_i, hr_i = plain[i]
        assert torch.equal(lr_i, plain.lr[k][:, top : top + 16, left : left + 16])
        assert torch.equal(hr_i, plain.hr[k][:, 2 * top : 2 * top + 32, 2 * left : 2 * left + 32])
    with pytest.raises(BadInputError, match="multiple of scale"):
        SRPatches([np.zeros((64, 64, 3), np.uint8)], scale=3, patch_size=32)


def test_eval_pairs_refuse_a_crop_smaller_than_the_scale() -> None:
    with pytest.raises(BadInputError, match="max_size must be an integer >= scale=2"):
        sr_eval_pairs("test", scale=2, max_size=0)


def test_eval_pairs_shapes() -> None:
    pairs = sr_eval_pairs("test", scale=3, max_size=64)
    assert len(pairs) == len(TEST_IMAGES)
    for lr, hr in pairs:
        assert hr.shape == (3, 63, 63) and lr.shape == (3, 21, 21)


def test_image_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=str(tmp_path / "missing")):
        load_hr_folder(tmp_path / "missing")
    with pytest.raises(BadInputError, match="holds no image"):
        load_hr_folder(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png"):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_hr_folder(tmp_path)
    assert list(images) == ["a.png", "b.png"] and images["a.png"].shape == (40, 36, 3)
    patches = sr_patches(folder=tmp_path, scale=2, patch_size=16, num_patches=4)
    assert len(patches) == 4 and patches[0][1].shape == (3, 16, 16)
    assert sr_eval_pairs(folder=tmp_path, scale=4)[0][1].shape == (3, 40, 36)


# --------------------------------------------------------------------------- metrics


def test_y_channel_matches_matlab_rgb2ycbcr() -> None:
    white, black = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    assert math.isclose(float(rgb_to_y(white)), 235 / 255, abs_tol=1e-6)
    assert math.isclose(float(rgb_to_y(black)), 16 / 255, abs_tol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    assert math.isclose(float(rgb_to_y(red)), (16 + 65.481) / 255, abs_tol=1e-6)


def test_psnr_identical_and_known_mse() -> None:
    img = torch.rand(3, 20, 20)
    assert psnr(img, img, 2) == math.inf
    grey = torch.full((1, 10, 10), 0.5, dtype=torch.float64)
    assert math.isclose(psnr(grey + 0.1, grey), 20.0, rel_tol=1e-9)  # MSE 0.01 -> 20 dB
    # RGB offset d in all channels moves Y by d * (65.481 + 128.553 + 24.966) / 255
    d = 0.05 * (65.481 + 128.553 + 24.966) / 255
    assert math.isclose(psnr(img.clamp(0, 0.9) + 0.05, img.clamp(0, 0.9), 0), -10 * math.log10(d * d), rel_tol=1e-6)


def test_psnr_shaves_the_border() -> None:
    hr = torch.rand(3, 20, 20)
    sr = hr.clone()
    sr[:, :2, :] = 0.0  # damage only within the shaved border
    assert psnr(sr, hr, scale=2) == math.inf and psnr(sr, hr, scale=0) < 30
    with pytest.raises(BadInputError, match="shapes differ"):
        psnr(sr, hr[:, :10])


def test_psnr_and_ssim_match_scikit_image() -> None:
    g = torch.Generator().manual_seed(0)
    hr = image_to_tensor(sr_images("test")["coins"])[:, :64, :80]
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    y_sr = rgb_to_y(sr)[0, 3:-3, 3:-3].double().numpy()
    y_hr = rgb_to_y(hr)[0, 3:-3, 3:-3].double().numpy()
    expected_ssim = structural_similarity(
        y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert abs(ssim(sr, hr, scale=3) - expected_ssim) < 1e-3
    assert math.isclose(psnr(sr, hr, scale=3), peak_signal_noise_ratio(y_hr, y_sr, data_range=1.0), rel_tol=1e-6)
    assert ssim(hr, hr, 3) == pytest.approx(1.0)


def test_evaluate_sr_runs_a_model() -> None:
    pairs = sr_eval_pairs("test", scale=2, max_size=48)
    scores = evaluate_sr(EDSR(scale=2, n_resblocks=1, n_feats=4), pairs, scale=2)
    assert set(scores) == {"psnr", "ssim"} and 0 < scores["psnr"] < 60 and -1 <= scores["ssim"] <= 1
    with pytest.raises(BadInputError, match="empty"):
        evaluate_sr(EDSR(), [], scale=2)
