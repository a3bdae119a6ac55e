"""Models for the CLI and the demos: a small ResNet for digits, plus timm/torchvision by name.

``SmallResNet`` is a CIFAR-style ResNet shrunk to 8x8 (or upsampled) digit images. Its 3x3
convs are each followed by a BatchNorm, so SpRe has something to re-parameterize, and its
channel counts are multiples of 16, so every pattern up to 1:16 fits the input-channel
layout. The stem conv (1 input channel) and the classifier are the layers
:class:`nm_sparse.NMConfig` keeps dense by default (``keep_first_dense``/``keep_last_dense``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from nm_sparse.callbacks import NMSparseCallback
from nm_sparse.config import NMConfig
from nm_sparse.deploy import deploy
from nm_sparse.sparsify import sparsify
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import config_from_dict, load_into, load_json, load_state_dict, save_model
from slimkit.train import TrainConfig, TrainResult, train

BUILTIN_MODELS: tuple[str, ...] = ("small_resnet", "small_resnet_wide")


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, one BasicBlock per stage, global average pool, linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: tuple[int, ...] = (16, 32),
    ) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise BadInputError(f"widths must be positive, got {widths}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(prev, width, stride=1 if i == 0 else 2))
            prev = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def load_model(name: str, num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Build a model by name with random weights (no downloads).

    ``small_resnet`` (widths 16, 32) and ``small_resnet_wide`` (32, 64) are built in; any other
    name is tried as a timm model, then as a torchvision model (``pretrained=False`` /
    ``weights=None``). Unknown names raise BadInputError.
    """
    if name == "small_resnet":
        return SmallResNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if name == "small_resnet_wide":
        return SmallResNet(num_classes=num_classes, in_chans=in_chans, widths=(32, 64), **kwargs)
    if name.startswith("timm/") or name.startswith("tv/"):
        source, _, name = name.partition("/")
    else:
        source = ""
    if source in ("", "timm"):
        model = _timm_model(name, num_classes, in_chans, kwargs)
        if model is not None:
            return model
    if source in ("", "tv"):
        model = _torchvision_model(name, num_classes, in_chans, kwargs)
        if model is not None:
            return model
    raise BadInputError(
        f"unknown model {name!r}: use {', '.join(BUILTIN_MODELS)}, a timm name or a torchvision name"
    )


def _timm_model(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> nn.Module | None:
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None
    model: nn.Module = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return model


def _torchvision_model(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> nn.Module | None:
    try:
        import torchvision
    except ImportError:
        return None
    if name not in torchvision.models.list_models():
        return None
    model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _adapt_first_conv(model, in_chans)
    return model


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """torchvision models take RGB; rebuild the first conv for another channel count."""
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


# --------------------------------------------------------------------------- train / save / load
# The CLI, the quickstart and the accuracy table share these: a model is described by a
# ModelSpec, so a checkpoint can be rebuilt as "build architecture, sparsify with the saved
# NMConfig (and deploy, for deployed files), then load the tensors".

STAGE_TRAINED = "trained"
STAGE_DEPLOYED = "deployed"
RUN_FILE = "run.json"


@dataclass
class ModelSpec:
    """Enough to rebuild the architecture: name, classes, input channels and image size."""

    name: str = "small_resnet"
    num_classes: int = 10
    in_chans: int = 1
    image_size: int = 8

    def build(self) -> nn.Module:
        return load_model(self.name, num_classes=self.num_classes, in_chans=self.in_chans)


def build_sparse(spec: ModelSpec, config: NMConfig, deployed: bool = False, fold_bn: bool = True) -> nn.Module:
    """Architecture of ``spec`` after ``sparsify(config)`` (and ``deploy`` when ``deployed``)."""
    model = spec.build()
    sparsify(model, config)
    if deployed:
        deploy(model, fold_bn=fold_bn)
    return model


def save_sparse_model(
    directory: str | Path, model: nn.Module, spec: ModelSpec, config: NMConfig, stage: str, extra: dict[str, Any] | None = None
) -> Path:
    """``model.safetensors`` + ``config.json`` (NMConfig, ModelSpec, stage) in ``directory``."""
    meta = {"nm_sparse": {"stage": stage, "model": asdict(spec), **(extra or {})}}
    return save_model(directory, model, config, meta)


def _read_meta(config_json: dict[str, Any], where: Path) -> tuple[ModelSpec, NMConfig, dict[str, Any]]:
    info = config_json.get("nm_sparse")
    if not isinstance(info, dict) or "model" not in info or "config" not in config_json:
        raise CorruptFileError(f"{where} is not an nm-sparse model (no nm_sparse/config entries)")
    try:
        spec = ModelSpec(**info["model"])
    except TypeError as exc:
        raise CorruptFileError(f"{where}: bad model description ({exc})") from None
    config = config_from_dict(NMConfig, config_json["config"])
    return spec, config, info


def _find_run_file(path: Path) -> Path | None:
    for folder in [path, *path.parents][:4]:
        if (folder / RUN_FILE).is_file():
            return folder / RUN_FILE
    return None


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
        weights, folder = p, p.parent
    else:
        folder = p
        if (p / "model" / "model.safetensors").is_file() and not (p / "model.safetensors").is_file():
            folder = p / "model"
        elif not (p / "model.safetensors").is_file() and (p / "checkpoints").is_dir():
            from slimkit.train import find_latest_checkpoint

            latest = find_latest_checkpoint(p)
            if latest is None:
                raise BadInputError(f"no finished checkpoint under {p / 'checkpoints'}")
            folder = latest
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise BadInputError(f"no model.safetensors in {folder}")
    if (folder / "config.json").is_file():
        meta = load_json(folder / "config.json")
        if isinstance(meta, dict) and "nm_sparse" in meta:
            return weights, meta
    run_file = _find_run_file(folder)
    if run_file is None:
        raise BadInputError(f"cannot tell which model {weights} holds: no nm-sparse config.json or {RUN_FILE}")
    run = load_json(run_file)
    if not isinstance(run, dict):
        raise CorruptFileError(f"{run_file} must hold a JSON object")
    return weights, {"config": run.get("config"), "nm_sparse": {"stage": STAGE_TRAINED, "model": run.get("model")}}


def load_sparse_model(path: str | Path) -> tuple[nn.Module, ModelSpec, NMConfig, str]:
    """Rebuild a trained (wrapped) or deployed model from disk; returns ``(model, spec, config, stage)``."""
    weights, meta = resolve_checkpoint(path)
    spec, config, info = _read_meta(meta, weights)
    stage = str(info.get("stage", STAGE_TRAINED))
    tensors, _ = load_state_dict(weights)
    model = build_sparse(spec, config, deployed=stage == STAGE_DEPLOYED, fold_bn=bool(info.get("fold_bn", True)))
    load_into(model, tensors)
    model.eval()
    return model, spec, config, stage


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset[Any], batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in eval mode (restores the previous train/eval mode)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for inputs, labels in DataLoader(dataset, batch_size=batch_size):
        logits = model(inputs.to(device))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(1, total)


def fit(
    model: nn.Module,
    dataset: Dataset[Any],
    train_config: TrainConfig,
    config: NMConfig,
) -> tuple[TrainResult, dict[str, Any]]:
    """Sparsify ``model`` in place and train it with slimkit.train and the nm-sparse callback."""
    report = sparsify(model, config)
    result = train(model, dataset, train_config, callbacks=[NMSparseCallback()])
    return result, report.to_dict()
