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

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import load_into, load_json, load_state_dict, save_model

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
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")


def digits_vit(**overrides: Any) -> nn.Module:
    """A small timm VisionTransformer sized for the bundled digits (trains in tens of seconds on CPU)."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {**DIGITS_VIT_DEFAULTS, **overrides}
    return VisionTransformer(**kwargs)


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """``digits_vit`` or any timm model name, randomly initialized."""
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name == DIGITS_VIT:
        return digits_vit(**kwargs)
    import timm

    if not timm.is_model(name):
        raise BadInputError(f"unknown model {name!r}: use {DIGITS_VIT!r} or a timm name such as deit_small_patch16_224")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise BadInputError(f"cannot build {name!r} with {kwargs}: {exc}") from None


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


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptFileError(f"{path} does not hold a state dict of tensors")
    prefix = "module."
    if all(str(k).startswith(prefix) for k in obj):
        obj = {str(k)[len(prefix) :]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, model_spec or None)`` from a train folder, a safetensors file or a torch file."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"checkpoint not found: {p}")
    if p.is_dir():
        weights = p / "model.safetensors"
        if not weights.is_file():
            raise BadInputError(f"{p} has no model.safetensors (expected a folder written by `token-rate train`)")
        tensors, _ = load_state_dict(weights)
        config = load_json(p / "config.json") if (p / "config.json").is_file() else {}
        return tensors, _spec_from(config)
    if p.suffix == ".safetensors":
        tensors, meta = load_state_dict(p)
        return tensors, _spec_from(meta)
    if p.suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors have many types
            raise CorruptFileError(f"{p} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
        return _unwrap_state_dict(obj, p), None
    raise BadInputError(f"unsupported checkpoint {p.name}: use a .safetensors, .pth/.pt/.bin file or a train folder")


def _spec_from(meta: Any) -> dict[str, Any] | None:
    spec = meta.get("config") if isinstance(meta, Mapping) else None
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return {"name": spec["name"], "kwargs": dict(spec.get("kwargs") or {})}
    return None


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


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 256, device: torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a dataset of ``(image, label)`` pairs."""
    from torch.utils.data import DataLoader

    if len(data) == 0:
        raise BadInputError("the evaluation dataset is empty")
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise BadInputError("evaluation needs labelled data (image, label)")
            images, labels = batch[0].to(device), batch[1].to(device)
            out = model(images)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            correct += int((logits.argmax(-1) == labels).sum())
            total += int(labels.numel())
    finally:
        model.train(was_training)
    return correct / total


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
    from slimkit.data import digits
    from slimkit.train import TrainConfig, train

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
