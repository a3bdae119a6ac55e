"""Checkpoints: save a sparsified (or deployed) model with its description, and rebuild it.

A model is described by a :class:`ModelSpec`, so a checkpoint is rebuilt as "build the
architecture, sparsify it with the saved config (and deploy, for deployed files), then load
the tensors strictly". The config is any of the package's configs (per-method, or a 0.1
``NMConfig``), read back through ``nm_sparse.registry.REGISTRY``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from nm_sparse.api import sparsify
from nm_sparse.config import NMConfig, SparsityConfig
from nm_sparse.deploy import deploy
from nm_sparse.registry import REGISTRY
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import load_into, load_json, save_model
from slimkit.models import read_checkpoint
from slimkit.paths import check_input_file
from slimkit.train import find_latest_checkpoint
from slimkit.zoo import ModelSpec

__all__ = [
    "RUN_FILE",
    "STAGE_DEPLOYED",
    "STAGE_TRAINED",
    "AnyConfig",
    "ModelSpec",
    "build_sparse",
    "load_sparse_model",
    "read_config",
    "resolve_checkpoint",
    "save_sparse_model",
]

#: Every config type a checkpoint may hold.
AnyConfig = SparsityConfig | NMConfig

STAGE_TRAINED = "trained"
STAGE_DEPLOYED = "deployed"
RUN_FILE = "run.json"


def build_sparse(spec: ModelSpec, config: AnyConfig, deployed: bool = False, fold_bn: bool = True) -> nn.Module:
    """Architecture of ``spec`` after ``sparsify(config)`` (and ``deploy`` when ``deployed``)."""
    model = spec.build()
    sparsify(model, config)
    if deployed:
        deploy(model, fold_bn=fold_bn)
    return model


def save_sparse_model(
    directory: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    config: AnyConfig,
    stage: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """``model.safetensors`` + ``config.json`` (NMConfig, ModelSpec, stage) in ``directory``."""
    meta = {"nm_sparse": {"stage": stage, "model": asdict(spec), **(extra or {})}}
    return save_model(directory, model, config, meta)


def _read_meta(config_json: dict[str, Any], where: Path) -> tuple[ModelSpec, AnyConfig, dict[str, Any]]:
    info = config_json.get("nm_sparse")
    if not isinstance(info, dict) or "model" not in info or "config" not in config_json:
        raise CorruptFileError(f"{where} is not an nm-sparse model (no nm_sparse/config entries)")
    try:
        spec = ModelSpec(**info["model"])
    except TypeError as exc:
        raise CorruptFileError(f"{where}: bad model description ({exc})") from None
    config = read_config(config_json["config"], where)
    return spec, config, info


def _find_run_file(path: Path) -> Path | None:
    for folder in [path, *path.parents][:4]:
        if (folder / RUN_FILE).is_file():
            return folder / RUN_FILE
    return None


def _read_json(path: Path) -> Any:
    """JSON of a description file; an unparsable one is named as corrupt."""
    try:
        return load_json(path)
    except CorruptFileError as exc:
        raise CorruptFileError(f"corrupt file: {exc}") from None


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Locate the weights file and the description for a run dir, a model dir or a checkpoint.

    Accepted: a folder written by :func:`save_sparse_model`; a training run folder (its
    ``model/`` or, failing that, its latest ``checkpoints/*``); an accelerate checkpoint
    folder ``run/checkpoints/step_N`` (description from the run's ``run.json``); or a
    ``.safetensors`` file inside any of those.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"checkpoint not found: {p}")
    if p.is_file():
        check_input_file(p, "checkpoint", (".safetensors",))
        weights, folder = p, p.parent
    else:
        folder = p
        if (p / "model" / "model.safetensors").is_file() and not (p / "model.safetensors").is_file():
            folder = p / "model"
        elif not (p / "model.safetensors").is_file() and (p / "checkpoints").is_dir():
            latest = find_latest_checkpoint(p)
            if latest is None:
                raise BadInputError(f"no finished checkpoint under {p / 'checkpoints'}")
            folder = latest
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise BadInputError(f"no model.safetensors in {folder}")
        check_input_file(weights, "checkpoint")
    if (folder / "config.json").is_file():
        meta = _read_json(folder / "config.json")
        if isinstance(meta, dict) and "nm_sparse" in meta:
            return weights, meta
    run_file = _find_run_file(folder)
    if run_file is None:
        read_checkpoint(weights)  # a truncated bare file is named as corrupt, not as undescribed
        raise BadInputError(f"cannot tell which model {weights} holds: no nm-sparse config.json or {RUN_FILE}")
    run = _read_json(run_file)
    if not isinstance(run, dict):
        raise CorruptFileError(f"{run_file} is corrupt: it must hold a JSON object")
    return weights, {"config": run.get("config"), "nm_sparse": {"stage": STAGE_TRAINED, "model": run.get("model")}}


def load_sparse_model(path: str | Path) -> tuple[nn.Module, ModelSpec, AnyConfig, str]:
    """Rebuild a trained (wrapped) or deployed model from disk; returns ``(model, spec, config, stage)``."""
    weights, meta = resolve_checkpoint(path)
    spec, config, info = _read_meta(meta, weights)
    stage = str(info.get("stage", STAGE_TRAINED))
    tensors = read_checkpoint(weights)
    model = build_sparse(spec, config, deployed=stage == STAGE_DEPLOYED, fold_bn=bool(info.get("fold_bn", True)))
    load_into(model, tensors)
    model.eval()
    return model, spec, config, stage


def read_config(data: Any, where: Path | str) -> AnyConfig:
    """The config stored in a ``config.json`` / ``run.json`` entry (any registered type or a 0.1 NMConfig)."""
    if not isinstance(data, dict):
        raise CorruptFileError(f"{where}: no config entry (expected a JSON object)")
    config: AnyConfig = REGISTRY.config_from_dict(data)
    return config
