from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import (
    atomic_path,
    atomic_write,
    config_from_dict,
    config_to_dict,
    current_umask,
    load_into,
    load_json,
    load_model_files,
    load_state_dict,
    save_json,
    save_model,
    save_state_dict,
)


@dataclass
class Inner:
    k: int = 3


@dataclass
class Cfg:
    name: str = "x"
    ratio: float = 0.5
    dims: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=Inner)


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_replaces(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a" / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"


def test_config_roundtrip_and_unknown_keys() -> None:
    cfg = Cfg(name="y", dims=[4], inner=Inner(7))
    data = config_to_dict(cfg)
    assert data["_type"] == "Cfg" and data["inner"]["k"] == 7
    back = config_from_dict(Cfg, json.loads(json.dumps(data)))
    assert back.name == "y" and back.dims == [4]
    with pytest.raises(BadInputError, match="unknown Cfg field"):
        config_from_dict(Cfg, {"nmae": "typo"})
    with pytest.raises(BadInputError, match="expected Cfg"):
        config_from_dict(Cfg, {"_type": "Other"})


def test_json_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError):
        load_json(bad)
    save_json(tmp_path / "ok.json", {"a": [1, 2]})
    assert load_json(tmp_path / "ok.json") == {"a": [1, 2]}


def test_safetensors_roundtrip_with_metadata_and_tied(tmp_path: Path) -> None:
    w = torch.randn(3, 4)
    save_state_dict(tmp_path / "m.safetensors", {"a": w, "b": w, "c": torch.arange(5)}, {"step": 3})
    tensors, meta = load_state_dict(tmp_path / "m.safetensors")
    assert torch.equal(tensors["a"], w) and torch.equal(tensors["b"], w)
    assert meta == {"step": 3}


def test_corrupt_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(CorruptFileError, match="safetensors"):
        load_state_dict(bad)


def test_save_model_and_mismatch(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    save_model(tmp_path / "m", model, Cfg(), {"acc": 0.9})
    sd, cfg = load_model_files(tmp_path / "m")
    assert cfg["config"]["_type"] == "Cfg" and cfg["acc"] == 0.9
    other = nn.Linear(4, 2)
    load_into(other, sd)
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(BadInputError, match="shape mismatch"):
        load_into(nn.Linear(5, 2), sd)
    with pytest.raises(BadInputError, match="missing"):
        load_into(nn.Sequential(nn.Linear(4, 2)), sd)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask) and None
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_mode(tmp_path: Path, umask: Callable[[int], None], mask: int, expected: int) -> None:
    umask(mask)
    assert current_umask() == mask
    with atomic_write(tmp_path / "a.txt") as fh:
        fh.write("x")
    save_json(tmp_path / "b.json", {"a": 1})
    save_state_dict(tmp_path / "c.safetensors", {"w": torch.zeros(2)})
    with atomic_path(tmp_path / "d.bin") as tmp:
        tmp.write_bytes(b"1")
    for name in ("a.txt", "b.json", "c.safetensors", "d.bin"):
        assert _mode(tmp_path / name) == expected, name
    # what plain open() gives a new file, for comparison
    (tmp_path / "plain").write_text("x")
    assert _mode(tmp_path / "plain") == expected


def test_overwrite_keeps_the_existing_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    for name in ("a.txt", "b.json", "c.safetensors", "d.bin"):
        (tmp_path / name).write_text("old")
        os.chmod(tmp_path / name, 0o640)
    with atomic_write(tmp_path / "a.txt") as fh:
        fh.write("new")
    save_json(tmp_path / "b.json", {"a": 2})
    save_state_dict(tmp_path / "c.safetensors", {"w": torch.ones(2)})
    with atomic_path(tmp_path / "d.bin") as tmp:
        tmp.write_bytes(b"2")
    for name in ("a.txt", "b.json", "c.safetensors", "d.bin"):
        assert _mode(tmp_path / name) == 0o640, name
    assert (tmp_path / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.safetensors", "d.bin"]


def test_current_umask_leaves_the_umask_alone(umask: Callable[[int], None]) -> None:
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027
