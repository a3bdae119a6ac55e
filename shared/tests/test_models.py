from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import save_state_dict
from slimkit.models import create_model, read_checkpoint, unwrap_state_dict

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def test_prefixes_pick_the_library() -> None:
    assert type(create_model("tv/resnet18")).__module__.startswith("torchvision.")
    assert type(create_model("timm/resnet18")).__module__.startswith("timm.")
    assert type(create_model("resnet18")).__module__.startswith("timm.")  # bare: timm first
    assert type(create_model("squeezenet1_0", num_classes=3)).__module__.startswith("torchvision.")  # not in timm


def test_num_classes_and_in_chans() -> None:
    tv = create_model("tv/resnet18", num_classes=7, in_chans=1)
    assert tv.fc.out_features == 7 and tv.conv1.in_channels == 1
    assert tv.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    tm = create_model("timm/resnet18", num_classes=5, in_chans=2)
    assert tm.eval()(torch.randn(1, 2, 32, 32)).shape == (1, 5)
    assert create_model("tv/resnet18").fc.out_features == 1000


def test_unknown_and_pretrained_are_bad_input() -> None:
    with pytest.raises(BadInputError, match="unknown model 'nope_net'"):
        create_model("nope_net")
    with pytest.raises(BadInputError, match="unknown timm model 'squeezenet1_0'"):
        create_model("timm/squeezenet1_0")
    with pytest.raises(BadInputError, match="unknown torchvision model"):
        create_model("tv/nope")
    with pytest.raises(BadInputError, match="never downloads"):
        create_model("resnet18", pretrained=True)


def test_missing_timm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "timm":
            raise ImportError("no timm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BadInputError, match="needs timm, which is not installed"):
        create_model("timm/resnet18")
    assert type(create_model("resnet18")).__module__.startswith("torchvision.")  # bare name falls through


def _sd() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(4.0).reshape(2, 2), "a.bias": torch.tensor([1.0, 2.0])}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
        lambda sd: {"state_dict_ema": sd, "state_dict": {"x": torch.zeros(1)}},
    ],
)
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_read_torch_checkpoints_unwraps(tmp_path: Path, wrap: Any, suffix: str) -> None:
    path = tmp_path / f"ck{suffix}"
    torch.save(wrap(_sd()), path)
    assert _equal(read_checkpoint(path), _sd())


def test_read_safetensors_and_errors(tmp_path: Path) -> None:
    path = save_state_dict(tmp_path / "m.safetensors", _sd())
    assert _equal(read_checkpoint(path), _sd())
    with pytest.raises(BadInputError, match=re.escape(f"file not found: {tmp_path / 'x.pth'}")):
        read_checkpoint(tmp_path / "x.pth")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptFileError, match=re.escape(f"{truncated} is corrupt")):
        read_checkpoint(truncated)
    torch.save(_sd(), tmp_path / "ok.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes((tmp_path / "ok.pth").read_bytes()[:30])
    with pytest.raises(CorruptFileError, match=re.escape(f"{bad} is corrupt")):
        read_checkpoint(bad)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(BadInputError, match="unsupported checkpoint"):
        read_checkpoint(tmp_path / "w.txt")
    with pytest.raises(BadInputError, match="got a folder"):
        read_checkpoint(tmp_path)
    with pytest.raises(CorruptFileError, match="state dict of tensors"):
        unwrap_state_dict({"epoch": 1}, "p")


def test_checkpoint_round_trip_into_model(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    torch.save({"model": model.state_dict()}, tmp_path / "m.pt")
    other = nn.Linear(2, 2)
    other.load_state_dict(read_checkpoint(tmp_path / "m.pt"))
    assert torch.equal(other.weight, model.weight)
