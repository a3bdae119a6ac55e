"""Build models by name and read checkpoints, with no downloads.

Why: every package's CLI takes ``--model NAME`` and ``--checkpoint PATH``. One resolver keeps
the name rules and the checkpoint formats the same everywhere, and guarantees that nothing is
ever fetched: architectures are built with random weights, weights come from local files.

Name rules of :func:`create_model` (packages check their own built-in names first):

* ``timm/NAME``: timm only (``pretrained=False``);
* ``tv/NAME``: torchvision only (``get_model(NAME, weights=None)``); for ``in_chans`` other
  than 3 the first 3-channel ``Conv2d`` is rebuilt with that many input channels;
* a bare ``NAME``: timm if timm is installed and knows it, else torchvision, else a
  :class:`BadInputError`.

timm and torchvision are imported only when a name needs them; neither is required by slimkit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import load_state_dict

__all__ = ["CHECKPOINT_SUFFIXES", "TORCH_SUFFIXES", "create_model", "read_checkpoint", "unwrap_state_dict"]

TORCH_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", *TORCH_SUFFIXES)
#: Keys that training frameworks nest the weights under, tried in this order (EMA weights first).
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_NO_DOWNLOAD = ("pretrained", "weights", "pretrained_cfg_overlay", "checkpoint_path")


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
    """A randomly initialised model by name (see the module docstring for the name rules).

    ``num_classes``/``in_chans`` are passed on only when given (timm and torchvision defaults
    otherwise). Asking for pretrained weights is a :class:`BadInputError`: load a local file
    with :func:`read_checkpoint` instead.
    """
    for key in _NO_DOWNLOAD:
        if kwargs.get(key):
            raise BadInputError(f"{key}={kwargs[key]!r}: slimkit never downloads weights; load a local checkpoint")
        kwargs.pop(key, None)
    source, sep, bare = name.partition("/")
    if not sep or source not in ("timm", "tv"):
        source, bare = "", name
    if source == "timm":
        model = _timm_model(bare, num_classes, in_chans, kwargs, required=True)
        assert model is not None
        return model
    if source == "tv":
        model = _torchvision_model(bare, num_classes, in_chans, kwargs, required=True)
        assert model is not None
        return model
    model = _timm_model(bare, num_classes, in_chans, kwargs, required=False)
    if model is None:
        model = _torchvision_model(bare, num_classes, in_chans, kwargs, required=False)
    if model is None:
        raise BadInputError(f"unknown model {name!r}: use a timm name ('timm/NAME') or a torchvision name ('tv/NAME')")
    return model


def _timm_model(
    name: str, num_classes: int | None, in_chans: int | None, kwargs: dict[str, Any], required: bool
) -> nn.Module | None:
    try:
        import timm
    except ImportError:
        if required:
            raise BadInputError(f"model 'timm/{name}' needs timm, which is not installed (pip install timm)") from None
        return None
    if not timm.is_model(name):
        if required:
            raise BadInputError(f"unknown timm model {name!r}")
        return None
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if in_chans is not None:
        extra["in_chans"] = in_chans
    try:
        model: nn.Module = timm.create_model(name, pretrained=False, **extra)
    except TypeError as exc:
        raise BadInputError(f"cannot build {name!r} with {extra}: {exc}") from None
    return model


def _torchvision_model(
    name: str, num_classes: int | None, in_chans: int | None, kwargs: dict[str, Any], required: bool
) -> nn.Module | None:
    try:
        import torchvision
    except ImportError:
        if required:
            raise BadInputError(f"model 'tv/{name}' needs torchvision, which is not installed") from None
        return None
    if name not in torchvision.models.list_models():
        if required:
            raise BadInputError(f"unknown torchvision model {name!r}")
        return None
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    try:
        model: nn.Module = torchvision.models.get_model(name, weights=None, **extra)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"cannot build {name!r} with {extra}: {exc}") from None
    if in_chans is not None and in_chans != 3:
        _adapt_first_conv(model, in_chans)
    return model


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """torchvision models take RGB; rebuild the first 3-channel conv for another channel count."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride,  # type: ignore[arg-type]
                    padding=child.padding,  # type: ignore[arg-type]
                    dilation=child.dilation,  # type: ignore[arg-type]
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                setattr(parent, child_name, new)
                return
    raise BadInputError(f"cannot adapt {type(model).__name__} to {in_chans} input channels")


def unwrap_state_dict(obj: Any, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded torch checkpoint.

    Looks under ``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``, ``module`` (first
    that holds only tensors), then strips a ``module.`` prefix present on every key (DDP).
    """
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


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a ``.safetensors`` or ``.pth``/``.pt``/``.bin``/``.ckpt`` file.

    Torch files are read with ``weights_only=True`` (no code runs) and unwrapped by
    :func:`unwrap_state_dict`. A missing path is a :class:`BadInputError` ``file not found:
    PATH``; an unreadable or truncated file is a :class:`CorruptFileError` naming it as corrupt.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"file not found: {p}")
    if p.is_dir():
        raise BadInputError(f"expected a checkpoint file, got a folder: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        try:
            tensors, _ = load_state_dict(p)
        except CorruptFileError:
            raise CorruptFileError(f"{p} is corrupt or truncated (not a readable safetensors file)") from None
        return tensors
    if suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors have many types
            raise CorruptFileError(
                f"{p} is corrupt or truncated (not a readable PyTorch checkpoint: {type(exc).__name__})"
            ) from None
        return unwrap_state_dict(obj, p)
    raise BadInputError(f"unsupported checkpoint {p.name}: use a {', '.join(CHECKPOINT_SUFFIXES)} file")
