"""Trained quantized models on disk: ``model.safetensors`` + ``config.json``, rebuilt by spec and config.

A checkpoint records the architecture (:class:`slimkit.zoo.ModelSpec`) and the method config; it
is rebuilt as "build the FP architecture, apply the config with :func:`arbitrary_quant.api.quantize_`,
load the tensors strictly". These hold the latent float weights (what training resumes from);
:mod:`arbitrary_quant.export` writes the packed integer form.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from arbitrary_quant.api import REGISTRY, quantize_
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import load_into, load_json, save_model
from slimkit.models import read_checkpoint
from slimkit.paths import check_input_file
from slimkit.zoo import ModelSpec

__all__ = ["META_KEY", "load_quant_model", "model_files", "save_quant_model"]

META_KEY = "arbitrary_quant"


def save_quant_model(
    directory: str | Path, model: nn.Module, spec: ModelSpec, config: Any, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (method config, model spec, ``extra``) into ``directory``."""
    return save_model(directory, model, config, {META_KEY: {"model": asdict(spec), **(extra or {})}})


def model_files(path: Path, what: str = "checkpoint") -> tuple[Path, Path]:
    """``(model.safetensors, config.json)`` of a saved model given as its folder or its weights file;
    a missing path or file is a one-line BadInputError naming ``what``."""
    if not path.exists():
        raise BadInputError(f"{what} not found: {path}")
    folder = path.parent if path.is_file() else path
    if path.is_file():
        check_input_file(path, what, (".safetensors",))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise BadInputError(f"no model.safetensors in {folder}")
    if not (folder / "config.json").is_file():
        raise BadInputError(f"no config.json beside {weights}: cannot tell which model it holds")
    return weights, folder / "config.json"


def load_quant_model(path: str | Path) -> tuple[nn.Module, ModelSpec, Any, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_quant_model`; returns ``(model, spec, config, extra)``."""
    weights, config_file = model_files(Path(path))
    try:
        meta = load_json(config_file)
    except CorruptFileError as exc:
        raise CorruptFileError(f"corrupt file: {exc}") from None
    info = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict) or "config" not in meta:
        raise CorruptFileError(f"{config_file} is not an arbitrary-quant model (no {META_KEY}/config entries)")
    try:
        spec = ModelSpec(**info["model"])
    except TypeError as exc:
        raise CorruptFileError(f"{config_file}: bad model description ({exc})") from None
    config = REGISTRY.config_from_dict(meta["config"])
    model = spec.build()
    quantize_(model, config)
    load_into(model, read_checkpoint(weights))
    extra = {k: v for k, v in info.items() if k != "model"}
    return model, spec, config, extra
