"""Full-precision EDSR training, saving and scoring: what DFSQ's post-training quantization starts from.

DFSQ is PTQ, so its numbers mean something only on a *trained* SR network; nothing ships one and
nothing may be downloaded, so :func:`train_edsr` trains one on the offline photo patches of
:mod:`arbitrary_quant.sr` with EDSR's L1 loss through :func:`slimkit.train.train` (checkpoints,
resume and metrics come from there).

- :func:`save_sr_model` / :func:`load_sr_model`: a folder with ``model.safetensors`` +
  ``config.json`` (an :class:`EDSRSpec`: blocks, features, scale, residual scale, colours), written
  through :func:`slimkit.io.save_model`. A missing folder is a :class:`BadInputError`; an unreadable,
  foreign or mismatched file a :class:`CorruptFileError`, one line naming the file.
- :func:`evaluate_psnr`: PSNR / SSIM on Y with a ``scale``-pixel border shave
  (:func:`arbitrary_quant.sr.evaluate_sr`), per image and averaged.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from arbitrary_quant.checkpoints import model_files
from arbitrary_quant.edsr import EDSR, ResBlock
from arbitrary_quant.sr import evaluate_sr
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import config_from_dict, load_into, load_json, save_model
from slimkit.models import read_checkpoint
from slimkit.train import TrainConfig, TrainResult, train

__all__ = [
    "META_KEY",
    "EDSRSpec",
    "evaluate_psnr",
    "l1_loss",
    "load_sr_model",
    "load_user_sr_model",
    "save_sr_model",
    "train_edsr",
]

META_KEY = "arbitrary_quant_sr"


@dataclass
class EDSRSpec:
    """The constructor arguments of an :class:`~arbitrary_quant.edsr.EDSR` (the DIV2K mean is a buffer in the weights)."""

    scale: int = 2
    n_resblocks: int = 2
    n_feats: int = 16
    res_scale: float = 1.0
    n_colors: int = 3

    @classmethod
    def from_model(cls, model: EDSR) -> EDSRSpec:
        """Read the architecture back from a built model (EDSR keeps only ``scale`` as an attribute)."""
        if not isinstance(model, EDSR):
            raise BadInputError(f"save_sr_model saves an EDSR, got {type(model).__name__}")
        blocks = [m for m in model.body if isinstance(m, ResBlock)]
        res_scale = float(blocks[0].res_scale) if blocks else 1.0
        return cls(model.scale, len(blocks), model.head.out_channels, res_scale, model.head.in_channels)

    def build(self) -> EDSR:
        """A fresh EDSR of this shape; the mean buffer is a placeholder until the weights are loaded."""
        return EDSR(self.scale, self.n_resblocks, self.n_feats, self.res_scale, self.n_colors,
                    rgb_mean=(0.0,) * self.n_colors)  # fmt: skip


# --------------------------------------------------------------------------- training


def l1_loss(model: nn.Module, batch: Any) -> Tensor:
    """EDSR's training loss: mean absolute error between ``model(lr)`` and ``hr``."""
    lr, hr = batch[0], batch[1]
    out: Tensor = model(lr)
    return F.l1_loss(out, hr)


def _check_pair(model: nn.Module, train_set: Dataset[Any]) -> None:
    """Refuse a set that is not ``(lr [C,h,w], hr [C,s*h,s*w])`` pairs before the run folder is written."""
    try:
        item = train_set[0]
    except (IndexError, KeyError):
        raise BadInputError("the training set is empty") from None
    if not (isinstance(item, (tuple, list)) and len(item) >= 2 and all(isinstance(t, Tensor) for t in item[:2])):
        raise BadInputError(f"train_edsr needs (lr, hr) tensor pairs, got an item of type {type(item).__name__}")
    lr, hr = item[0], item[1]
    if lr.dim() != 3 or hr.dim() != 3 or lr.shape[0] != hr.shape[0]:
        raise BadInputError(f"train_edsr needs [C, h, w] / [C, H, W] pairs, got {tuple(lr.shape)} / {tuple(hr.shape)}")
    scale = getattr(model, "scale", None)
    if isinstance(scale, int) and tuple(hr.shape[1:]) != (lr.shape[1] * scale, lr.shape[2] * scale):
        raise BadInputError(f"HR {tuple(hr.shape)} is not {scale}x the LR {tuple(lr.shape)} (the model's scale)")


def train_edsr(model: nn.Module, train_set: Dataset[Any], train_config: TrainConfig) -> TrainResult:
    """Train ``model`` in place on ``(lr, hr)`` patch pairs with the L1 loss; returns slimkit's summary."""
    _check_pair(model, train_set)
    return train(model, train_set, train_config, loss_fn=l1_loss)


# --------------------------------------------------------------------------- save / load


def save_sr_model(directory: str | Path, model: EDSR, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (the :class:`EDSRSpec` and ``extra``) into ``directory``."""
    spec = EDSRSpec.from_model(model)
    return save_model(directory, model, spec, {META_KEY: dict(extra or {})})


def load_sr_model(path: str | Path) -> tuple[EDSR, dict[str, Any]]:
    """Rebuild an EDSR saved by :func:`save_sr_model` (folder or its ``model.safetensors``); returns ``(model, extra)``."""
    weights, config_file = model_files(Path(path), "SR model")
    meta = load_json(config_file)  # unparsable -> CorruptFileError naming the file
    cfg = meta.get("config") if isinstance(meta, dict) else None
    kind = cfg.get("_type") if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or kind != EDSRSpec.__name__ or not isinstance(meta.get(META_KEY, {}), dict):
        raise CorruptFileError(f"{config_file} is not an arbitrary-quant EDSR model (config type {kind!r})")
    try:
        spec = config_from_dict(EDSRSpec, cfg)
        model = spec.build()
    except BadInputError as exc:
        raise CorruptFileError(f"{config_file}: bad EDSR description ({exc})") from None
    state = read_checkpoint(weights)  # corrupt / truncated -> CorruptFileError naming the file
    try:
        load_into(model, state)
    except BadInputError as exc:
        raise CorruptFileError(f"{weights} does not match {config_file}: {exc}") from None
    return model.eval(), dict(meta.get(META_KEY, {}))


def load_user_sr_model(arch: str, weights: str | Path, kwargs: str | dict[str, Any] | None = None) -> nn.Module:
    """Any SR network: ``arch`` names its builder as ``"package.module:callable"`` (importable from
    the current environment), called with ``kwargs`` (a dict or JSON object text), then the
    state dict in ``weights`` (``.safetensors``/``.pth``/...) is loaded strictly. Every failure is
    one BadInputError line (the module, the callable, the keywords, the weights).
    """
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise BadInputError(f"--arch must be MODULE:CALLABLE (for example my_models.sr:build_net), got {arch!r}")
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            raise BadInputError(f"--arch-kwargs is not JSON: {kwargs!r}") from None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise BadInputError(f"--arch-kwargs must be a JSON object, got {kwargs!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"cannot import {module_name!r} for --arch: {exc}") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise BadInputError(f"{module_name!r} has no callable {attr!r}")
    try:
        model = builder(**(kwargs or {}))
    except TypeError as exc:
        raise BadInputError(f"{arch}({kwargs or ''}) failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{arch} returned {type(model).__name__}, not an nn.Module")
    load_into(model, read_checkpoint(weights))
    return model.eval()


# --------------------------------------------------------------------------- scoring


def evaluate_psnr(
    model: nn.Module, pairs: list[tuple[Tensor, Tensor]], scale: int, round_to_uint8: bool = True
) -> dict[str, Any]:
    """PSNR (dB) / SSIM on Y, ``scale`` pixels shaved, per image and averaged (the SR papers' protocol).

    Each image is scored by :func:`arbitrary_quant.sr.evaluate_sr`, so the numbers are exactly
    that function's; the mean is over images. A model whose ``scale`` differs, or pairs whose HR is
    not ``scale`` times the LR, are refused.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise BadInputError(f"scale must be a positive integer, got {scale!r}")
    if not pairs:
        raise BadInputError("the evaluation set is empty")
    own = getattr(model, "scale", None)
    if isinstance(own, int) and own != scale:
        raise BadInputError(f"the model upscales x{own}, the evaluation asks for x{scale}")
    for lr, hr in pairs:
        if lr.dim() != 3 or hr.dim() != 3 or tuple(hr.shape[1:]) != (lr.shape[1] * scale, lr.shape[2] * scale):
            raise BadInputError(f"HR {tuple(hr.shape)} is not {scale}x the LR {tuple(lr.shape)}")
    scores = [evaluate_sr(model, [pair], scale, round_to_uint8) for pair in pairs]
    per_psnr = [s["psnr"] for s in scores]
    per_ssim = [s["ssim"] for s in scores]
    return {
        "psnr": sum(per_psnr) / len(per_psnr),
        "ssim": sum(per_ssim) / len(per_ssim),
        "psnr_per_image": per_psnr,
        "ssim_per_image": per_ssim,
        "images": len(pairs),
    }
