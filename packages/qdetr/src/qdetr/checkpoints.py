"""Trained models on disk: a Hugging Face ``save_pretrained`` folder, plus ``qdetr.json`` for quantized ones.

- A full-precision model is written with ``save_pretrained`` (``config.json`` + ``model.safetensors``),
  so transformers loads it as is; ``qdetr.json`` records the run (``quant: null``).
- A quantized model holds wrappers, whose state-dict keys ``from_pretrained`` would not recognise:
  it is written as ``config.json`` (the FP architecture) + ``model.safetensors`` (the wrapped
  state) + ``qdetr.json`` (the :class:`~qdetr.config.QDetrConfig`), and rebuilt as "architecture,
  quantize with that config, load the state strictly".

Categories: a model trained on a COCO folder records what each label index stands for, the
ordered ``(COCO category id, name)`` pairs of its training set (the ``categories`` argument of
:func:`save_model_folder`): the names go into the HF config's ``id2label`` / ``label2id`` (so a
``from_pretrained`` user sees them), the ids and names into ``qdetr.json`` as ``"categories":
[{"id": 1, "name": "circle"}, ...]``. :func:`check_categories` compares such a record with a
dataset's. Folders without the record (qdetr 0.1.0, a user's ``save_pretrained`` folder) load as
before, with no ``"categories"`` in ``extra``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import DetrConfig, DetrForObjectDetection

from qdetr.api import quantize
from qdetr.config import QDetrConfig
from qdetr.models import load_detr, quiet_transformers, trainable_detr
from qdetr.registry import REGISTRY
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import config_to_dict, load_into, load_json, load_state_dict, save_json, save_state_dict

__all__ = [
    "CATEGORIES", "META_FILE", "categories_from_json", "categories_to_json", "check_categories", "load_model_folder",
    "save_model_folder", "set_label_names",
]  # fmt: skip

META_FILE = "qdetr.json"
#: The ``qdetr.json`` key (and export metadata key) of the recorded categories.
CATEGORIES = "categories"

Categories = list[tuple[int, str]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_categories(categories: Sequence[Sequence[Any]], num_labels: int | None) -> Categories:
    """``categories`` as ``[(id, name), ...]``; a BadInputError for anything else or a count off ``num_labels``."""
    out: Categories = []
    for i, pair in enumerate(categories):
        if isinstance(pair, (str, bytes)) or len(pair) != 2 or not _is_int(pair[0]) or not isinstance(pair[1], str):
            raise BadInputError(f"categories[{i}] must be a (COCO category id, name) pair, got {pair!r}")
        out.append((int(pair[0]), pair[1]))
    ids = [c for c, _ in out]
    if len(set(ids)) != len(ids):
        raise BadInputError(f"categories repeat a COCO category id: {ids}")
    if num_labels is not None and len(out) != num_labels:
        raise BadInputError(f"{len(out)} categories for a model that predicts {num_labels} classes")
    return out


def categories_to_json(categories: Sequence[Sequence[Any]], num_labels: int | None = None) -> list[dict[str, Any]]:
    """``[{"id": ..., "name": ...}, ...]`` in label order (checked; ``num_labels``: the count it must have)."""
    return [{"id": c, "name": n} for c, n in _checked_categories(categories, num_labels)]


def categories_from_json(data: Any, where: str, num_labels: int | None = None) -> Categories:
    """The ``[(id, name), ...]`` of a stored ``categories`` entry; a one-line CorruptFileError if it is malformed."""
    if not isinstance(data, list) or not all(isinstance(c, dict) and set(c) == {"id", "name"} for c in data):
        raise CorruptFileError(f"{where}: '{CATEGORIES}' must be a list of {{id, name}} objects")
    try:
        return _checked_categories([(c["id"], c["name"]) for c in data], num_labels)
    except BadInputError as exc:
        raise CorruptFileError(f"{where}: '{CATEGORIES}': {exc}") from None


def set_label_names(config: Any, categories: Sequence[tuple[int, str]]) -> None:
    """The HF config's ``id2label`` / ``label2id`` from the categories' names (label ``i`` is ``categories[i]``)."""
    config.id2label = {i: name for i, (_, name) in enumerate(categories)}
    config.label2id = {name: i for i, (_, name) in enumerate(categories)}


def check_categories(
    model_name: str, recorded: Sequence[tuple[int, str]] | None, data_name: str, data: Sequence[tuple[int, str]]
) -> bool:
    """Refuse a dataset whose label -> ``(COCO id, name)`` mapping is not the model's recorded one.

    A one-line :class:`BadInputError` names the first label that differs (id, name or order) or the
    first label only one side has. ``recorded`` None (a model folder without the record): no check,
    returns False; returns True when the categories were checked and match.
    """
    if recorded is None:
        return False
    for i, (mine, theirs) in enumerate(zip(recorded, data)):
        if tuple(mine) != tuple(theirs):
            raise BadInputError(
                f"{model_name} was trained on other categories than {data_name}: label {i} is category "
                f"{mine[0]} {mine[1]!r} for the model, {theirs[0]} {theirs[1]!r} in the data"
            )
    if len(recorded) != len(data):
        n = min(len(recorded), len(data))
        cid, name = (recorded if len(recorded) > n else data)[n]
        who = "the model" if len(recorded) > n else "the data"
        raise BadInputError(
            f"{model_name} was trained on {len(recorded)} categories, {data_name} has {len(data)} "
            f"(label {n}: category {cid} {name!r} only in {who})"
        )
    return True


def save_model_folder(
    folder: str | Path,
    model: nn.Module,
    quant: QDetrConfig | None,
    extra: dict[str, Any] | None = None,
    categories: Sequence[tuple[int, str]] | None = None,
) -> Path:
    """Write ``model`` (FP or quantized with ``quant``) and its ``qdetr.json`` into ``folder``.

    ``categories``: the ``(COCO category id, name)`` of each label index the model was trained on
    (``CocoDetectionSet.label_categories``), checked before anything is written; recorded in
    ``qdetr.json`` and, as names, in the config's ``id2label`` / ``label2id`` (``model.config`` is updated).
    """
    meta: dict[str, Any] = {"quant": config_to_dict(quant) if quant is not None else None, **(extra or {})}
    config: Any = getattr(model, "config", None)
    if categories is not None:
        num_labels = getattr(config, "num_labels", None)
        meta[CATEGORIES] = categories_to_json(categories, num_labels if _is_int(num_labels) else None)
        if config is not None:
            set_label_names(config, [(c["id"], c["name"]) for c in meta[CATEGORIES]])
    out = Path(folder)
    if quant is None:
        out.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            model.save_pretrained(str(out))  # type: ignore[operator]
    else:
        if not isinstance(config, DetrConfig):
            raise BadInputError(f"{type(model).__name__} has no DetrConfig: not a transformers DETR")
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "config.json", config.to_dict())
        save_state_dict(out / "model.safetensors", model.state_dict(), {"format": "qdetr-quantized"})
    save_json(out / META_FILE, meta)
    return out


def load_model_folder(folder: str | Path) -> tuple[DetrForObjectDetection, QDetrConfig | None, dict[str, Any]]:
    """``(model, quant config or None, extra)`` from a folder written by :func:`save_model_folder`,
    or from any transformers ``save_pretrained`` DETR folder (FP, no ``qdetr.json``).

    ``extra``: ``qdetr.json`` without ``quant``; its ``"categories"``, when recorded, is checked and
    given as ``[(COCO category id, name), ...]`` in label order."""
    path = Path(folder)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        return load_detr(path), None, {}
    meta = load_json(meta_file)
    if not isinstance(meta, dict) or "quant" not in meta:
        raise CorruptFileError(f"{meta_file} is not a qdetr model description (no 'quant' entry)")
    extra = {k: v for k, v in meta.items() if k != "quant"}
    if CATEGORIES in extra:  # its shape now; its count against the model's config below
        extra[CATEGORIES] = categories_from_json(extra[CATEGORIES], str(meta_file))
    if meta["quant"] is None:
        return _counted(load_detr(path), extra, meta_file), None, extra
    quant = REGISTRY.config_from_dict(meta["quant"])
    if not isinstance(quant, QDetrConfig):
        raise CorruptFileError(f"{meta_file}: 'quant' is not a QDetrConfig")
    try:
        config = DetrConfig.from_dict(load_json(path / "config.json"))
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path / 'config.json'}: not a DETR config ({exc})") from None
    if not (path / "model.safetensors").is_file():
        raise BadInputError(f"no model.safetensors in {path}")
    model = _counted(trainable_detr(config), extra, meta_file)
    quantize(model, quant)  # two stages end in the same structure as one "all" quantization
    state, _ = load_state_dict(path / "model.safetensors")
    load_into(model, state)
    return model, quant, extra


def _counted(model: DetrForObjectDetection, extra: dict[str, Any], meta_file: Path) -> DetrForObjectDetection:
    """``model``, once its class count is that of the recorded categories (if any)."""
    recorded = extra.get(CATEGORIES)
    labels = int(model.config.num_labels or 0)
    if recorded is not None and len(recorded) != labels:
        raise CorruptFileError(f"{meta_file} records {len(recorded)} categories, the model predicts {labels} classes")
    return model
