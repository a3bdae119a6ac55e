"""Trained models on disk: a Hugging Face ``save_pretrained`` folder, plus ``qdetr.json`` for quantized ones.

- A full-precision model is written with ``save_pretrained`` (``config.json`` + ``model.safetensors``),
  so transformers loads it as is; ``qdetr.json`` records the run (``quant: null``).
- A quantized model holds wrappers, whose state-dict keys ``from_pretrained`` would not recognise:
  it is written as ``config.json`` (the FP architecture) + ``model.safetensors`` (the wrapped
  state) + ``qdetr.json`` (the :class:`~qdetr.config.QDetrConfig`), and rebuilt as "architecture,
  quantize with that config, load the state strictly".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import DetrConfig, DetrForObjectDetection

from qdetr.api import quantize
from qdetr.config import QDetrConfig
from qdetr.models import load_detr, quiet_transformers
from qdetr.registry import REGISTRY
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import config_to_dict, load_into, load_json, load_state_dict, save_json, save_state_dict

__all__ = ["META_FILE", "load_model_folder", "save_model_folder"]

META_FILE = "qdetr.json"


def save_model_folder(folder: str | Path, model: nn.Module, quant: QDetrConfig | None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (FP or quantized with ``quant``) and its ``qdetr.json`` into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if quant is None:
        with quiet_transformers():
            model.save_pretrained(str(out))  # type: ignore[operator]
    else:
        config: Any = getattr(model, "config", None)
        if not isinstance(config, DetrConfig):
            raise BadInputError(f"{type(model).__name__} has no DetrConfig: not a transformers DETR")
        save_json(out / "config.json", config.to_dict())
        save_state_dict(out / "model.safetensors", model.state_dict(), {"format": "qdetr-quantized"})
    save_json(out / META_FILE, {"quant": config_to_dict(quant) if quant is not None else None, **(extra or {})})
    return out


def load_model_folder(folder: str | Path) -> tuple[DetrForObjectDetection, QDetrConfig | None, dict[str, Any]]:
    """``(model, quant config or None, extra)`` from a folder written by :func:`save_model_folder`,
    or from any transformers ``save_pretrained`` DETR folder (FP, no ``qdetr.json``)."""
    path = Path(folder)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        return load_detr(path), None, {}
    meta = load_json(meta_file)
    if not isinstance(meta, dict) or "quant" not in meta:
        raise CorruptFileError(f"{meta_file} is not a qdetr model description (no 'quant' entry)")
    extra = {k: v for k, v in meta.items() if k != "quant"}
    if meta["quant"] is None:
        return load_detr(path), None, extra
    quant = REGISTRY.config_from_dict(meta["quant"])
    if not isinstance(quant, QDetrConfig):
        raise CorruptFileError(f"{meta_file}: 'quant' is not a QDetrConfig")
    try:
        config = DetrConfig.from_dict(load_json(path / "config.json"))
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path / 'config.json'}: not a DETR config ({exc})") from None
    if not (path / "model.safetensors").is_file():
        raise BadInputError(f"no model.safetensors in {path}")
    model = DetrForObjectDetection(config)
    for param in model.parameters():  # trainable, as from_pretrained gives them (a config build freezes the ResNet)
        param.requires_grad_(True)
    quantize(model, quant)  # two stages end in the same structure as one "all" quantization
    state, _ = load_state_dict(path / "model.safetensors")
    load_into(model, state)
    return model, quant, extra
