"""Models the CLI and demo work on: a small ViT for the bundled digits, any timm ViT, checkpoints.

No weights can be downloaded here, so timm models are always built with ``pretrained=False``;
real weights come from a local ``--checkpoint``: a folder written by ``token-rate train``
(``model.safetensors`` + ``config.json``), a bare ``.safetensors`` file, or a timm/PyTorch
``.pth``/``.pt``/``.bin`` file (a raw state dict or one wrapped under ``state_dict``/``model``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import models as slimkit_models
from slimkit.data import digits
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.evaluate import top1
from slimkit.io import load_into, load_json, load_state_dict, save_model
from slimkit.train import TrainConfig, train

DIGITS_VIT = "digits_vit"
# 8x8 digits upsampled to 32x32 with 4x4 patches: 64 patch tokens + CLS, enough to compress.
DIGITS_VIT_DEFAULTS: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "in_chans": 1,
    "embed_dim": 64,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "num_classes": 10,
}


def digits_vit(**overrides: Any) -> nn.Module:
    """A small timm VisionTransformer sized for the bundled digits (trains in tens of seconds on CPU)."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {**DIGITS_VIT_DEFAULTS, **overrides}
    return VisionTransformer(**kwargs)


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """``digits_vit`` or any timm / torchvision name (:func:`slimkit.models.create_model`), randomly initialized."""
    if name == DIGITS_VIT:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            return digits_vit(**kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise BadInputError(f"cannot build {name!r} with {kwargs}: {' '.join(str(exc).split())}") from None
    try:
        return slimkit_models.create_model(name, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        if isinstance(exc, BadInputError):
            raise
        raise BadInputError(f"cannot build {name!r} with {kwargs}: {' '.join(str(exc).split())}") from None


def input_spec(model: nn.Module) -> tuple[int, int]:
    """``(image_size, channels)`` a timm ViT expects, read from its patch embedding."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    proj = getattr(embed, "proj", None)
    if size is None or proj is None:
        raise BadInputError(f"{type(model).__name__} is not a timm-style ViT (no patch_embed.img_size/proj)")
    side = int(size[0] if isinstance(size, (tuple, list)) else size)
    return side, int(proj.in_channels)


def save_trained(directory: str | os.PathLike[str], model: nn.Module, name: str, model_kwargs: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Save weights plus what is needed to rebuild the model (``load_model(checkpoint=directory)``)."""
    spec = {"name": name, "kwargs": dict(model_kwargs)}
    return save_model(directory, model, spec, extra)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, model_spec or None)`` from a train folder, a safetensors file or a torch file.

    Files are read by :func:`slimkit.models.read_checkpoint`; a train folder's ``config.json`` and a
    bare safetensors file's metadata name the model to rebuild. Missing paths are named as missing,
    unreadable or truncated files as corrupt.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"checkpoint not found: {p}")
    if p.is_dir():
        weights = p / "model.safetensors"
        if not weights.is_file():
            raise BadInputError(f"{p} has no model.safetensors (expected a folder written by `token-rate train`)")
        tensors = slimkit_models.read_checkpoint(weights)
        config: Any = {}
        if (p / "config.json").is_file():
            try:
                config = load_json(p / "config.json")
            except CorruptFileError:
                raise CorruptFileError(f"{p / 'config.json'} is corrupt (not valid JSON)") from None
        return tensors, _spec_from(config, p / "config.json")
    if p.suffix.lower() == ".safetensors":
        try:  # slimkit.io reads the tensors and the metadata (the model spec) in one pass
            tensors, meta = load_state_dict(p)
        except CorruptFileError:
            raise CorruptFileError(f"{p} is corrupt or truncated (not a readable safetensors file)") from None
        return tensors, _spec_from(meta, p)
    if p.suffix.lower() in slimkit_models.TORCH_SUFFIXES:
        return slimkit_models.read_checkpoint(p), None
    raise BadInputError(f"unsupported checkpoint {p.name}: use a .safetensors, .pth/.pt/.bin file or a train folder")


def _spec_from(meta: Any, where: Path) -> dict[str, Any] | None:
    """The ``{"name", "kwargs"}`` model spec recorded by :func:`save_trained` (``None`` if there is none)."""
    spec = meta.get("config") if isinstance(meta, Mapping) else None
    if not isinstance(spec, Mapping) or "name" not in spec:
        return None
    kwargs = spec.get("kwargs") or {}
    if not isinstance(spec["name"], str) or not isinstance(kwargs, Mapping):
        raise CorruptFileError(f"{where}: the model spec has wrong field types (config.name must be a string, "
                               f"config.kwargs an object)")
    return {"name": spec["name"], "kwargs": dict(kwargs)}


def load_model(
    name: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``name`` (or the model recorded in the checkpoint) and load ``checkpoint`` into it.

    A checkpoint written by ``token-rate train`` rebuilds itself; other checkpoints need ``name``.
    A checkpoint that does not fit (missing/unexpected keys, wrong shapes) is a one-line error.
    """
    state: dict[str, torch.Tensor] | None = None
    spec: dict[str, Any] | None = None
    if checkpoint is not None:
        state, spec = read_checkpoint(checkpoint)
    if name is None:
        if spec is None:
            raise BadInputError("no model given: pass a model name (the checkpoint does not record one)")
        name = spec["name"]
        kwargs = {**spec["kwargs"], **kwargs}
    elif spec is not None and spec["name"] == name:
        kwargs = {**spec["kwargs"], **kwargs}
    if num_classes is None and state is not None:
        head = state.get("head.weight")
        if head is not None and head.dim() == 2:
            num_classes = int(head.shape[0])
    model = create_model(name, num_classes=num_classes, **kwargs)
    if state is not None:
        load_into(model, state)
    return model.eval()


def evaluate(model: nn.Module, data: Any, batch_size: int = 256, device: torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(image, label)`` data: :func:`slimkit.evaluate.top1`."""
    return top1(model, data, batch_size=batch_size, device=device)


def train_digits_vit(
    output: Path,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    cpu: bool = True,
    progress: bool = True,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Train :func:`digits_vit` on the digits train split with slimkit.train and save it to ``output``."""
    torch.manual_seed(seed)
    model = digits_vit(**model_kwargs)
    size = int({**DIGITS_VIT_DEFAULTS, **model_kwargs}["img_size"])
    chans = int({**DIGITS_VIT_DEFAULTS, **model_kwargs}["in_chans"])
    config = TrainConfig(
        output_dir=str(output / "run"), max_steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.05,
        warmup_steps=max(1, steps // 20), seed=seed, cpu=cpu, progress=progress, log_every=max(1, steps // 10),
    )  # fmt: skip
    result = train(model, digits("train", size=size, channels=chans, seed=seed), config)
    top1 = evaluate(model, digits("val", size=size, channels=chans, seed=seed))
    save_trained(output, model, DIGITS_VIT, model_kwargs, {"val_top1": top1, "steps": result.steps})
    return {
        "output": str(output),
        "model": str(output / "model.safetensors"),
        "val_top1": top1,
        "steps": result.steps,
        "final_loss": result.final_loss,
    }
