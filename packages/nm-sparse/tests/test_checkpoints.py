"""nm_sparse.checkpoints: save, resolve and rebuild trained and deployed models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nm_sparse import NMConfig, check, deploy, nm_layers
from nm_sparse.checkpoints import (
    STAGE_DEPLOYED,
    STAGE_TRAINED,
    ModelSpec,
    build_sparse,
    load_sparse_model,
    resolve_checkpoint,
    save_sparse_model,
)
from slimkit.errors import BadInputError, CorruptFileError


@pytest.mark.parametrize("method", ["spre", "bimask"])
def test_trained_and_deployed_round_trip(tmp_path: Path, method: str, random_bn: Any) -> None:
    spec = ModelSpec()
    config = NMConfig(method=method, pattern="2:4")
    model = build_sparse(spec, config)
    random_bn(model)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    save_sparse_model(tmp_path / "trained", model, spec, config, STAGE_TRAINED)
    reloaded, spec2, config2, stage = load_sparse_model(tmp_path / "trained")
    assert stage == STAGE_TRAINED and spec2 == spec and config2 == config
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)

    deploy(model)
    save_sparse_model(tmp_path / "deployed", model, spec, config, STAGE_DEPLOYED)
    plain, _, _, stage = load_sparse_model(tmp_path / "deployed" / "model.safetensors")
    assert stage == STAGE_DEPLOYED
    assert not nm_layers(plain) and check(plain).all_valid
    with torch.no_grad():
        assert torch.allclose(plain(x), expected, atol=1e-4, rtol=1e-4)


def test_resolve_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError):
        resolve_checkpoint(tmp_path / "empty")
    spec, config = ModelSpec(), NMConfig()
    folder = save_sparse_model(tmp_path / "m", build_sparse(spec, config), spec, config, STAGE_TRAINED)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError):
        load_sparse_model(folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "other" / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(BadInputError):
        resolve_checkpoint(tmp_path / "other")
