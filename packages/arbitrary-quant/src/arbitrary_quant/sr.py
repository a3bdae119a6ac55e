"""Offline super-resolution data and metrics: what DFSQ is calibrated and scored with, without downloads.

Data. DIV2K / Set5 / Urban100 are not shipped by any installable package, so the built-in sets use
the photos inside the scikit-image and scikit-learn wheels, split by image (no pixel of a held-out
image is seen in training):

- ``train``: :data:`TRAIN_IMAGES`; ``test``: :data:`TEST_IMAGES` (``sklearn:NAME`` = scikit-learn's
  ``load_sample_images``, everything else scikit-image via :func:`slimkit.data.sample_images`).
- LR = bicubic downsampling of the HR image cropped to a multiple of ``scale``, with
  ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` (MATLAB ``imresize``-like
  anti-aliasing), clamped to ``[0, 1]``. Whole images are downsampled once and patches are cut from
  the aligned LR/HR pair, as DIV2K's LR images are.
- :class:`SRPatches`: ``(lr, hr)`` patch pairs (HR side ``patch_size``), positions and flips/rotations
  drawn once from ``seed``. Folders of HR images (DIV2K-style) load with :func:`load_hr_folder`.

Metrics (the SR papers' MATLAB protocol): PSNR and SSIM on the Y channel of ITU-R BT.601 as MATLAB's
``rgb2ycbcr`` computes it (``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` for RGB in
``[0, 1]``), after shaving ``scale`` pixels off every border; SSIM with the 11x11 Gaussian window,
sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1, over the valid region.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from slimkit.data import read_image, sample_images
from slimkit.errors import BadInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "TEST_IMAGES",
    "TRAIN_IMAGES",
    "SRPatches",
    "bicubic_downsample",
    "evaluate_sr",
    "image_to_tensor",
    "load_hr_folder",
    "mod_crop",
    "psnr",
    "rgb_to_y",
    "sr_eval_pairs",
    "sr_images",
    "sr_patches",
    "ssim",
]

TRAIN_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "gravel", "sklearn:china")
TEST_IMAGES = ("immunohistochemistry", "coins", "sklearn:flower")
SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


# --------------------------------------------------------------------------- images


def sr_images(split: str = "train") -> dict[str, np.ndarray]:
    """The built-in HR images of ``split`` (``train``, ``test`` or ``all``) as RGB uint8 HWC arrays."""
    if split not in SPLITS:
        raise BadInputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    names = {"train": TRAIN_IMAGES, "test": TEST_IMAGES, "all": TRAIN_IMAGES + TEST_IMAGES}[split]
    return sample_images(names)


def load_hr_folder(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every image file of a folder (DIV2K-style ``DIV2K_train_HR/``), sorted by name, as RGB uint8 HWC."""
    folder = Path(path)
    if not folder.exists():
        raise BadInputError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise BadInputError(f"image folder {folder} is a file, expected a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"image folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return {p.name: read_image(p) for p in files}


def image_to_tensor(img: np.ndarray) -> Tensor:
    """RGB uint8 HWC (or grey HW) -> float32 ``[3, H, W]`` in ``[0, 1]``."""
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] < 3:
        raise BadInputError(f"expected an RGB image HxWx3, got shape {img.shape}")
    return torch.from_numpy(np.array(img[..., :3], dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


def mod_crop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right so H and W are multiples of ``scale`` (as the SR benchmarks do)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise BadInputError(f"scale must be a positive integer, got {scale!r}")


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """Bicubic, anti-aliased LR of an HR image ``[C, H, W]`` or batch ``[N, C, H, W]`` in ``[0, 1]`` (mod-cropped first)."""
    _check_scale(scale)
    hr = mod_crop(hr, scale)
    batch = hr if hr.dim() == 4 else hr.unsqueeze(0)
    h, w = batch.shape[-2:]
    lr = F.interpolate(batch, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    lr = lr.clamp(0.0, 1.0)
    return lr if hr.dim() == 4 else lr.squeeze(0)


# --------------------------------------------------------------------------- patches


class SRPatches(Dataset[tuple[Tensor, Tensor]]):
    """``(lr [3, p/s, p/s], hr [3, p, p])`` patch pairs cut at seeded positions from aligned LR/HR images.

    ``patch_size`` is the HR side (a multiple of ``scale``). With ``augment`` each patch also gets a
    seeded horizontal flip and rotation by a multiple of 90 degrees (EDSR's training augmentation).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        scale: int = 2,
        patch_size: int = 48,
        num_patches: int = 256,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        _check_scale(scale)
        if patch_size < scale or patch_size % scale:
            raise BadInputError(f"patch_size must be a positive multiple of scale={scale}, got {patch_size}")
        if num_patches < 1:
            raise BadInputError(f"num_patches must be >= 1, got {num_patches}")
        if not images:
            raise BadInputError("SRPatches needs at least one image")
        self.scale, self.patch_size = scale, patch_size
        self.hr = [mod_crop(image_to_tensor(img), scale) for img in images]
        for hr in self.hr:
            if min(hr.shape[-2:]) < patch_size:
                raise BadInputError(f"an image of {tuple(hr.shape[-2:])} is smaller than patch_size={patch_size}")
        self.lr = [bicubic_downsample(hr, scale) for hr in self.hr]
        rng = np.random.default_rng(seed)
        lp = patch_size // scale
        self.index: list[tuple[int, int, int, bool, int]] = []
        for i in range(num_patches):
            k = i % len(self.lr)  # round robin: every image contributes evenly
            h, w = self.lr[k].shape[-2:]
            top, left = int(rng.integers(0, h - lp + 1)), int(rng.integers(0, w - lp + 1))
            flip, rot = (bool(rng.integers(0, 2)), int(rng.integers(0, 4))) if augment else (False, 0)
            self.index.append((k, top, left, flip, rot))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        k, top, left, flip, rot = self.index[i]
        lp, s = self.patch_size // self.scale, self.scale
        lr = self.lr[k][:, top : top + lp, left : left + lp]
        hr = self.hr[k][:, top * s : (top + lp) * s, left * s : (left + lp) * s]
        if flip:
            lr, hr = lr.flip(-1), hr.flip(-1)
        if rot:
            lr, hr = lr.rot90(rot, dims=(-2, -1)), hr.rot90(rot, dims=(-2, -1))
        return lr.contiguous(), hr.contiguous()


def sr_patches(
    split: str = "train",
    scale: int = 2,
    patch_size: int = 48,
    num_patches: int = 256,
    seed: int = 0,
    augment: bool = True,
    folder: str | os.PathLike[str] | None = None,
) -> SRPatches:
    """Patch pairs from the built-in ``split`` or, with ``folder``, from every image of that folder."""
    images = load_hr_folder(folder) if folder is not None else sr_images(split)
    return SRPatches(list(images.values()), scale, patch_size, num_patches, seed, augment)


def sr_eval_pairs(
    split: str = "test",
    scale: int = 2,
    max_size: int | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Whole-image ``(lr, hr)`` pairs for evaluation; ``max_size`` centre-crops the HR side (for speed)."""
    _check_scale(scale)
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < scale):
        raise BadInputError(f"max_size must be an integer >= scale={scale} (or None), got {max_size!r}")
    images = load_hr_folder(folder) if folder is not None else sr_images(split)
    pairs = []
    for img in images.values():
        hr = image_to_tensor(img)
        if max_size is not None:
            h, w = hr.shape[-2:]
            ch, cw = min(h, max_size), min(w, max_size)
            top, left = (h - ch) // 2, (w - cw) // 2
            hr = hr[:, top : top + ch, left : left + cw]
        hr = mod_crop(hr, scale)
        pairs.append((bicubic_downsample(hr, scale), hr))
    return pairs


# --------------------------------------------------------------------------- metrics


def rgb_to_y(img: Tensor) -> Tensor:
    """BT.601 luma as MATLAB ``rgb2ycbcr`` for RGB in ``[0, 1]``: ``[..., 3, H, W]`` -> ``[..., 1, H, W]`` in ``[16/255, 235/255]``."""
    if img.shape[-3] != 3:
        raise BadInputError(f"rgb_to_y needs 3 channels in dim -3, got shape {tuple(img.shape)}")
    r, g, b = img.unbind(dim=-3)
    return (_Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b).unsqueeze(-3)


def _prepare(sr: Tensor, hr: Tensor, shave: int, y_channel: bool) -> tuple[Tensor, Tensor]:
    """Both as float64 ``[N, C, H, W]``: Y channel (for RGB input) and borders shaved."""
    if sr.shape != hr.shape:
        raise BadInputError(f"SR and HR shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if sr.dim() not in (3, 4):
        raise BadInputError(f"expected [C, H, W] or [N, C, H, W] images, got shape {tuple(sr.shape)}")
    a, b = sr.detach().double(), hr.detach().double()
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if y_channel and a.shape[1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if shave < 0 or 2 * shave >= min(a.shape[-2:]):
        raise BadInputError(f"cannot shave {shave} pixels off a {tuple(a.shape[-2:])} image")
    if shave:
        a, b = a[..., shave:-shave, shave:-shave], b[..., shave:-shave, shave:-shave]
    return a, b


def psnr(sr: Tensor, hr: Tensor, scale: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB (peak 1) averaged over images, ``scale`` border pixels shaved; identical images give ``inf``."""
    a, b = _prepare(sr, hr, scale, y_channel)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    values = [math.inf if m == 0 else -10.0 * math.log10(m) for m in mse.tolist()]
    return float(sum(values) / len(values))


@functools.lru_cache(maxsize=4)
def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).reshape(1, 1, size, size)


def ssim(sr: Tensor, hr: Tensor, scale: int = 0, y_channel: bool = True) -> float:
    """SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, valid region), averaged over channels and images."""
    a, b = _prepare(sr, hr, scale, y_channel)
    n, c, h, w = a.shape
    if min(h, w) < 11:
        raise BadInputError(f"SSIM needs images of at least 11x11 after shaving, got {h}x{w}")
    a, b = a.reshape(n * c, 1, h, w), b.reshape(n * c, 1, h, w)
    win = _gaussian_window()
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a**2
    var_b = F.conv2d(b * b, win) - mu_b**2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).flatten(1).mean(dim=1).mean())


def evaluate_sr(
    model: nn.Module, pairs: Sequence[tuple[Tensor, Tensor]], scale: int, round_to_uint8: bool = True
) -> dict[str, float]:
    """Mean PSNR / SSIM (Y, shave ``scale``) of ``model`` over ``(lr, hr)`` pairs, one image at a time.

    ``round_to_uint8`` rounds the SR output to 1/255 steps first, as the MATLAB protocol (which
    scores saved PNGs) does.
    """
    if not pairs:
        raise BadInputError("the evaluation set is empty")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    scores: list[tuple[float, float]] = []
    try:
        with torch.no_grad():
            for lr, hr in pairs:
                out = model(lr.unsqueeze(0).to(device)).squeeze(0).float().cpu().clamp(0.0, 1.0)
                if round_to_uint8:
                    out = torch.round(out * 255.0) / 255.0
                scores.append((psnr(out, hr, scale), ssim(out, hr, scale)))
    finally:
        model.train(was_training)
    return {
        "psnr": sum(p for p, _ in scores) / len(scores),
        "ssim": sum(s for _, s in scores) / len(scores),
    }
